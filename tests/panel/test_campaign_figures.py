"""The campaign page's live figures (issue 10 point 1): the timeline (letters a minute by the time
Exim logged each outcome, clicks and opens a minute) and the breakdowns by provider, domain,
server, source IP and bounce reason, read from counts the database keeps as letters change.
Outcomes go in through the daemon's own path (apply_events, store_bounces), dispatch through
dispatch_server; the API's numbers are checked exactly, and the kept breakdowns against
counting the letters."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import datetime, timezone

import pytest
from sqlalchemy import insert, select, update

from panel.daemon.dispatch import dispatch_server
from panel.daemon.outcomes import apply_events, store_bounces
from panel.extensions import db
from panel.models import Campaign, Click, Delivery, Open, Server, User
from panel.models.base import utcnow
from panel.services.sending import start_campaign
from panel.services.tokens import delivery_token
from panel.services.unsubscribe import unsubscribe
from tests.panel.agents import TakingAgent
from tests.panel.test_bounce_processing import arf

PEOPLE = ["ann@gmail.com", "bob@gmail.com", "cat@yahoo.com", "dan@hotmail.com",
          "eve@example.org", "fay@example.org", "gil@example.org", "hal@example.org"]
HAL_NOT_SENT = "hal@example.org"
COLUMNS = ("sent", "delivered", "deferred", "failed", "bounced_hard", "bounced_soft", "complaints",
           "unsubscribed", "clicks")


class Sent:
    """Alice's campaign to PEOPLE over a server with two IPs, pushed; outcomes at chosen minutes."""

    def __init__(self, app, seed, alice: int) -> None:
        self.app = app
        list_id = seed.list(alice, "People", [{"email": e, "name": e[:3]} for e in PEOPLE])
        self.server_id = seed.server(alice, ips=("192.0.2.10", "192.0.2.11"))
        self.campaign_id = seed.campaign(alice, [list_id])
        with app.app_context():
            start_campaign(db.session.get(User, alice), db.session.get(Campaign, self.campaign_id))
            db.session.commit()
            dispatch_server(TakingAgent(), db.session.get(Server, self.server_id))
            self.ids = dict(db.session.execute(select(Delivery.email, Delivery.id)
                                               .where(Delivery.campaign_id == self.campaign_id)).all())
        # The first outcomes 20 minutes ago, on a whole minute (Exim's clock, in unix seconds).
        now = utcnow().replace(tzinfo=timezone.utc).timestamp()
        self.m0 = int(now // 60) * 60 - 20 * 60

    def at(self, minute: int, second: int = 0) -> float:
        return self.m0 + minute * 60 + second

    def events(self, *events: tuple) -> None:
        """(email, status, minute, second[, code, text]) each, as the agent reports them."""
        items = []
        for email, status, minute, second, *reply in events:
            item = {"id": self.ids[email], "status": status, "at": self.at(minute, second)}
            if reply:
                item["code"], item["text"] = reply
            items.append(item)
        with self.app.app_context():
            apply_events(db.session.get(Server, self.server_id), items)
            db.session.commit()

    def send_everything(self) -> None:
        self.events(
            *[(e, "sent", 0, 5) for e in PEOPLE if e != HAL_NOT_SENT],
            ("ann@gmail.com", "delivered", 0, 10, 250, "250 OK"),
            ("fay@example.org", "delivered", 0, 12, 250, "250 OK"),
            ("gil@example.org", "delivered", 0, 59, 250, "250 OK"),
            ("cat@yahoo.com", "deferred", 0, 20, 451, "451 4.7.1 try later"),
        )
        self.events(
            ("bob@gmail.com", "delivered", 1, 10, 250, "250 OK"),
            ("dan@hotmail.com", "failed", 1, 15, 550,
             "550 5.1.1 <dan@hotmail.com>: Recipient address rejected: User unknown in local recipient table"),
            ("eve@example.org", "deferred", 1, 20, 451, "451 4.7.1 try later"),
            ("cat@yahoo.com", "deferred", 1, 30, 451, "451 4.7.1 try later"),
        )
        self.events(("cat@yahoo.com", "delivered", 3, 0, 250, "250 OK"))
        with self.app.app_context():
            server = db.session.get(Server, self.server_id)
            token = delivery_token(self.app.config["SECRET_KEY"], self.ids["fay@example.org"])
            store_bounces(server, [{"seq": 1, "kind": "bounce", "token": token, "raw": arf("fay@example.org")}])
            # A report that is no complaint (auth-failure) counts as none.
            token = delivery_token(self.app.config["SECRET_KEY"], self.ids["ann@gmail.com"])
            store_bounces(server, [{"seq": 2, "kind": "bounce", "token": token,
                                    "raw": arf("ann@gmail.com", "auth-failure")}])
            unsubscribe(db.session.get(Delivery, self.ids["gil@example.org"]))
            # Clicks and opens at their minutes, as services/tracking writes them.
            for email, minute in (("fay@example.org", 2), ("fay@example.org", 2), ("ann@gmail.com", 4)):
                db.session.execute(insert(Click).values(campaign_id=self.campaign_id, delivery_id=self.ids[email],
                                                        link_idx=0, created_at=self.time(minute, 30)))
            db.session.execute(insert(Open).values(campaign_id=self.campaign_id, delivery_id=self.ids["bob@gmail.com"],
                                                   created_at=self.time(2, 1)))
            db.session.commit()

    def time(self, minute: int, second: int = 0) -> datetime:
        return datetime.fromtimestamp(self.at(minute, second), timezone.utc).replace(tzinfo=None)

    def ip_of(self, email: str) -> str:
        with self.app.app_context():
            return db.session.scalar(select(Delivery.source_ip).where(Delivery.id == self.ids[email]))


@pytest.fixture
def sent(app, seed, alice) -> Sent:
    return Sent(app, seed, alice)


@pytest.fixture
def api(client, seed, alice):
    headers = {"Authorization": f"Bearer {seed.token(alice)}"}
    return lambda url: client.get(f"/api/v1{url}", headers=headers)


def minute_iso(sent: Sent, minute: int) -> str:
    return sent.time(minute).strftime("%Y-%m-%dT%H:%M:00Z")


def row(key, **counts) -> dict:
    return {"key": key, **{c: counts.get(c, 0) for c in COLUMNS}}


def counts_only(rows: list[dict]) -> list[dict]:
    return [{k: r[k] for k in ("key",) + COLUMNS} for r in rows]


def test_timeline_counts_outcomes_by_exims_minute(sent, api):
    sent.send_everything()
    answer = api(f"/campaigns/{sent.campaign_id}/timeline")
    assert answer.status_code == 200
    body = answer.get_json()
    zero = {"sent": 0, "delivered": 0, "deferred": 0, "failed": 0, "clicks": 0, "opens": 0}
    expected = {
        0: {**zero, "sent": 7, "delivered": 3, "deferred": 1},
        1: {**zero, "delivered": 1, "failed": 1, "deferred": 2},
        2: {**zero, "clicks": 2, "opens": 1},
        3: {**zero, "delivered": 1},
        4: {**zero, "clicks": 1},
    }
    assert body["minutes"] == [{"minute": minute_iso(sent, m), **v} for m, v in expected.items()]
    # Only the minutes from `since` on (what the page asks for while it runs).
    later = api(f"/campaigns/{sent.campaign_id}/timeline?since={minute_iso(sent, 3)}").get_json()
    assert [m["minute"] for m in later["minutes"]] == [minute_iso(sent, 3), minute_iso(sent, 4)]
    progress = body["progress"]
    assert (progress["total"], progress["done"], progress["remaining"]) == (8, 6, 2)
    # Outcomes 20 minutes ago: no current rate, so no estimate.
    assert progress["rate_per_minute"] == 0 and progress["finish_estimate"] is None


def test_breakdowns_by_provider_domain_server_ip_and_reason(sent, api):
    sent.send_everything()
    base = f"/campaigns/{sent.campaign_id}/breakdown?by="
    provider = api(base + "provider").get_json()
    assert counts_only(provider["rows"]) == [
        row("other", sent=3, delivered=2, deferred=1, complaints=1, unsubscribed=1, clicks=2),
        row("google", sent=2, delivered=2, clicks=1),
        row("microsoft", sent=1, failed=1, bounced_hard=1),
        row("yahoo", sent=1, delivered=1),
    ]
    google = provider["rows"][1]
    assert (google["delivery_rate"], google["bounce_rate"], google["click_rate"]) == (1.0, 0.0, 0.5)
    assert provider["rest"] is None
    domain = api(base + "domain").get_json()
    assert counts_only(domain["rows"]) == [
        row("example.org", sent=3, delivered=2, deferred=1, complaints=1, unsubscribed=1, clicks=2),
        row("gmail.com", sent=2, delivered=2, clicks=1),
        row("hotmail.com", sent=1, failed=1, bounced_hard=1),
        row("yahoo.com", sent=1, delivered=1),
    ]
    reason = api(base + "reason").get_json()
    assert counts_only(reason["rows"]) == [row("userunknown", sent=1, failed=1, bounced_hard=1)]
    server = api(base + "server").get_json()
    assert counts_only(server["rows"]) == [
        row(str(sent.server_id), sent=7, delivered=5, deferred=1, failed=1, bounced_hard=1, complaints=1,
            unsubscribed=1, clicks=3)]
    assert server["rows"][0]["label"] == "worker 1"
    # By IP: each letter where dispatch sent it.
    expected: dict[str, Counter] = {}
    outcome = {"ann@gmail.com": "delivered", "bob@gmail.com": "delivered", "cat@yahoo.com": "delivered",
               "dan@hotmail.com": "failed", "eve@example.org": "deferred", "fay@example.org": "delivered",
               "gil@example.org": "delivered"}
    extra = {"dan@hotmail.com": {"bounced_hard": 1}, "fay@example.org": {"complaints": 1, "clicks": 2},
             "gil@example.org": {"unsubscribed": 1}, "ann@gmail.com": {"clicks": 1}}
    for email, state in outcome.items():
        counts = expected.setdefault(sent.ip_of(email), Counter())
        counts.update({"sent": 1, state: 1, **extra.get(email, {})})
    ip = api(base + "ip").get_json()
    assert sorted(counts_only(ip["rows"]), key=lambda r: r["key"]) == sorted(
        (row(key, **counts) for key, counts in expected.items()), key=lambda r: r["key"])


def test_the_domain_breakdown_is_the_top_20_and_the_rest(app, seed, alice, api):
    people = [f"p{n}@d{n:02d}.example" for n in range(25)] + [f"q{n}@d00.example" for n in range(3)]
    list_id = seed.list(alice, "Many domains", [{"email": e, "name": e[:3]} for e in people])
    server_id = seed.server(alice)
    campaign_id = seed.campaign(alice, [list_id])
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        db.session.commit()
        dispatch_server(TakingAgent(), db.session.get(Server, server_id))
        ids = db.session.scalars(select(Delivery.id).where(Delivery.campaign_id == campaign_id)).all()
        apply_events(db.session.get(Server, server_id), [{"id": i, "status": "delivered", "code": 250} for i in ids])
        db.session.commit()
    body = api(f"/campaigns/{campaign_id}/breakdown?by=domain").get_json()
    assert len(body["rows"]) == 20
    assert body["rows"][0]["key"] == "d00.example" and body["rows"][0]["sent"] == 4
    assert sum(r["sent"] for r in body["rows"]) + body["rest"]["sent"] == 28
    assert body["rest"]["keys"] == 5 and body["rest"]["delivered"] == 5


def test_breakdown_csv_and_bad_requests(sent, api, seed, client):
    sent.send_everything()
    answer = api(f"/campaigns/{sent.campaign_id}/breakdown?by=domain&format=csv")
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    assert "attachment" in answer.headers["Content-Disposition"]
    table = list(csv.DictReader(io.StringIO(answer.get_data(as_text=True))))
    assert [r["domain"] for r in table] == ["example.org", "gmail.com", "hotmail.com", "yahoo.com"]
    assert (table[0]["sent"], table[0]["complaints"], table[0]["delivery_rate"]) == ("3", "1", "0.6667")
    timeline = api(f"/campaigns/{sent.campaign_id}/timeline?format=csv")
    rows = list(csv.DictReader(io.StringIO(timeline.get_data(as_text=True))))
    assert rows[0]["minute"] == minute_iso(sent, 0) and rows[0]["delivered"] == "3"
    bad = api(f"/campaigns/{sent.campaign_id}/breakdown?by=planet")
    assert bad.status_code == 400 and "provider, domain, server, ip or reason" in bad.get_json()["error"]
    assert api(f"/campaigns/{sent.campaign_id}/timeline?since=yesterday").status_code == 400
    bob = seed.user("bob2@example.com")
    headers = {"Authorization": f"Bearer {seed.token(bob)}"}
    assert client.get(f"/api/v1/campaigns/{sent.campaign_id}/timeline", headers=headers).status_code == 404
    assert client.get(f"/api/v1/campaigns/{sent.campaign_id}/breakdown?by=ip", headers=headers).status_code == 404


def test_kept_breakdowns_equal_counting_the_letters(sent, app):
    """Whatever moves the letters (outcomes, bounces, failover giving letters back, a cancel), the
    kept rows equal what counting the letters gives."""
    sent.send_everything()
    with app.app_context():
        # A soft bounce turned hard, a letter's IP changed by hand, a status set back by a bulk UPDATE.
        db.session.execute(update(Delivery).where(Delivery.id == sent.ids["eve@example.org"])
                           .values(bounce="soft", bounce_reason="mailboxfull"))
        db.session.execute(update(Delivery).where(Delivery.id == sent.ids["eve@example.org"])
                           .values(bounce="hard", bounce_reason="userunknown", source_ip="192.0.2.99"))
        db.session.execute(update(Delivery).where(Delivery.id == sent.ids["bob@gmail.com"]).values(status="failed"))
        db.session.commit()
        from panel.services.campaign_figures import breakdown
        campaign = db.session.get(Campaign, sent.campaign_id)
        letters = db.session.execute(select(Delivery).where(Delivery.campaign_id == sent.campaign_id)).scalars().all()
        for by, key_of in (("domain", lambda d: d.email.split("@")[1]), ("ip", lambda d: d.source_ip),
                           ("reason", lambda d: d.bounce_reason)):
            counted: dict[str, Counter] = {}
            for d in letters:
                if d.status not in ("sent", "delivered", "deferred", "failed") or key_of(d) is None:
                    continue
                c = counted.setdefault(key_of(d), Counter())
                c.update({"sent": 1, "delivered": d.status == "delivered", "deferred": d.status == "deferred",
                          "failed": d.status == "failed", "bounced_hard": d.bounce == "hard",
                          "bounced_soft": d.bounce == "soft", "unsubscribed": d.unsubscribed_at is not None})
            kept = {r["key"]: {c: r[c] for c in COLUMNS if c not in ("complaints", "clicks")}
                    for r in breakdown(campaign, by)["rows"]}
            assert kept == {k: {c: v[c] for c in COLUMNS if c not in ("complaints", "clicks")}
                            for k, v in counted.items()}, by


def test_progress_estimates_the_finish_from_the_last_minutes(sent, api):
    now = utcnow().replace(tzinfo=timezone.utc).timestamp()
    sent.m0 = int(now // 60) * 60 - 120  # outcomes two minutes ago: within the rate's window
    sent.events(*[(e, "delivered", 0, 0, 250, "250 OK") for e in PEOPLE[:4]])
    progress = api(f"/campaigns/{sent.campaign_id}/timeline").get_json()["progress"]
    assert (progress["done"], progress["remaining"], progress["rate_per_minute"]) == (4, 4, 0.8)
    finish = datetime.strptime(progress["finish_estimate"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    assert abs(finish.timestamp() - (now + 5 * 60)) < 60  # 4 letters left at 0.8 a minute
