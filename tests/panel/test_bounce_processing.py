"""Bounces and refusals applied in the panel: the daemon's outcome path (store_bounces,
apply_events) on real rows, the letter's bounce, the campaign's figures, the user's
suppression list and the next campaign that honours it."""

from __future__ import annotations


import pytest
from sqlalchemy import func, select

from panel.daemon.dispatch import dispatch_server
from panel.daemon.outcomes import apply_events, finish_campaigns, store_bounces
from panel.extensions import db
from panel.models import BounceMessage, Campaign, Delivery, Server, Suppression, User
from panel.services.sending import campaign_stats, start_campaign
from panel.services.tokens import delivery_token
from tests.helpers import BOUNCE_CORPUS
from tests.panel.agents import TakingAgent

CORPUS = BOUNCE_CORPUS
PEOPLE = ["ann@example.org", "bob@example.org", "cat@example.org", "dan@example.org"]


def exim_dsn(address: str, reply: str, permanent: bool = True) -> str:
    """A bounce as Exim writes it when the recipient's server refuses a letter."""
    kind = "This is a permanent error." if permanent else "This is a temporary error."
    return (
        "From: Mail Delivery System <Mailer-Daemon@worker.example.net>\n"
        f"To: bounce+x@bounces.example.com\nSubject: Mail delivery failed: returning message to sender\n"
        f"X-Failed-Recipients: {address}\nAuto-Submitted: auto-replied\n\n"
        "This message was created automatically by mail delivery software.\n\n"
        f"A message that you sent could not be delivered to one or more of its\nrecipients. {kind} "
        f"The following address(es) failed:\n\n  {address}\n    host mx.example.org [192.0.2.25]\n"
        f"    SMTP error from remote mail server after RCPT TO:<{address}>:\n    {reply}\n\n"
        "------ This is a copy of the message, including all the headers. ------\n\n"
        f"From: news@example.com\nTo: {address}\nSubject: News\n\nHello\n"
    )


def arf(address: str, feedback_type: str = "abuse") -> str:
    return (
        "From: fbl@isp.example\nTo: abuse@example.com\nSubject: complaint\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nA complaint.\n"
        f"--b\nContent-Type: message/feedback-report\n\nFeedback-Type: {feedback_type}\nVersion: 1\n"
        f"Original-Rcpt-To: {address}\n"
        f"--b\nContent-Type: message/rfc822\n\nFrom: news@example.com\nTo: {address}\nSubject: News\n\nHi\n--b--\n"
    )


USER_UNKNOWN = "550 5.1.1 <{}>: Recipient address rejected: User unknown in local recipient table"
MAILBOX_FULL = "552 5.2.2 <{}>: Mailbox full"


class Mailing:
    """Alice's list, server and campaigns; each step in its own app context, committed."""

    def __init__(self, app, seed, alice: int) -> None:
        self.app, self.seed, self.user_id = app, seed, alice
        self.list_id = seed.list(alice, "Customers", [{"email": e, "name": e[:3]} for e in PEOPLE])
        self.server_id = seed.server(alice)

    def campaign(self) -> int:
        """A campaign to the list, started and pushed to the server: its letters are on their way."""
        campaign_id = self.seed.campaign(self.user_id, [self.list_id])
        with self.app.app_context():
            start_campaign(db.session.get(User, self.user_id), db.session.get(Campaign, campaign_id))
            db.session.commit()
            dispatch_server(TakingAgent(), db.session.get(Server, self.server_id))
        return campaign_id

    def letter(self, campaign_id: int, email: str) -> int:
        return self.seed.query(lambda s: s.scalar(
            select(Delivery.id).where(Delivery.campaign_id == campaign_id, Delivery.email == email)))

    def bounce(self, letter_id: int | None, raw: str, token: str | None = None) -> None:
        """What the daemon does with a bounce the agent reports for a VERP token."""
        token = token or delivery_token(self.app.config["SECRET_KEY"], letter_id)
        with self.app.app_context():
            store_bounces(db.session.get(Server, self.server_id), [{"seq": 1, "kind": "bounce", "token": token, "raw": raw}])
            db.session.commit()

    def events(self, *events: dict) -> None:
        with self.app.app_context():
            apply_events(db.session.get(Server, self.server_id), list(events))
            db.session.commit()

    def delivered(self, letter_id: int) -> None:
        self.events({"id": letter_id, "status": "sent"}, {"id": letter_id, "status": "delivered", "code": 250, "text": "OK"})

    def suppressed(self) -> dict[str, str]:
        return dict(self.seed.query(lambda s: s.execute(
            select(Suppression.email, Suppression.reason).where(Suppression.user_id == self.user_id)).all()))

    def stats(self, campaign_id: int) -> dict:
        with self.app.app_context():
            return campaign_stats(db.session.get(Campaign, campaign_id))

    def recipients(self, campaign_id: int) -> set[str]:
        return set(self.seed.query(lambda s: s.scalars(select(Delivery.email).where(Delivery.campaign_id == campaign_id)).all()))

    def messages(self) -> list[BounceMessage]:
        return self.seed.query(lambda s: [_detached(s, m) for m in s.scalars(select(BounceMessage).order_by(BounceMessage.id)).all()])


