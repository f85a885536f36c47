"""Test sends (issue 10 point 5): a campaign's letter sent to up to five addresses through the
real path (the daemon pushes it to one of the campaign's servers, whose agent renders it and hands
it to its Exim), marked as a test: "[Test] " before the subject and `X-Mailfleet-Test: 1`.

Test letters are rows of their own (models/test_letter.py), never deliveries: the campaign's
counts, minutes and breakdowns (kept by triggers on deliveries) cannot see them. On the agent
their ids are negative, so outcomes about them update only the test letter; their token is no
delivery token, so a bounce or an unsubscribe of one names no letter and suppresses nobody."""

from __future__ import annotations

from typing import Any

from flask import current_app
from sqlalchemy import select, update

from ..extensions import db
from ..models import Campaign, Server, TestLetter, User
from ..models.base import utcnow
from ..daemon.agent_client import AgentRefused
from ..models.domain import bounce_domain_of
from .addresses import InvalidAddress, normalise_address
from .letters import campaign_payload
from .lists import find_recipient
from .servers import user_servers

MAX_ADDRESSES = 5
SUBJECT_MARK = "[Test] "
# What an agent reports that a test letter takes on; `queued` once an agent took the push.
_REPLACES = {
    "sent": {"queued", "deferred"},
    "deferred": {"queued", "sent", "deferred"},
    "delivered": {"queued", "sent", "deferred"},
    "failed": {"queued", "sent", "deferred"},
    "cancelled": {"queued"},
}


class TestSendError(ValueError):
    """What was wrong with a test request, in words for the user."""

    __test__ = False


class NoServerOnline(TestSendError):
    """No server the campaign may send through answers now."""


def parse_addresses(value: Any) -> list[str]:
    """The addresses of a test: a list (the API) or text split at commas, semicolons and line
    breaks (the form); 1 to 5, each a valid address, duplicates once."""
    if isinstance(value, str):
        value = [part for part in value.replace(";", ",").replace("\n", ",").split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TestSendError('"addresses" must be a list of e-mail addresses')
    if not value:
        raise TestSendError("give at least one address to send the test to")
    if len(value) > MAX_ADDRESSES:
        raise TestSendError(f"a test goes to at most {MAX_ADDRESSES} addresses; {len(value)} were given")
    addresses: list[str] = []
    for raw in value:
        try:
            address = normalise_address(raw)
        except InvalidAddress as exc:
            raise TestSendError(f"{raw.strip()!r} is not a usable address: {exc}") from None
        if address not in addresses:
            addresses.append(address)
    return addresses


def _sending_ip(campaign: Campaign, server: Server) -> str | None:
    """The IP the test goes out from: one of the campaign's chosen IPs on this server, else any
    active IP of the server (as the campaign's own letters would)."""
    chosen = {ip.id for ip in campaign.source_ips}
    for ip in server.ips:
        if ip.active and (not chosen or ip.id in chosen):
            return ip.ip
    return None


def send_test(user: User, campaign: Campaign, addresses: Any) -> list[TestLetter]:
    """Persist a test of `campaign` to `addresses` for one online server of the campaign; the
    daemon pushes it on its next round. Raises TestSendError (NoServerOnline: nothing to send
    through). Flushes, never commits."""
    wanted = parse_addresses(addresses)
    servers = campaign.servers or user_servers(user)
    choice = next(((server, ip) for server in servers if server.ready and server.status == "online"
                   for ip in [_sending_ip(campaign, server)] if ip), None)
    if choice is None:
        raise NoServerOnline("no server of this campaign is online (with an active source IP) to send the test "
                             "through; check the Servers page and try again once one answers")
    server, ip = choice
    domain = campaign.domains[0].name if campaign.domains else None
    token = TestLetter.new_push_token()
    letters = [TestLetter(campaign_id=campaign.id, server_id=server.id, email=address, source_ip=ip,
                          sending_domain=domain, push_token=token, status="pending") for address in wanted]
    db.session.add_all(letters)
    db.session.flush()
    return letters


def recent_tests(campaign: Campaign, limit: int = 20) -> list[TestLetter]:
    return list(db.session.scalars(
        select(TestLetter).where(TestLetter.campaign_id == campaign.id).order_by(TestLetter.id.desc()).limit(limit)))


def test_as_json(letter: TestLetter) -> dict[str, Any]:
    return {"id": letter.id, "email": letter.email, "status": letter.status, "code": letter.code,
            "reply": letter.reply, "server_id": letter.server_id, "source_ip": letter.source_ip,
            "created_at": letter.created_at.isoformat() + "Z"}


def _payload(campaign: Campaign, letters: list[TestLetter]) -> dict[str, Any]:
    config = current_app.config
    # No secret: no masked links nor open pixel, so a test's clicks and opens count nowhere.
    marked = campaign_payload(campaign, config["PUBLIC_URL"], config["BOUNCE_DOMAIN"])
    # Its own campaign id on the agent, so the real campaign's stored template is never replaced.
    marked.update(id=-campaign.id, subject=SUBJECT_MARK + campaign.subject, test=True)
    # The fields of the address's own row in the campaign's lists, else of its first recipient, as
    # the preview shows: the test reads like a real letter.
    sample = find_recipient(campaign.lists)
    recipients = []
    for letter in letters:
        row = find_recipient(campaign.lists, letter.email) or sample
        item: dict[str, Any] = {"id": -letter.id, "email": letter.email, "fields": dict(row.fields) if row else {},
                                "source_ip": letter.source_ip, "token": f"test{letter.id}"}
        if letter.sending_domain:
            item.update(domain=letter.sending_domain, bounce_domain=bounce_domain_of(letter.sending_domain))
        recipients.append(item)
    return {"batch_id": letters[0].push_token, "campaign": marked, "recipients": recipients}


def push_pending(client: Any, server: Server) -> bool:
    """Push this server's test letters no agent has taken yet, one push per test (its token the
    batch id: pushed again after a crash, the agent queues it once). Raises AgentError; the letters
    stay pending and are pushed on a later round; a push the agent refuses fails its letters,
    saying why. True if anything was pushed."""
    pending = list(db.session.scalars(select(TestLetter).where(
        TestLetter.server_id == server.id, TestLetter.status == "pending").order_by(TestLetter.id)))
    by_push: dict[str, list[TestLetter]] = {}
    for letter in pending:
        by_push.setdefault(letter.push_token, []).append(letter)
    for token, letters in by_push.items():
        campaign = db.session.get(Campaign, letters[0].campaign_id)
        done: dict[str, Any] = {"status": "queued"}
        try:
            client.call("/v1/batches", _payload(campaign, letters))
        except AgentRefused as exc:  # pushed again it would be refused again, ahead of every campaign
            done = {"status": "failed", "reply": f"the agent refused the test: {exc}"[:2000]}
        db.session.execute(update(TestLetter).where(TestLetter.push_token == token, TestLetter.status == "pending")
                           .values(updated_at=utcnow(), **done))
        db.session.commit()
    return bool(by_push)


def apply_test_events(server: Server, events: list[dict]) -> None:
    """Outcomes of this server's test letters (ids negated back): status and reply only; nothing
    is judged like a bounce and no campaign figure moves."""
    for event in events:
        letter = db.session.get(TestLetter, -event["id"])
        if letter is None or letter.server_id != server.id:
            continue
        if letter.status in _REPLACES.get(event["status"], ()):
            letter.status, letter.code, letter.reply = event["status"], event.get("code"), event.get("text")
            letter.updated_at = utcnow()
