"""Letters of a server that stopped answering go to the other servers of their campaign.

A letter in a batch the daemon never tried to push (`attempts == 0`) is certainly not on the
agent: once its server has been silent for SERVER_FAILOVER_AFTER seconds, it goes back to its
campaign, and any server with room takes it. A letter whose push was tried may be on the agent,
which goes on sending what it holds without the panel: it stays that server's until the agent
answers again (then it is recalled), or until an operator declares the server gone for good.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, update

from ..extensions import db
from ..models import Delivery, DispatchBatch, Server, ServerEvent
from ..models.base import utcnow


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
