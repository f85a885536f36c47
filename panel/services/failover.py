"""Letters of a server that stopped answering go to the other servers of their campaign.

A letter in a batch the daemon never tried to push (`attempts == 0`) is certainly not on the
agent: once its server has been silent for SERVER_FAILOVER_AFTER seconds, it goes back to its
campaign, and any server with room takes it. A letter whose push was tried may be on the agent,
which goes on sending what it holds without the panel: it stays that server's until the agent
answers again (then it is recalled), or until an operator declares the server gone for good.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select, update

from ..extensions import db
from ..models import Delivery, DispatchBatch, Server, ServerEvent
from ..models.base import utcnow
from .servers import ServerError


def release_batches(batch_ids: list[int]) -> int:
    """Give the pending letters of these batches back to their campaigns (no server, IP or sending
    domain: the server that takes them chooses) and drop the batches. Returns how many letters."""
    if not batch_ids:
        return 0
    released = db.session.execute(
        update(Delivery)
        .where(Delivery.batch_id.in_(batch_ids), Delivery.status == "pending")
        .values(server_id=None, source_ip=None, sending_domain=None, batch_id=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.execute(delete(DispatchBatch).where(DispatchBatch.id.in_(batch_ids)))
    return released


def _never_pushed(server_ids: list[int]) -> dict[int, list[int]]:
    rows = db.session.execute(
        select(DispatchBatch.server_id, DispatchBatch.id).where(
            DispatchBatch.server_id.in_(server_ids), DispatchBatch.status == "open", DispatchBatch.attempts == 0
        )
    ).all()
    by_server: dict[int, list[int]] = {}
    for server_id, batch_id in rows:
        by_server.setdefault(server_id, []).append(batch_id)
    return by_server


def release_unsent(server: Server) -> int:
    """The server's letters the daemon never tried to push go back to their campaigns."""
    return release_batches(_never_pushed([server.id]).get(server.id, []))


def release_lost(server: Server) -> int:
    """The agent's queue was replaced (a reinstall): the letters it held that its Exim had not taken,
    as far as it reported, are gone with it and go back to their campaigns. Returns how many."""
    released = db.session.execute(
        update(Delivery)
        .where(Delivery.server_id == server.id, Delivery.status == "queued")
        .values(status="pending", server_id=None, source_ip=None, sending_domain=None, batch_id=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.flush()
    return released


def release_stranded(after_seconds: float, now: datetime | None = None) -> dict[int, int]:
    """For every server silent for more than `after_seconds`: its letters never pushed go back to
    their campaigns, said in a server event. Returns {server id: letters released}."""
    cutoff = (now or utcnow()) - timedelta(seconds=after_seconds)
    silent = list(db.session.scalars(
        select(Server.id).where(Server.status != "online",
                                or_(Server.last_seen_at.is_(None), Server.last_seen_at < cutoff))
    ))
    released: dict[int, int] = {}
    for server_id, batch_ids in _never_pushed(silent).items():
        count = release_batches(batch_ids)
        if count:
            released[server_id] = count
            db.session.add(ServerEvent(
                server_id=server_id, kind="failover",
                message=f"silent for more than {after_seconds:g} s: {count} letters not yet handed to it went back "
                        "to their campaigns for the other servers"))
    db.session.flush()
    return released


@dataclass(frozen=True)
class GoneReport:
    resent: int  # letters given back to their campaigns for the other servers
    may_repeat: int  # of those, letters its agent may hold (and send, should the server come back)
    unknown: int  # letters its Exim had taken whose outcome will never be known: failed


def declare_gone(server: Server) -> GoneReport:
    """An operator's word that the server will not come back: every letter it was given that its
    Exim had not taken goes back to its campaign for the other servers (the daemon no longer talks
    to it); letters its Exim had taken are failed, their outcome unknown. The report says how many
    letters may arrive twice if the server does come back after all (its agent sends what it holds)."""
    if server.status == "gone":
        raise ServerError("this server is already declared gone")
    if server.status == "online":
        raise ServerError("it is online and answering: pause its campaigns or remove it instead; a server is "
                          "declared gone only when it no longer answers")
    tried = select(DispatchBatch.id).where(DispatchBatch.server_id == server.id, DispatchBatch.attempts > 0)
    may_repeat = db.session.scalar(
        select(func.count()).where(
            Delivery.server_id == server.id,
            or_(Delivery.status == "queued", and_(Delivery.status == "pending", Delivery.batch_id.in_(tried))),
        )
    ) or 0
    batch_ids = list(db.session.scalars(select(DispatchBatch.id).where(DispatchBatch.server_id == server.id,
                                                                      DispatchBatch.status == "open")))
    resent = release_batches(batch_ids)
    resent += db.session.execute(
        update(Delivery)
        .where(Delivery.server_id == server.id, Delivery.status == "queued")
        .values(status="pending", server_id=None, source_ip=None, sending_domain=None, batch_id=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    unknown = db.session.execute(
        update(Delivery)
        .where(Delivery.server_id == server.id, Delivery.status.in_(("sent", "deferred")))
        .values(status="failed", code=None,
                reply=f"the server {server.name} was declared gone before this letter's outcome was known")
        .execution_options(synchronize_session=False)
    ).rowcount
    server.status = "gone"
    server.last_error = "declared gone by its operator"
    db.session.add(ServerEvent(
        server_id=server.id, kind="gone",
        message=f"declared gone: {resent} letters went back to their campaigns for the other servers; {may_repeat} of "
                f"them were on its agent and may arrive twice if it comes back; {unknown} letters its Exim had "
                "taken were marked failed (outcome unknown)"))
    db.session.flush()
    return GoneReport(resent=resent, may_repeat=may_repeat, unknown=unknown)
