"""Collecting what happened to each letter from the agents, and applying it once.

The agent keeps events until the panel acks their seq; the panel stores events and the
new ack in one transaction. A daemon stopped before commit asks again from the old ack,
and applying an event twice leaves the same state (transitions only move forward). The ack
goes with the epoch of the agent's queue it counts in: an agent reinstalled with a fresh
queue answers with a new epoch and all its events from seq 1, and the ack starts again.
Each event's time is when the agent says it happened (Exim's log), within sane bounds.

An agent is not trusted: what it reports counts only for letters its server was given (its own,
and pushed to it); anything else, or anything malformed, is acked and dropped, and said once per
report in the log. A report with more items than an agent sends is refused whole, and what the
agent says is kept cut and cleaned (agent_text).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from datetime import datetime, timezone
from itertools import islice
from typing import Iterable, Iterator

from flask import current_app
from sqlalchemy import ColumnElement, DateTime, and_, bindparam, or_, select
from sqlalchemy import text as sql

from ..extensions import db
from ..models import BounceMessage, Campaign, CampaignCount, Delivery, DispatchBatch, Server, ServerEvent
from ..models.base import is_row_id, utcnow
from ..services import failover
from ..services.bounces.apply import process_bounce, process_pending_bounces, process_refusal
from ..services.test_sends import apply_test_events
from ..services.tokens import delivery_id_from_token
from ..services.unsubscribe import apply_pending_unsubscribe_messages, apply_unsubscribe_message
from .agent_client import AgentClient, AgentError
from .agent_text import raw_message, reply_text, storable

log = logging.getLogger(__name__)

# Which current states each reported status may replace.
_REPLACES: dict[str, frozenset[str]] = {
    "sent": frozenset({"pending", "queued"}),
    "deferred": frozenset({"pending", "queued", "sent", "deferred"}),
    "delivered": frozenset({"pending", "queued", "sent", "deferred"}),
    "failed": frozenset({"pending", "queued", "sent", "deferred"}),
    "cancelled": frozenset({"pending", "queued"}),
}
_CHUNK = 900  # ids per IN (...): under SQLite's bound-parameter limit
# Items one report may hold: twice what an agent sends in one reply (worker_agent/queue.py).
MAX_EVENTS_PER_REPORT = 10_000
MAX_BOUNCES_PER_REPORT = 2_000
MESSAGE_KINDS = ("bounce", "unsubscribe")
EPOCH = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # as worker_agent/queue.py makes them (and takes them back)
# An event's time is taken from the agent within these bounds of the panel's clock; beyond (a
# clock gone wrong, not a number) the panel's own time stands in.
EVENT_TIME_PAST = 366 * 86400  # s: an agent may hold events while it cannot reach the panel
EVENT_TIME_FUTURE = 600  # s: clocks a little apart


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def given_to(server: Server) -> ColumnElement[bool]:
    """Letters handed to this server: assigned to it, and pushed to it (or a push was tried: the agent
    may hold them although the panel never heard its answer). About those only may it report."""
    push_tried = (
        select(DispatchBatch.id)
        .where(DispatchBatch.id == Delivery.batch_id, DispatchBatch.server_id == server.id, DispatchBatch.attempts > 0)
        .exists()
    )
    # Only a push moves a letter out of pending into a state an agent reports (cancelling it does not).
    return and_(Delivery.server_id == server.id, or_(Delivery.status.not_in(("pending", "cancelled")), push_tried))


def _current_states(server: Server, ids: list[int]) -> dict[int, str]:
    states: dict[int, str] = {}
    for chunk in _chunks(ids, _CHUNK):
        states.update(
            db.session.execute(select(Delivery.id, Delivery.status).where(Delivery.id.in_(chunk), given_to(server))).all()
        )
    return states


def _is_code(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 999)


def _well_formed(event: object) -> bool:
    """An event as agents send them: a letter's id, a status this panel knows, an SMTP code and text."""
    return (isinstance(event, dict) and is_row_id(event.get("id")) and isinstance(event.get("status"), str)
            and event["status"] in _REPLACES and _is_code(event.get("code"))
            and isinstance(event.get("text"), (str, type(None))))


def _is_test_event(event: object) -> bool:
    """An event about a test letter (services/test_sends.py): its id is a test letter's, negated."""
    return (isinstance(event, dict) and isinstance(event.get("id"), int) and not isinstance(event["id"], bool)
            and event["id"] < 0 and _well_formed({**event, "id": -event["id"]}))


def _event_time(value: object, now: datetime) -> datetime:
    """When the agent says it happened (unix seconds, Exim's log time), if that is a number within
    the bounds; else `now`. (A comparison is exact for any int, and false for NaN.)"""
    stamp = now.replace(tzinfo=timezone.utc).timestamp()
    if (isinstance(value, (int, float)) and not isinstance(value, bool)
            and stamp - EVENT_TIME_PAST <= value <= stamp + EVENT_TIME_FUTURE):
        return datetime.fromtimestamp(value, timezone.utc).replace(tzinfo=None)
    return now