def _detached(session, row):
    session.expunge(row)
    return row


@pytest.fixture
def mailing(app, seed, alice) -> Mailing:
    return Mailing(app, seed, alice)


def test_a_hard_bounce_is_recorded_counted_suppressed_and_left_out_of_the_next_campaign(mailing):
    first = mailing.campaign()
    letter = mailing.letter(first, "bob@example.org")
    mailing.events({"id": letter, "status": "sent"}, {"id": letter, "status": "delivered", "code": 250, "text": "OK"})
    mailing.bounce(letter, exim_dsn("bob@example.org", USER_UNKNOWN.format("bob@example.org")))

    (message,) = mailing.messages()
    assert (message.delivery_id, message.recipient, message.reason, message.bounce_kind) == \
        (letter, "bob@example.org", "userunknown", "hard")
    assert (message.dsn, message.code, message.mismatch) == ("5.1.1", 550, False)
    assert message.classified_at is not None
    row = mailing.seed.get(Delivery, letter)
    assert (row.status, row.bounce, row.bounce_reason) == ("delivered", "hard", "userunknown")
    assert mailing.suppressed() == {"bob@example.org": "hard_bounce"}
    stats = mailing.stats(first)
    assert (stats["bounced_hard"], stats["bounced_soft"], stats["delivered"]) == (1, 0, 1)

    second = mailing.campaign()
    assert mailing.recipients(second) == set(PEOPLE) - {"bob@example.org"}
    assert mailing.stats(second)["total"] == 3


def test_the_same_bounce_twice_suppresses_once_and_counts_once(mailing):
    campaign = mailing.campaign()
    letter = mailing.letter(campaign, "ann@example.org")
    raw = exim_dsn("ann@example.org", USER_UNKNOWN.format("ann@example.org"))
    mailing.bounce(letter, raw)
    mailing.bounce(letter, raw)
    assert len(mailing.messages()) == 2  # both kept, as they came
    assert mailing.suppressed() == {"ann@example.org": "hard_bounce"}
    assert mailing.seed.query(lambda s: s.scalar(select(func.count()).select_from(Suppression))) == 1
    assert mailing.stats(campaign)["bounced_hard"] == 1


def test_soft_bounces_suppress_after_the_limit_in_a_row(mailing):
    full = MAILBOX_FULL.format("cat@example.org")
    for n in (1, 2):
        campaign = mailing.campaign()
        mailing.bounce(mailing.letter(campaign, "cat@example.org"), exim_dsn("cat@example.org", full))
        assert mailing.stats(campaign)["bounced_soft"] == 1
        assert mailing.suppressed() == {}, f"suppressed after {n} soft bounce(s)"
    third = mailing.campaign()
    assert "cat@example.org" in mailing.recipients(third)
    letter = mailing.letter(third, "cat@example.org")
    mailing.bounce(letter, exim_dsn("cat@example.org", full))
    mailing.bounce(letter, exim_dsn("cat@example.org", full))  # the same bounce again changes nothing
    assert mailing.suppressed() == {"cat@example.org": "soft_bounce"}
    assert (mailing.seed.get(Delivery, letter).bounce_reason, mailing.messages()[-1].reason) == ("mailboxfull", "mailboxfull")
    assert "cat@example.org" not in mailing.recipients(mailing.campaign())


def test_a_letter_delivered_without_a_bounce_breaks_the_run_of_soft_bounces(mailing):
    full = MAILBOX_FULL.format("dan@example.org")
    for step in ("soft", "soft", "delivered", "soft", "soft"):
        campaign = mailing.campaign()
        letter = mailing.letter(campaign, "dan@example.org")
        if step == "delivered":
            mailing.delivered(letter)
        else:
            mailing.bounce(letter, exim_dsn("dan@example.org", full))
    assert mailing.suppressed() == {}
    mailing.bounce(mailing.letter(mailing.campaign(), "dan@example.org"), exim_dsn("dan@example.org", full))
    assert mailing.suppressed() == {"dan@example.org": "soft_bounce"}


