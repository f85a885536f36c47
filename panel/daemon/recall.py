"""Taking letters back from an agent before its Exim has them (POST /v1/recall, docs/agent-protocol.md).

Two occasions, each resolved from what the agent answers, letter by letter:
- an address suppressed (unsubscribe, hard bounce, complaint) while letters to it wait on an agent:
  those given back, or that the agent does not hold, are cancelled; those it is already sending
  stay queued and their outcome comes as for any letter;
- a server that comes back after being silent longer than SERVER_FAILOVER_AFTER: its waiting letters
  go back to their campaigns and any server with room takes them (the others kept sending meanwhile).

The agent is not trusted: only ids the panel asked about count, each in one answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, exists, select, update

from ..extensions import db
from ..models import Campaign, Delivery, Server, ServerEvent, Suppression
from ..models.base import utcnow
from .agent_client import AgentClient
from .dispatch import SUPPRESSED_REPLY, _chunks, _open_batches, push_batch

log = logging.getLogger(__name__)

MAX_IDS = 10_000  # ids per recall request (the agent's bound)
SUPPRESSION_SCAN = 10.0  # seconds between looks for waiting letters to suppressed addresses, per server
ANSWERS = ("sending", "submitted", "finished", "unknown")
_CHUNK = 900  # ids per IN (...): under SQLite's bound-parameter limit


def take_back(client: AgentClient, ids: list[int]) -> dict[str, set[int]]:
    """Ask the agent for these letters back: {"recalled" | "sending" | … | "unknown": ids}. An id
    the agent left out of its answer, or put in two lists, counts as still its own ("sending")."""
    answer: dict[str, set[int]] = {"recalled": set(), **{name: set() for name in ANSWERS}}
    for chunk in _chunks(ids, MAX_IDS):
        asked = set(chunk)
        reply = client.call("/v1/recall", {"ids": chunk})
        lists: dict[str, Any] = {}
        if isinstance(reply, dict):
            lists = {"recalled": reply.get("recalled"), **(reply.get("not_recalled") or {})}
        seen: dict[int, str] = {}
        doubled: set[int] = set()
        for name in answer:
            items = lists.get(name)
            for item in items if isinstance(items, list) else ():
                if isinstance(item, int) and not isinstance(item, bool) and item in asked:
                    if item in seen and seen[item] != name:
                        doubled.add(item)
                    seen[item] = name
        for item in asked:
            name = seen.get(item, "sending")
            answer["sending" if item in doubled else name].add(item)
    return answer


def _given_back(answer: dict[str, set[int]]) -> list[int]:
    """Letters the agent no longer holds and will never send: given back, or never held."""
    return sorted(answer["recalled"] | answer["unknown"])


def _set_chunks(ids: Iterable[int], **values: Any) -> int:
    changed = 0
    for chunk in _chunks(sorted(ids), _CHUNK):
        changed += db.session.execute(
            update(Delivery).where(Delivery.id.in_(chunk), Delivery.status == "queued").values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
    return changed


def recall_suppressed(client: AgentClient, server: Server, last_scan: dict[int, float]) -> int:
    """Every SUPPRESSION_SCAN seconds: the letters waiting on this agent whose address the user
    suppressed since they were pushed are recalled and cancelled. Returns how many were cancelled."""
    now = time.monotonic()
    if now - last_scan.get(server.id, float("-inf")) < SUPPRESSION_SCAN:
        return 0
    suppressed = exists().where(and_(Suppression.user_id == Campaign.user_id, Suppression.email == Delivery.email))
    ids = list(db.session.scalars(
        select(Delivery.id).join(Campaign, Campaign.id == Delivery.campaign_id)
        .where(Delivery.server_id == server.id, Delivery.status == "queued", suppressed)
    ))
    cancelled = 0
    if ids:
        answer = take_back(client, ids)
        cancelled = _set_chunks(_given_back(answer), status="cancelled", reply=SUPPRESSED_REPLY)
        db.session.commit()
        log.info("server %s: %d letters to addresses suppressed meanwhile recalled and cancelled", server.id, cancelled)
    last_scan[server.id] = now
    return cancelled


def recall_after_silence(client: AgentClient, server: Server) -> int:
    """The server answers again after a silence long enough for failover: its batches whose push
    was never answered are pushed again (a no-op for those that arrived), then its waiting letters
    are taken back to their campaigns, for whichever server has room. Returns how many came back."""
    for batch in _open_batches(server):
        push_batch(client, batch)
    ids = list(db.session.scalars(select(Delivery.id).where(Delivery.server_id == server.id,
                                                            Delivery.status == "queued")))
    if not ids:
        return 0
    answer = take_back(client, ids)
    back = _set_chunks(_given_back(answer), status="pending", server_id=None, source_ip=None,
                       sending_domain=None, batch_id=None)
    if back:
        db.session.add(ServerEvent(
            server_id=server.id, kind="recalled",
            message=f"answering again after a long silence: {back} letters waiting on its agent went back to their "
                    f"campaigns; {len(ids) - back} it was already sending stay its own"))
    db.session.commit()
    return back


def silent_too_long(server: Server, failover_after: float) -> bool:
    """Whether the server has not answered for longer than the failover delay (before this round)."""
    if server.status == "online" or server.last_seen_at is None:
        return False
    return (utcnow() - server.last_seen_at).total_seconds() > failover_after

