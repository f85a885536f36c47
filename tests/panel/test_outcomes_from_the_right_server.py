"""A server's reports count only for the letters it was given (issue 12, point 3).

Through real daemon rounds against fake agents: Alice's letters go to her server, Bob's to his;
Bob's agent then reports outcomes, bounces and unsubscribe mails for Alice's letters (whose
tokens it may have seen as one of her recipients) and for a letter of his own paused campaign
that was never pushed to it. None of that changes the database; what it reports about the
letters it was given is applied as always. Raw messages are kept capped, and a report with more
items than any agent sends is refused whole."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from panel.daemon.loop import DaemonState
from panel.extensions import db
from panel.models import BounceMessage, Campaign, Delivery, DeliveryEvent, Server, ServerEvent, Suppression, User
from panel.services.sending import set_campaign_state, start_campaign
from panel.services.tokens import delivery_token
from tests.panel.agents import Agents, daemon_round

SECRET = "test-secret-key"  # the app fixture's SECRET_KEY
RAW_CAP = 64 * 1024


def dsn(address: str) -> str:
    """A hard bounce as Exim writes it (550 5.1.1 user unknown)."""
    return (
        "From: Mail Delivery System <Mailer-Daemon@worker.example.net>\n"
        "To: bounce+x@bounces.example.com\nSubject: Mail delivery failed: returning message to sender\n"
        f"X-Failed-Recipients: {address}\nAuto-Submitted: auto-replied\n\n"
        "A message that you sent could not be delivered to one or more of its\nrecipients. This is a permanent "
        f"error. The following address(es) failed:\n\n  {address}\n    host mx.example.org [192.0.2.25]\n"
        f"    SMTP error from remote mail server after RCPT TO:<{address}>:\n"
        f"    550 5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient table\n\n"
        "------ This is a copy of the message, including all the headers. ------\n\n"
        f"From: news@example.com\nTo: {address}\nSubject: News\n\nHello\n"
    )


UNSUBSCRIBE = "From: someone@example.org\nTo: unsubscribe+x@bounces.example.com\nSubject: unsubscribe\n\n"
REFUSED = {"status": "failed", "code": 550, "text": "550 5.1.1 user unknown: no such user here"}


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8"}  # the fake agents listen on loopback


class Tenants:
    """Alice's campaign on her server, Bob's running campaign and his paused one on his; one daemon
    round has pushed what may be pushed."""

    def __init__(self, app, seed, alice: int, bob: int, agents: Agents) -> None:
        self.app, self.seed, self.state = app, seed, DaemonState()
        self.alice_agent, self.bob_agent = agents.start(), agents.start()
        self.alice_server = self.alice_agent.register(app, alice, "alice's worker")
        self.bob_server = self.bob_agent.register(app, bob, "bob's worker")
        self.alice_campaign = self._started(alice, ["ann@example.org", "bea@example.org"], self.alice_server)
        self.bob_campaign = self._started(bob, ["cat@example.org"], self.bob_server)
        self.bob_paused = self._started(bob, ["dan@example.org"], self.bob_server, pause=True)
        self.round()
        assert self.statuses(self.alice_campaign) == ["queued", "queued"]
        assert self.statuses(self.bob_campaign) == ["queued"]
        assert self.statuses(self.bob_paused) == ["pending"]  # on Bob's server, never pushed to it

    def _started(self, user_id: int, emails: list[str], server_id: int, pause: bool = False) -> int:
        list_id = self.seed.list(user_id, f"list of {emails[0]}", [{"email": e, "name": e[:3]} for e in emails])
        campaign_id = self.seed.campaign(user_id, [list_id], servers=[server_id])
        with self.app.app_context():
            user, campaign = db.session.get(User, user_id), db.session.get(Campaign, campaign_id)
            start_campaign(user, campaign)
            if pause:
                set_campaign_state(user, campaign, "pause")
            db.session.commit()
        return campaign_id

    def round(self) -> None:
        daemon_round(self.app, self.state)

    def letters(self, campaign_id: int) -> list[int]:
        return self.seed.query(lambda s: list(s.scalars(
            select(Delivery.id).where(Delivery.campaign_id == campaign_id).order_by(Delivery.id))))

    def statuses(self, campaign_id: int) -> list[str]:
        return self.seed.query(lambda s: list(s.scalars(
            select(Delivery.status).where(Delivery.campaign_id == campaign_id).order_by(Delivery.id))))

    def snapshot(self, campaign_ids: list[int]) -> dict:
        """Everything a report could change about these campaigns' letters and their owners."""
        def read(s) -> dict:
            ids = list(s.scalars(select(Delivery.id).where(Delivery.campaign_id.in_(campaign_ids))))
            return {
                "letters": [tuple(row) for row in s.execute(
                    select(Delivery.id, Delivery.status, Delivery.code, Delivery.reply, Delivery.bounce,
                           Delivery.bounce_reason, Delivery.unsubscribed_at)
                    .where(Delivery.id.in_(ids)).order_by(Delivery.id))],
                "events": s.scalar(select(func.count()).where(DeliveryEvent.delivery_id.in_(ids))),
                "messages": s.scalar(select(func.count()).select_from(BounceMessage)),
                "suppressions": sorted(tuple(row) for row in s.execute(select(Suppression.user_id, Suppression.email))),
            }
        return self.seed.query(read)


@pytest.fixture
def tenants(app, seed, alice, bob, agents) -> Tenants:
    return Tenants(app, seed, alice, bob, agents)


def token(letter_id: int) -> str:
    return delivery_token(SECRET, letter_id)


