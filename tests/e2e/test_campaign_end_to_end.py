"""A campaign through the real system: panel API → daemon → agent (TLS, sealed) → Exim → capture.

What is asserted is what arrived at the recipients' server (the capture) and what the panel says.
"""

from __future__ import annotations

import email.utils
import time

import pytest

from devserver.mail_capture import read_maildir

from tests.helpers import wait_for

from .conftest import Api

N_RECIPIENTS = 1000
DEFERRED = {f"user{i}@e2e.example" for i in (7, 77, 777)}
REJECTED = {f"user{i}@e2e.example" for i in (13, 313, 913)}


@pytest.fixture(scope="module")
def sent_campaign(stack, api: Api):
    for address in DEFERRED:
        stack.capture.set_rule(address, "defer")
    for address in REJECTED:
        stack.capture.set_rule(address, "reject")
    list_id = api.post("/lists", {"name": "e2e"})["id"]
    rows = [{"email": f"user{i}@e2e.example", "name": f"Reader {i}", "code": f"C{i:04d}"} for i in range(N_RECIPIENTS)]
    report = api.post(f"/lists/{list_id}/recipients", rows)
    assert report["added"] == N_RECIPIENTS and report["rejected"] == []
    campaign = api.post(
        "/campaigns",
        {
            "name": "End to end",
            "subject": "News for {{ name }}",
            "from_email": "news@sender.example",
            "from_name": "Sender News",
            "text": "Hello {{ name }}, your code is {{ code }}.\nUnsubscribe: {{ unsubscribe_url }}\n",
            "html": "<p>Hello <b>{{ name }}</b>, your code is {{ code }}.</p>"
                    "<p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>",
            "encoding": "quoted-printable",
            "lists": [list_id],
        },
    )
    api.post(f"/campaigns/{campaign['id']}/start", {})
    expected_final = N_RECIPIENTS - len(DEFERRED)

    def settled():
        stats = api.get(f"/campaigns/{campaign['id']}/stats")
        done = stats["delivered"] + stats["failed"] == expected_final and stats["deferred"] == len(DEFERRED)
        return stats if done else None

    stats = wait_for(settled, timeout=240, what="every letter delivered, deferred or failed")
    return {"campaign_id": campaign["id"], "stats": stats}


def _campaign_messages(stack):
    return [m for m in read_maildir(stack.maildir) if m.rcpt_to.endswith("@e2e.example")]


def test_every_recipient_gets_exactly_one_personalised_letter(stack, sent_campaign):
    messages = _campaign_messages(stack)
    by_rcpt: dict[str, list] = {}
    for m in messages:
        by_rcpt.setdefault(m.rcpt_to, []).append(m)
    expected = {f"user{i}@e2e.example" for i in range(N_RECIPIENTS)} - DEFERRED - REJECTED
    assert set(by_rcpt) == expected
    assert all(len(v) == 1 for v in by_rcpt.values()), "a recipient got more than one letter"
    for rcpt, (captured,) in by_rcpt.items():
        i = int(rcpt.removeprefix("user").split("@")[0])
        msg = captured.message
        assert msg["Subject"] == f"News for Reader {i}"
        assert msg["To"].addresses[0].addr_spec == rcpt
        text = msg.get_body(("plain",)).get_content()
        html = msg.get_body(("html",)).get_content()
        assert f"Hello Reader {i}, your code is C{i:04d}." in text
        assert f"<b>Reader {i}</b>" in html


def test_letters_carry_the_required_headers_in_the_chosen_encoding(stack, sent_campaign):
    for captured in _campaign_messages(stack)[:200]:
        msg = captured.message
        assert msg.get_content_type() == "multipart/alternative"
        for part in msg.iter_parts():
            assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert email.utils.parsedate_to_datetime(msg["Date"]) is not None
        assert msg["Message-ID"].startswith("<") and msg["Message-ID"].endswith("@sender.example>")
        assert msg["From"].addresses[0].addr_spec == "news@sender.example"
        unsubscribe = msg["List-Unsubscribe"]
        assert "<http" in unsubscribe and "<mailto:unsubscribe+" in unsubscribe
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        # VERP: the envelope sender names this very letter
        assert captured.mail_from.startswith("bounce+") and captured.mail_from.endswith("@bounces.mailfleet.test")
        assert "X-Mailfleet-Source-IP" not in msg