def test_the_soft_limit_is_configurable(app, mailing):
    app.config["BOUNCE_SOFT_LIMIT"] = 1
    mailing.bounce(mailing.letter(mailing.campaign(), "ann@example.org"),
                   exim_dsn("ann@example.org", MAILBOX_FULL.format("ann@example.org")))
    assert mailing.suppressed() == {"ann@example.org": "soft_bounce"}


def test_refusals_at_delivery_time_are_classified_like_bounces(mailing):
    campaign = mailing.campaign()
    gone, full, own = (mailing.letter(campaign, e) for e in ("ann@example.org", "bob@example.org", "cat@example.org"))
    mailing.events(
        {"id": gone, "status": "sent"},
        {"id": gone, "status": "failed", "code": 550, "text": USER_UNKNOWN.format("ann@example.org")},
        {"id": full, "status": "failed", "code": 552, "text": "552 5.2.2 Mailbox full"},
        # the worker's own Exim refusing the letter says nothing about the recipient
        {"id": own, "status": "failed", "code": 550,
         "text": '550 5.7.1 X-Mailfleet-Source-IP "10.9.9.9" is not a source IP of this node'},
    )
    rows = {d: mailing.seed.get(Delivery, d) for d in (gone, full, own)}
    assert (rows[gone].status, rows[gone].bounce, rows[gone].bounce_reason) == ("failed", "hard", "userunknown")
    assert (rows[full].status, rows[full].bounce, rows[full].bounce_reason) == ("failed", "soft", "mailboxfull")
    assert (rows[own].status, rows[own].bounce) == ("failed", None)
    assert mailing.suppressed() == {"ann@example.org": "hard_bounce"}
    stats = mailing.stats(campaign)
    assert (stats["failed"], stats["bounced_hard"], stats["bounced_soft"]) == (3, 1, 1)
    # the same events reported again (an ack lost) change nothing
    mailing.events({"id": gone, "status": "failed", "code": 550, "text": USER_UNKNOWN.format("ann@example.org")})
    assert mailing.stats(campaign)["bounced_hard"] == 1
    assert mailing.recipients(mailing.campaign()) == set(PEOPLE) - {"ann@example.org"}


def test_a_bounce_naming_another_address_is_applied_to_the_letters_own_address(mailing):
    campaign = mailing.campaign()
    letter = mailing.letter(campaign, "ann@example.org")
    mailing.bounce(letter, exim_dsn("someone.else@example.net", USER_UNKNOWN.format("someone.else@example.net")))
    (message,) = mailing.messages()
    assert (message.recipient, message.mismatch, message.bounce_kind) == ("someone.else@example.net", True, "hard")
    assert mailing.suppressed() == {"ann@example.org": "hard_bounce"}  # the letter's address, never the named one


@pytest.mark.parametrize("token", ["999999-0123456789", "1-forgedmac00", None])
def test_a_bounce_matching_no_letter_is_kept_and_suppresses_nobody(mailing, token):
    campaign = mailing.campaign()
    raw = exim_dsn("bob@example.org", USER_UNKNOWN.format("bob@example.org"))
    with mailing.app.app_context():
        store_bounces(db.session.get(Server, mailing.server_id), [{"seq": 1, "kind": "bounce", "token": token, "raw": raw}])
        db.session.commit()
    (message,) = mailing.messages()
    assert (message.delivery_id, message.recipient, message.bounce_kind) == (None, "bob@example.org", "hard")
    assert mailing.suppressed() == {}
    assert mailing.stats(campaign)["bounced_hard"] == 0


def test_a_complaint_suppresses_as_a_complaint_without_counting_as_a_bounce(mailing):
    campaign = mailing.campaign()
    mailing.bounce(mailing.letter(campaign, "cat@example.org"), arf("cat@example.org"))
    mailing.bounce(mailing.letter(campaign, "dan@example.org"), arf("dan@example.org", "auth-failure"))
    complaint, report = mailing.messages()
    assert (complaint.reason, complaint.bounce_kind) == ("feedback", "none")
    assert (report.reason, report.bounce_kind) == ("feedback", "none")
    assert mailing.suppressed() == {"cat@example.org": "complaint"}  # an auth-failure report is no complaint
    stats = mailing.stats(campaign)
    assert (stats["bounced_hard"], stats["bounced_soft"]) == (0, 0)