# A report's events and state changes go to the database as one statement each (per chunk of rows in
# JSON, a single parameter): an executemany is one statement per row, and on PostgreSQL every statement
# on deliveries or delivery_events runs the statement-level count triggers once (campaign_counts and
# the campaign's figures), so a report of 5,000 events would run them 5,000 times.
_JSON_CHUNK = 5000
_ROWS = {
    "postgresql": "jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(id bigint, status text, code integer, "
                  "text text, at timestamp)",
    "sqlite": "(SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.status') AS status, "
              "json_extract(value, '$.code') AS code, json_extract(value, '$.text') AS text, "
              "json_extract(value, '$.at') AS at FROM json_each(:rows)) AS v",
}


def _dialect() -> str:
    return db.session.get_bind().dialect.name


def _as_stored(moment: datetime) -> str:
    """A time as the DateTime columns hold it: ISO on PostgreSQL (cast), SQLAlchemy's text form on SQLite."""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _insert_events(history: list[dict]) -> None:
    rows = _ROWS[_dialect()]
    statement = sql(f"INSERT INTO delivery_events (delivery_id, status, code, text, created_at) "
                    f"SELECT v.id, v.status, v.code, v.text, v.at FROM {rows}")
    for chunk in _chunks(history, _JSON_CHUNK):
        db.session.execute(statement, {"rows": json.dumps(chunk, separators=(",", ":"))})


def _update_letters(changes: list[dict], now: datetime) -> None:
    rows = _ROWS[_dialect()]
    statement = sql(f"UPDATE deliveries SET status = v.status, code = v.code, reply = v.text, updated_at = :now "
                    f"FROM {rows} WHERE deliveries.id = v.id").bindparams(bindparam("now", type_=DateTime()))
    for chunk in _chunks(changes, _JSON_CHUNK):
        db.session.execute(statement, {"rows": json.dumps(chunk, separators=(",", ":")), "now": now})


def apply_events(server: Server, events: list[dict], dropped: Counter | None = None) -> int:
    """Store events and move deliveries forward; returns how many deliveries changed. Events about
    letters the server was not given, and malformed ones, are counted in `dropped` and ignored."""
    dropped = Counter() if dropped is None else dropped
    tests = [e for e in events if _is_test_event(e)]
    if tests:  # a campaign's test letters: their own rows, no figure, no bounce judgement
        apply_test_events(server, [dict(e, text=reply_text(e.get("text"))) for e in tests])
        events = [e for e in events if not _is_test_event(e)]
    wanted = [e for e in events if _well_formed(e)]
    dropped["malformed items"] += len(events) - len(wanted)
    states = _current_states(server, [e["id"] for e in wanted])
    now = utcnow()
    history, changes, refusals = [], {}, []
    for event in wanted:
        delivery_id, status = event["id"], event["status"]
        if delivery_id not in states:
            dropped["events"] += 1  # not a letter this server was given
            continue
        code, text = event.get("code"), reply_text(event.get("text"))
        history.append({"id": delivery_id, "status": status, "code": code, "text": text,
                        "at": _as_stored(_event_time(event.get("at"), now))})
        if status == "failed" and (code or text):
            refusals.append((delivery_id, code, text))
        if states[delivery_id] in _REPLACES[status]:
            states[delivery_id] = status
            changes[delivery_id] = {"id": delivery_id, "status": status, "code": code, "text": text}
    if history:
        _insert_events(history)
    if changes:
        _update_letters(list(changes.values()), now)
    for delivery_id, code, text in refusals:  # what the refusing server said, judged like a bounce
        process_refusal(db.session.get(Delivery, delivery_id), code, text)
    return len(changes)


def _was_given(server: Server, delivery_id: int) -> bool:
    return db.session.scalar(select(Delivery.id).where(Delivery.id == delivery_id, given_to(server))) is not None


def store_bounces(server: Server, bounces: list[dict], dropped: Counter | None = None) -> None:
    """Keep each returned message (cut to agent_text.RAW_BYTES) and, for bounces, classify it as it
    came and apply it in the same transaction. A message answering a letter the server was not
    given, and a malformed one, is counted in `dropped` and not kept."""
    dropped = Counter() if dropped is None else dropped
    secret = current_app.config["SECRET_KEY"]
    for bounce in bounces:
        if not isinstance(bounce, dict):
            dropped["malformed items"] += 1
            continue
        kind, token, raw = bounce.get("kind") or "bounce", bounce.get("token") or None, bounce.get("raw", "")
        if kind not in MESSAGE_KINDS or not isinstance(token, (str, type(None))) or not isinstance(raw, str):
            dropped["malformed items"] += 1
            continue
        delivery_id = delivery_id_from_token(secret, token) if token else None
        if not is_row_id(delivery_id) or db.session.get(Delivery, delivery_id) is None:
            delivery_id = None  # no genuine token, or one of a letter deleted since: kept, applied to nobody
        elif not _was_given(server, delivery_id):
            dropped["messages"] += 1
            continue
        raw = storable(raw)
        message = BounceMessage(
            server_id=server.id,
            delivery_id=delivery_id,
            kind=kind,
            token=token[:100] if token else None,
            raw=raw_message(raw),
            received_at=utcnow(),
        )
        db.session.add(message)
        db.session.flush()
        process_bounce(message, raw)
        apply_unsubscribe_message(message)