def test_each_letter_left_from_its_assigned_ip_and_helo(stack, sent_campaign, panel_db):
    assigned = panel_db(
        "SELECT email, source_ip FROM deliveries WHERE campaign_id = ?", (sent_campaign["campaign_id"],)
    )
    helo_of = dict(stack.settings.source_ips)
    by_ip: dict[str, int] = {}
    for captured in _campaign_messages(stack):
        ip = assigned[captured.rcpt_to]
        assert captured.peer_ip == ip
        assert captured.helo == helo_of[ip]
        by_ip[ip] = by_ip.get(ip, 0) + 1
    assert set(by_ip) == set(helo_of), "both source IPs should carry part of the campaign"
    assert abs(by_ip["127.0.0.2"] - by_ip["127.0.0.3"]) <= 10


def test_panel_counts_equal_what_happened(stack, sent_campaign, panel_db):
    stats = sent_campaign["stats"]
    delivered_at_server = len(_campaign_messages(stack))
    assert stats["total"] == N_RECIPIENTS
    assert stats["delivered"] == delivered_at_server == N_RECIPIENTS - len(DEFERRED) - len(REJECTED)
    assert stats["deferred"] == len(DEFERRED)
    assert stats["failed"] == len(REJECTED)
    assert stats["sent"] == N_RECIPIENTS and stats["queued"] == 0
    failed = panel_db(
        "SELECT email, code FROM deliveries WHERE campaign_id = ? AND status = 'failed'", (sent_campaign["campaign_id"],)
    )
    assert set(failed) == REJECTED and set(failed.values()) == {550}
    deferred = panel_db(
        "SELECT email, reply FROM deliveries WHERE campaign_id = ? AND status = 'deferred'", (sent_campaign["campaign_id"],)
    )
    assert set(deferred) == DEFERRED and all("451" in reply for reply in deferred.values())


def test_rejected_letters_come_back_as_bounces(stack, sent_campaign, panel_db):
    """Exim's DSN for each 550 goes to the VERP address, is piped to the agent and reaches the panel."""
    def bounced():
        rows = panel_db(
            "SELECT d.email, b.kind FROM bounce_messages b JOIN deliveries d ON d.id = b.delivery_id "
            "WHERE d.campaign_id = ?", (sent_campaign["campaign_id"],)
        )
        return rows if set(rows) >= REJECTED else None

    rows = wait_for(bounced, timeout=60, what="a bounce for every rejected letter")
    assert set(rows) == REJECTED


def test_agent_unreachable_campaign_waits_and_resumes(stack, api: Api, panel_db):
    list_id = api.post("/lists", {"name": "outage"})["id"]
    api.post(f"/lists/{list_id}/recipients", [{"email": f"o{i}@outage.example"} for i in range(60)])
    campaign = api.post("/campaigns", {"name": "outage", "subject": "s", "from_email": "n@sender.example",
                                       "text": "hi {{ email }}\n{{ unsubscribe_url }}", "lists": [list_id]})
    stack.stop_agent()
    try:
        api.post(f"/campaigns/{campaign['id']}/start", {})
        wait_for(lambda: panel_db("SELECT id, status FROM servers", ()).get(stack.server_id) == "offline" or None,
                 timeout=30, what="the server marked offline")
        stats = api.get(f"/campaigns/{campaign['id']}/stats")
        assert stats["delivered"] == 0 and stats["queued"] == 60
    finally:
        stack.start_agent()
    wait_for(lambda: api.get(f"/campaigns/{campaign['id']}/stats")["delivered"] == 60 or None,
             timeout=120, what="all letters delivered after the agent came back")
    got = [m.rcpt_to for m in read_maildir(stack.maildir) if m.rcpt_to.endswith("@outage.example")]
    assert sorted(got) == sorted(f"o{i}@outage.example" for i in range(60))
    # the user sees both moments on the server's page, as events in order
    events = panel_db("SELECT id, kind FROM server_events WHERE server_id = ? ORDER BY id", (stack.server_id,))
    kinds = list(events.values())
    assert "offline" in kinds and "online" in kinds[kinds.index("offline"):]


