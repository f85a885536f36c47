"""A refused recipient through the real system: the capture answers 550 5.1.1, Exim reports the
failure in its log (a `failed` outcome) and sends its DSN to the VERP address, which is piped to
the agent and collected by the daemon. The panel classifies both as a hard bounce, suppresses
the address, counts it, and the next campaign to the same list leaves it out."""

from __future__ import annotations

from tests.helpers import wait_for

from .conftest import Api

GONE = "gone@bounces-e2e.example"
READERS = ["ann@bounces-e2e.example", "bob@bounces-e2e.example", GONE]


def _campaign(api: Api, list_id: int, name: str) -> int:
    campaign = api.post("/campaigns", {"name": name, "subject": "News", "from_email": "news@sender.example",
                                       "text": "Hello {{ email }}\n{{ unsubscribe_url }}\n", "lists": [list_id]})
    api.post(f"/campaigns/{campaign['id']}/start", {})
    return campaign["id"]


def test_a_rejected_recipient_is_hard_bounced_suppressed_and_left_out_of_the_next_campaign(stack, api: Api, panel_rows):
    stack.capture.set_rule(GONE, "reject")
    list_id = api.post("/lists", {"name": "bounce e2e"})["id"]
    api.post(f"/lists/{list_id}/recipients", [{"email": e} for e in READERS])
    first = _campaign(api, list_id, "first")

    def bounce_classified():
        rows = panel_rows(
            "SELECT b.recipient, b.reason, b.bounce_kind, b.mismatch, d.email FROM bounce_messages b "
            "JOIN deliveries d ON d.id = b.delivery_id WHERE d.campaign_id = ? AND b.classified_at IS NOT NULL", (first,))
        return rows or None

    ((recipient, reason, kind, mismatch, email),) = wait_for(bounce_classified, timeout=120,
                                                            what="Exim's DSN collected and classified")
    assert (recipient, reason, kind, bool(mismatch), email) == (GONE, "userunknown", "hard", False, GONE)

    stats = wait_for(lambda: (s := api.get(f"/campaigns/{first}/stats"))["delivered"] == 2 and s, timeout=60,
                     what="the other two letters delivered")
    assert (stats["failed"], stats["bounced_hard"], stats["bounced_soft"]) == (1, 1, 0)
    (delivery,) = panel_rows("SELECT status, code, bounce, bounce_reason FROM deliveries WHERE campaign_id = ? "
                             "AND email = ?", (first, GONE))
    assert delivery == ("failed", 550, "hard", "userunknown")
    assert panel_rows("SELECT email, reason FROM suppressions", ()) == [(GONE, "hard_bounce")]

    second = _campaign(api, list_id, "second")
    assert api.get(f"/campaigns/{second}/stats")["total"] == 2
    assert sorted(e for (e,) in panel_rows("SELECT email FROM deliveries WHERE campaign_id = ?", (second,))) == READERS[:2]
    wait_for(lambda: api.get(f"/campaigns/{second}/stats")["delivered"] == 2 or None, timeout=60,
             what="the second campaign delivered")
    assert sorted(m.rcpt_to for m in stack.capture.messages() if m.rcpt_to.endswith("@bounces-e2e.example")
                  and m.message["Subject"] == "News") == sorted(READERS[:2] * 2)