def _say_dropped(server: Server, dropped: Counter) -> None:
    """One line in the log for what a report held that was not taken (nothing of it is kept)."""
    parts = []
    if dropped["events"] or dropped["messages"]:
        parts.append(f"{dropped['events']} events and {dropped['messages']} messages about letters it was not given")
    if dropped["malformed items"]:
        parts.append(f"{dropped['malformed items']} malformed items")
    if parts:
        log.warning("server %s (%s) reported %s: ignored", server.id, server.name, " and ".join(parts))


def _items(reply: object, name: str, limit: int) -> list:
    """The reply's list of events or bounces, refused whole if it is no list or a longer one than agents send."""
    if not isinstance(reply, dict):
        raise AgentError("the agent's outcomes reply is malformed: not an object")
    items = reply.get(name) or []
    if not isinstance(items, list):
        raise AgentError(f"the agent's outcomes reply is malformed: its {name} are not a list")
    if len(items) > limit:
        raise AgentError(f"the agent reported {len(items)} {name} in one reply; at most {limit} are taken, "
                         "so none was (check the agent's version)")
    return items


def _with_seq(items: list, dropped: Counter) -> list[dict]:
    """The items that carry a seq: one without cannot be acked, so it is not taken either."""
    taken = [item for item in items if isinstance(item, dict) and is_row_id(item.get("seq"))]
    dropped["malformed items"] += len(items) - len(taken)
    return taken


def _take_epoch(server: Server, reply: object) -> bool:
    """Note the epoch of the agent's queue; True if it changed. Another one than the ack counts in
    means the queue was made anew (a reinstall): the agent took our ack as nothing and answered
    from seq 1, so the ack starts again from 0. No epoch: an agent from before them, acks as they are."""
    epoch = reply.get("epoch") if isinstance(reply, dict) else None
    if epoch is None or epoch == server.outcome_epoch:
        return False
    if not isinstance(epoch, str) or not EPOCH.match(epoch):
        raise AgentError("the agent's outcomes reply is malformed: its epoch is not 1 to 64 letters, digits, '-' or '_'")
    if server.outcome_epoch is not None:
        lost = failover.release_lost(server)
        message = ("the agent's queue was replaced (reinstalled?): its outcomes are read from the start of the new "
                   f"queue; {lost} letters the old queue held and had not reported on went back to their campaigns")
        db.session.add(ServerEvent(server_id=server.id, kind="queue_replaced", message=message))
        log.warning("server %s (%s): %s (ack was %d)", server.id, server.name, message, server.outcome_ack)
        server.outcome_ack = 0
    server.outcome_epoch = epoch  # first heard (a new server, or one from before epochs): its ack stands
    return True


def collect_outcomes(client: AgentClient, server: Server) -> bool:
    """Fetch and apply events until the agent has no more; True if anything arrived."""
    arrived = False
    while True:
        request: dict[str, object] = {"ack": server.outcome_ack}
        if server.outcome_epoch is not None:
            request["epoch"] = server.outcome_epoch
        reply = client.call("/v1/outcomes", request)
        epoch_changed = _take_epoch(server, reply)
        dropped: Counter = Counter()
        events = _with_seq(_items(reply, "events", MAX_EVENTS_PER_REPORT), dropped)
        bounces = _with_seq(_items(reply, "bounces", MAX_BOUNCES_PER_REPORT), dropped)
        seqs = [item["seq"] for item in events + bounces]
        if not seqs:
            _say_dropped(server, dropped)
            if epoch_changed:
                db.session.commit()
            return arrived
        apply_events(server, events, dropped)
        store_bounces(server, bounces, dropped)
        _say_dropped(server, dropped)
        server.outcome_ack = max(server.outcome_ack, max(seqs))
        db.session.commit()
        arrived = True
        if not reply.get("more"):
            return arrived


def finish_campaigns() -> None:
    """A running campaign whose every letter has left the pipeline is finished.

    (First, bounce and unsubscribe messages stored but not yet applied — kept before an upgrade — are.)
    """
    if process_pending_bounces() + apply_pending_unsubscribe_messages():
        db.session.commit()
    # A deferred letter is still Exim's to retry: the campaign goes on until Exim delivers or gives up.
    # Read from the counts the triggers keep (one query for all running campaigns, not a scan each).
    waiting = [f"status:{status}" for status in ("pending", "queued", "sent", "deferred")]
    running = db.session.scalars(select(Campaign).where(Campaign.status == "running")).all()
    if running:
        busy = set(db.session.scalars(
            select(CampaignCount.campaign_id)
            .where(CampaignCount.campaign_id.in_([campaign.id for campaign in running]),
                   CampaignCount.name.in_(waiting), CampaignCount.n > 0)
            .distinct()
        ))
        for campaign in running:
            if campaign.id not in busy:
                campaign.status = "finished"
                campaign.finished_at = utcnow()
    db.session.commit()