def test_reports_about_letters_the_server_was_not_given_change_nothing(tenants: Tenants, caplog):
    ann, bea = tenants.letters(tenants.alice_campaign)
    (dan,) = tenants.letters(tenants.bob_paused)
    before = tenants.snapshot([tenants.alice_campaign, tenants.bob_paused])
    tenants.bob_agent.report(
        events=[{"seq": 1, "id": ann, **REFUSED}, {"seq": 2, "id": bea, "status": "delivered", "code": 250},
                {"seq": 3, "id": dan, **REFUSED}, {"seq": 4, "id": dan, "status": "sent"}],
        bounces=[{"seq": 5, "kind": "bounce", "token": token(ann), "raw": dsn("ann@example.org")},
                 {"seq": 6, "kind": "unsubscribe", "token": token(bea), "raw": UNSUBSCRIBE},
                 {"seq": 7, "kind": "bounce", "token": token(dan), "raw": dsn("dan@example.org")},
                 {"seq": 8, "kind": "unsubscribe", "token": token(dan), "raw": UNSUBSCRIBE}],
    )
    caplog.set_level("WARNING", logger="panel.daemon.outcomes")
    tenants.round()
    assert tenants.snapshot([tenants.alice_campaign, tenants.bob_paused]) == before
    # Acked all the same (the agent is not asked for them again), and said once in the log.
    assert tenants.seed.get(Server, tenants.bob_server).outcome_ack == 8
    warnings = [r.getMessage() for r in caplog.records if "not given" in r.getMessage()]
    assert len(warnings) == 1 and "4 events" in warnings[0] and "4 messages" in warnings[0], warnings


def test_what_a_server_reports_about_its_own_letters_is_applied(tenants: Tenants):
    """The control for the test above: the same kind of report about a letter Bob's server was given."""
    (cat,) = tenants.letters(tenants.bob_campaign)
    long_reply = {**REFUSED, "text": REFUSED["text"] + "\x00\x1b[0m" + "x" * 100_000}  # kept cut, without controls
    tenants.bob_agent.report(events=[{"seq": 1, "id": cat, **long_reply}],
                             bounces=[{"seq": 2, "kind": "bounce", "token": token(cat), "raw": dsn("cat@example.org")}])
    tenants.round()
    letter = tenants.seed.get(Delivery, cat)
    assert (letter.status, letter.code, letter.bounce) == ("failed", 550, "hard")
    assert letter.reply.startswith(REFUSED["text"]) and len(letter.reply) <= 2000
    assert "\x00" not in letter.reply and "\x1b" not in letter.reply
    assert ("cat@example.org",) in [row[1:] for row in tenants.snapshot([tenants.bob_campaign])["suppressions"]]
    assert tenants.seed.query(lambda s: s.scalar(select(func.count()).where(BounceMessage.delivery_id == cat))) == 1


def test_a_huge_raw_bounce_is_kept_capped_and_still_applied(tenants: Tenants):
    (cat,) = tenants.letters(tenants.bob_campaign)
    raw = dsn("cat@example.org") + ("x" * 1023 + "\n") * 2048  # 2 MiB: the most an agent keeps of one
    tenants.bob_agent.report(bounces=[{"seq": 1, "kind": "bounce", "token": token(cat), "raw": raw}])
    tenants.round()
    (message,) = tenants.seed.query(lambda s: [
        (m.raw, m.bounce_kind, m.reason) for m in s.scalars(select(BounceMessage).where(BounceMessage.delivery_id == cat))])
    kept, kind, reason = message
    assert len(kept.encode()) <= RAW_CAP + 200
    assert kept.startswith(dsn("cat@example.org"))
    assert "cut" in kept[-200:] and str(len(raw)) in kept[-200:]  # a note says it was cut, and from what
    assert (kind, reason) == ("hard", "userunknown")
    assert tenants.seed.get(Delivery, cat).bounce == "hard"


def test_a_report_with_more_items_than_an_agent_sends_is_refused_whole(tenants: Tenants):
    (cat,) = tenants.letters(tenants.bob_campaign)
    tenants.bob_agent.report(events=[{"seq": n, "id": cat, "status": "sent"} for n in range(1, 10_002)])
    tenants.round()
    tenants.round()
    server = tenants.seed.get(Server, tenants.bob_server)
    assert server.outcome_ack == 0
    assert tenants.statuses(tenants.bob_campaign) == ["queued"]
    errors = tenants.seed.query(lambda s: list(s.scalars(select(ServerEvent.message).where(
        ServerEvent.server_id == tenants.bob_server, ServerEvent.kind == "error"))))
    assert len(errors) == 1, errors  # said once, not once a round
    assert "10001 events" in errors[0] and "10000" in errors[0], errors


@pytest.mark.parametrize("item", [
    {"seq": 1, "id": [0], "status": "sent"}, {"seq": 1, "id": 0, "status": ["sent"]},
    {"seq": 1, "id": 0, "status": "failed", "code": "550; DROP", "text": {"a": 1}},
    {"seq": "1", "id": 0, "status": "sent"}, {"seq": 2**40, "id": 0, "status": "sent"},
])
def test_malformed_events_are_ignored_and_the_rest_is_applied(tenants: Tenants, item):
    """Wrong types (or sizes) where the agent protocol has numbers and strings, about a letter the
    server was given (id 0 stands for it): the item is dropped, the report's other items are
    applied and acked, and the round goes on."""
    (cat,) = tenants.letters(tenants.bob_campaign)
    item = {**item, "id": [cat] if item["id"] == [0] else cat}
    tenants.bob_agent.report(events=[item, {"seq": 3, "id": cat, "status": "sent"}])
    tenants.round()
    assert tenants.statuses(tenants.bob_campaign) == ["sent"]
    server = tenants.seed.get(Server, tenants.bob_server)
    assert (server.status, server.outcome_ack) == ("online", 3)