def test_daemon_restarted_mid_campaign_sends_each_letter_once(stack, api: Api):
    list_id = api.post("/lists", {"name": "restart"})["id"]
    api.post(f"/lists/{list_id}/recipients", [{"email": f"r{i}@restart.example"} for i in range(600)])
    campaign = api.post("/campaigns", {"name": "restart", "subject": "s", "from_email": "n@sender.example",
                                       "text": "hi\n{{ unsubscribe_url }}", "lists": [list_id]})
    api.post(f"/campaigns/{campaign['id']}/start", {})
    wait_for(lambda: api.get(f"/campaigns/{campaign['id']}/stats")["sent"] > 0 or None, timeout=60, what="sending")
    stack.stop_daemon()
    time.sleep(1)
    stack.start_daemon()
    wait_for(lambda: api.get(f"/campaigns/{campaign['id']}/stats")["delivered"] == 600 or None,
             timeout=180, what="all 600 delivered")
    got = [m.rcpt_to for m in read_maildir(stack.maildir) if m.rcpt_to.endswith("@restart.example")]
    assert len(got) == 600 and len(set(got)) == 600


def test_a_test_send_arrives_marked_and_counts_nowhere(stack, api: Api, panel_rows):
    """Send a test (issue 10 point 5): through the daemon, the agent and Exim like any letter; the
    capture gets it marked, the draft's figures stay 0, its bounce suppresses nobody."""
    stack.capture.set_rule("refuses@test-send.example", "reject")
    list_id = api.post("/lists", {"name": "test send"})["id"]
    api.post(f"/lists/{list_id}/recipients", [{"email": "reader@test-send.example", "name": "Reader"}])
    campaign = api.post("/campaigns", {"name": "test send", "subject": "Hello {{ name }}", "from_email": "n@sender.example",
                                       "text": "hi {{ name }}\n{{ unsubscribe_url }}", "lists": [list_id]})
    addresses = ["me@test-send.example", "refuses@test-send.example"]
    answer = api.post(f"/campaigns/{campaign['id']}/test", {"addresses": addresses})
    assert [t["email"] for t in answer["tests"]] == addresses

    def arrived():
        got = [m for m in read_maildir(stack.maildir) if m.rcpt_to == "me@test-send.example"]
        return got or None

    (letter,) = wait_for(arrived, timeout=60, what="the test letter at the capture")
    assert letter.message["Subject"] == "[Test] Hello Reader"  # the fields of the lists' first recipient
    assert letter.message["X-Mailfleet-Test"] == "1"
    assert "X-Mailfleet-Campaign" not in letter.message
    bounce = wait_for(lambda: panel_rows("SELECT delivery_id, token FROM bounce_messages WHERE token LIKE ?", ("test%",))
                      or None, timeout=60, what="the refused test letter's bounce back at the panel")
    assert bounce[0][0] is None  # applied to no letter
    def outcomes():
        rows = dict(panel_rows("SELECT email, status FROM test_letters", ()))
        return rows if set(rows.values()) <= {"delivered", "failed"} else None

    states = wait_for(outcomes, timeout=60, what="both test letters' outcomes")
    assert states == {"me@test-send.example": "delivered", "refuses@test-send.example": "failed"}
    assert panel_rows("SELECT email FROM suppressions WHERE email LIKE ?", ("%@test-send.example",)) == []
    stats = api.get(f"/campaigns/{campaign['id']}/stats")
    assert stats["status"] == "draft"
    assert {key: stats[key] for key in ("total", "queued", "sent", "delivered", "deferred", "failed", "cancelled")} \
        == dict.fromkeys(("total", "queued", "sent", "delivered", "deferred", "failed", "cancelled"), 0)
    assert panel_rows("SELECT COUNT(*) FROM deliveries WHERE campaign_id = ?", (campaign["id"],)) == [(0,)]