def test_a_real_complaint_naming_other_people_suppresses_only_the_letters_address(mailing):
    """arf-16 from the corpus names seven other addresses: none of them is touched."""
    campaign = mailing.campaign()
    letter = mailing.letter(campaign, "ann@example.org")
    mailing.bounce(letter, (CORPUS / "arf-16.eml").read_text(encoding="utf-8"))
    (message,) = mailing.messages()
    assert (message.reason, message.bounce_kind, message.mismatch) == ("feedback", "none", True)
    assert mailing.suppressed() == {"ann@example.org": "complaint"}
    assert mailing.seed.get(Delivery, letter).bounce is None


def test_an_auto_reply_changes_nothing(mailing):
    campaign = mailing.campaign()
    letter = mailing.letter(campaign, "bob@example.org")
    mailing.bounce(letter, "From: Bob <bob@example.org>\nTo: bounce+x@bounces.example.com\n"
                           "Subject: Out of office\nAuto-Submitted: auto-replied\n\nI am away until Monday.\n")
    (message,) = mailing.messages()
    assert (message.reason, message.bounce_kind) == ("vacation", "none")
    assert mailing.seed.get(Delivery, letter).bounce is None and mailing.suppressed() == {}


def test_bounces_stored_before_classification_existed_are_classified_by_the_daemon(mailing):
    campaign = mailing.campaign()
    letter = mailing.letter(campaign, "ann@example.org")
    with mailing.app.app_context():
        db.session.add(BounceMessage(server_id=mailing.server_id, delivery_id=letter, kind="bounce",
                                     token=delivery_token(mailing.app.config["SECRET_KEY"], letter),
                                     raw=exim_dsn("ann@example.org", USER_UNKNOWN.format("ann@example.org"))))
        db.session.add(BounceMessage(server_id=mailing.server_id, delivery_id=letter, kind="unsubscribe",
                                     token=None, raw="From: ann@example.org\n\nunsubscribe\n"))
        db.session.commit()
        finish_campaigns()
        finish_campaigns()
    bounce, unsubscribe = mailing.messages()
    # The unsubscribe mail is no bounce (no verdict) but is applied: the address was already suppressed.
    assert (bounce.bounce_kind, unsubscribe.bounce_kind, unsubscribe.reason) == ("hard", None, "unsubscribe")
    assert unsubscribe.classified_at is not None
    assert mailing.suppressed() == {"ann@example.org": "hard_bounce"}


def test_a_delay_notice_is_recorded_but_changes_nothing(app, mailing):
    """rfc3464-09 from the corpus: Action: delayed (quota exceeded, will retry). The letter's fate
    is yet to come: no bounce on it, nothing toward the soft limit, even with a limit of one."""
    app.config["BOUNCE_SOFT_LIMIT"] = 1
    campaign = mailing.campaign()
    letter = mailing.letter(campaign, "bob@example.org")
    mailing.bounce(letter, (CORPUS / "rfc3464-09.eml").read_text(encoding="utf-8"))
    (message,) = mailing.messages()
    assert (message.bounce_kind, message.classified_at is not None) == ("soft", True)
    assert mailing.seed.get(Delivery, letter).bounce is None
    assert mailing.suppressed() == {} and mailing.stats(campaign)["bounced_soft"] == 0


def test_a_success_dsn_suppresses_nobody_and_changes_no_letter(app, mailing):
    """Issue 11 point 4: a DSN whose every recipient was delivered (Action delivered, Status 2.0.0,
    reply 250) is kind none on its way through the daemon: no bounce, nothing suppressed, even with a
    soft limit of one; the letter's state is what it was before the notice came."""
    app.config["BOUNCE_SOFT_LIMIT"] = 1
    campaign = mailing.campaign()
    letter = mailing.letter(campaign, "bob@example.org")
    before = mailing.seed.get(Delivery, letter).status
    mailing.bounce(letter, (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\nTo: bounce+x@bounces.example.com\n"
        "Subject: Successful Mail Delivery Report\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nYour message was successfully delivered to bob@example.org.\n\n"
        "--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.org\n\n"
        "Final-Recipient: rfc822; bob@example.org\nAction: delivered\nStatus: 2.0.0\n"
        "Diagnostic-Code: smtp; 250 2.0.0 OK\n\n--b--\n"))
    (message,) = mailing.messages()
    assert message.bounce_kind == "none"
    row = mailing.seed.get(Delivery, letter)
    assert (row.bounce, row.status) == (None, before)
    assert mailing.suppressed() == {} and mailing.stats(campaign)["bounced_soft"] == 0
