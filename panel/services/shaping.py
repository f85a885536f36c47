"""The agents' automatic backoff per (source IP, provider), as their pings report it (issue 9,
point 5; the agent side is worker_agent/backoff.py, the format docs/agent-protocol.md).

The last list is kept on the server (``servers.shaping``, JSON) for its page and the API; each
pair whose state differs from the last report is a ``shaping`` server event. A pair the agent
no longer lists (its sender restarted) is back at its limit. Bad entries are left out: an
agent's report must never break the daemon's round.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timezone
from typing import Any

from ..extensions import db
from ..models.server import Server, ServerEvent

log = logging.getLogger(__name__)

STATES = ("normal", "backing_off", "suspended")
LABELS = {"normal": "normal", "backing_off": "backing off", "suspended": "suspended"}
MAX_PAIRS = 1000
MAX_WHY = 300


def current(server: Server) -> list[dict[str, Any]]:
    """The pairs as last reported, in order of IP and provider."""
    try:
        pairs = json.loads(server.shaping or "[]")
    except ValueError:
        return []
    if not isinstance(pairs, list):
        return []
    for pair in pairs:  # for people: the time of the last change, UTC
        since = pair.get("since")
        pair["since_utc"] = (datetime.fromtimestamp(since, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                             if isinstance(since, (int, float)) and 0 < since < 1e11 else None)
    return pairs


def record(server: Server, reported: Any) -> int:
    """Keep a ping's ``shaping`` list; one event per pair whose state changed. Adds to the session; flushes
    itself nor commits: the caller does. Returns the number of events added."""
    if reported is None:
        return 0  # an agent from before backoff: nothing to say
    pairs = _valid(reported)
    if pairs is None:
        log.warning("server %s: ignoring a shaping report that is not a list", server.id)
        return 0
    before = {(p["source_ip"], p["provider"]): p for p in current(server)}
    after = {(p["source_ip"], p["provider"]): p for p in pairs}
    events = 0
    for key, pair in after.items():
        old = before.get(key)
        if old is None and pair["state"] == "normal":
            continue
        if old is None or old.get("state") != pair["state"]:
            db.session.add(ServerEvent(server_id=server.id, kind="shaping", message=_message(pair)))
            events += 1
    for key, old in before.items():
        if key not in after and old.get("state") != "normal":
            gone = {**old, "state": "normal", "factor": 1.0, "why": "the agent's sender restarted"}
            db.session.add(ServerEvent(server_id=server.id, kind="shaping", message=_message(gone)))
            events += 1
    text = json.dumps(sorted(after.values(), key=lambda p: (p["source_ip"], p["provider"])))
    if text != (server.shaping or "[]"):
        server.shaping = text
    return events


def _message(pair: dict[str, Any]) -> str:
    rate = f"{pair['factor'] * 100:.0f} % of its limit"
    if pair.get("per_minute") is not None:
        rate += f" ({pair['per_minute']:g} a minute)"
    why = f": {pair['why']}" if pair.get("why") and pair["state"] != "normal" else ""
    if pair["state"] == "normal" and pair.get("why") == "the agent's sender restarted":
        why = " (the agent's sender restarted)"
    return f"{pair['source_ip']} to {pair['provider']}: {LABELS[pair['state']]}, {rate}{why}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _valid(reported: Any) -> list[dict[str, Any]] | None:
    if not isinstance(reported, list):
        return None
    pairs = []
    for item in reported[:MAX_PAIRS]:
        if not isinstance(item, dict):
            continue
        ip, provider, state = item.get("source_ip"), item.get("provider"), item.get("state")
        factor = _number(item.get("factor"))
        if not (isinstance(ip, str) and 0 < len(ip) <= 45 and isinstance(provider, str) and 0 < len(provider) <= 253
                and state in STATES and factor is not None and 0 <= factor <= 1):
            continue
        why = item.get("why")
        per_minute = _number(item.get("per_minute"))
        pairs.append({"source_ip": ip, "provider": provider, "state": state, "factor": factor,
                      "per_minute": per_minute if per_minute is not None and per_minute >= 0 else None,
                      "why": why[:MAX_WHY] if isinstance(why, str) else None,
                      "since": _number(item.get("since")), "until": _number(item.get("until"))})
    return pairs
