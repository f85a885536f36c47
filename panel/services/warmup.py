"""IP warm-up (issue 9, point 6): a source IP put on a schedule of letters a day per mailbox
provider, rising day by day; the agent holds what a day does not allow (worker_agent/warmup.py).

The panel keeps when each warming IP's day 1 began and its schedule (none: the default one shipped
with the agent), pushes both in the agent's config (``warmup``, docs/agent-protocol.md) and keeps
the agent's last report of what each provider got today (``servers.warmup``, JSON) for the server
page and the API. A change bumps the server's config version. A "day" is ``WARMUP_DAY_SECONDS``
long (86400; tests and benchmarks compress it).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from flask import current_app

from worker_agent.providers import BUILTIN_PROVIDERS
from worker_agent.warmup import ANY, MAX_PER_DAY, WarmupError, default_schedule, parse_schedule, steps_json

from ..extensions import db
from ..models import Server, ServerIP
from .server_config import bump
from .servers import HOSTNAME_RE, ServerError

log = logging.getLogger(__name__)

MAX_REPORTED = 1000  # providers kept of one agent report


def _provider_ok(name: str) -> bool:
    return name in BUILTIN_PROVIDERS or ("." in name and HOSTNAME_RE.fullmatch(name) is not None)


def check_schedule(value: Any, where: str = "schedule") -> list[dict[str, Any]]:
    """A schedule as the API takes it (steps ``{"day", "limits"}``), checked as the agent will."""
    try:
        return steps_json(parse_schedule(value, where, _provider_ok))
    except WarmupError as exc:
        known = f" (providers: {', '.join(sorted(BUILTIN_PROVIDERS))}, a domain, or *)" if "neither" in str(exc) else ""
        raise ServerError(f"{exc}{known}") from None


_LINE = re.compile(r"^\s*(?:day\s*)?(\d+)\s*:\s*(.+?)\s*$", re.IGNORECASE)
_ITEM = re.compile(r"^(?:([*a-z0-9.-]+)\s*[ =]\s*)?(\d+)$", re.IGNORECASE)


def parse_schedule_text(text: str) -> list[dict[str, Any]] | None:
    """The page's form: one step a line, ``<day>: <letters>[, <provider> <letters>]…`` (a bare number
    is every provider's); empty: the default schedule (None)."""
    steps, lines = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _LINE.match(line)
        if match is None:
            raise ServerError(f"line {n}: {line.strip()!r} is not “<day>: <letters>, <provider> <letters>…” "
                              "(e.g. “1: 50, google 20”)")
        limits: dict[str, int] = {}
        for item in match[2].split(","):
            part = _ITEM.match(item.strip())
            if part is None:
                raise ServerError(f"line {n}: {item.strip()!r} is not “<letters>” or “<provider> <letters>” "
                                  "(e.g. “google 20”)")
            limits[(part[1] or ANY).lower()] = int(part[2]) if len(part[2]) <= 10 else MAX_PER_DAY + 1
        steps.append({"day": int(match[1][:4]), "limits": limits})
        lines.append(n)
    if not steps:
        return None
    try:
        return check_schedule(steps)
    except ServerError as exc:  # say it with the page's line numbers, not the list's
        raise ServerError(re.sub(r"schedule\[(\d+)\](?:\.(\w+))?",
                                 lambda m: f"line {lines[int(m[1])]}" + (f", {m[2]}" if m[2] else ""), str(exc))) from None


def schedule_text(steps: list[dict[str, Any]]) -> str:
    def limits(step: dict[str, Any]) -> str:
        items = sorted(step["limits"].items(), key=lambda kv: (kv[0] != ANY, kv[0]))
        return ", ".join(str(n) if name == ANY else f"{name} {n}" for name, n in items)
    return "".join(f"{step['day']}: {limits(step)}\n" for step in steps)


def schedule_of(ip: ServerIP) -> list[dict[str, Any]]:
    return default_schedule() if ip.warmup_schedule is None else json.loads(ip.warmup_schedule)


def day_seconds() -> int:
    return int(current_app.config["WARMUP_DAY_SECONDS"])


def _timestamp(start: datetime) -> float:
    return start.replace(tzinfo=timezone.utc).timestamp()


def day_of(ip: ServerIP, now: float | None = None) -> int | None:
    """The IP's day of warm-up (1 from its start), None when it is not warming up."""
    if ip.warmup_start is None:
        return None
    now = datetime.now(timezone.utc).timestamp() if now is None else now
    return max(0, math.floor((now - _timestamp(ip.warmup_start)) / day_seconds())) + 1


@dataclass(frozen=True)
class WarmupInput:
    enabled: bool | None = None  # None: as it is
    start: datetime | None = None  # None: now when enabled, else as it is
    schedule: list[dict[str, Any]] | None = None  # None with default=True: the default one
    default: bool = False


def set_warmup(server: Server, ip: ServerIP, change: WarmupInput) -> bool:
    """Apply a (checked) change to one IP; bumps the config version if the agent's plan changed."""
    enabled = (ip.warmup_start is not None) if change.enabled is None else change.enabled
    start = None
    if enabled:
        start = change.start or ip.warmup_start or datetime.now(timezone.utc).replace(tzinfo=None, microsecond=0)
    if change.default:
        schedule = None
    elif change.schedule is not None:
        schedule = json.dumps(change.schedule)
    else:
        schedule = ip.warmup_schedule
    changed = (start, schedule) != (ip.warmup_start, ip.warmup_schedule)
    ip.warmup_start, ip.warmup_schedule = start, schedule
    if changed:
        bump(server)
    db.session.flush()
    return changed


def parse_start(value: Any, where: str) -> datetime:
    """``YYYY-MM-DD`` (midnight UTC) or an ISO time (UTC when it has no zone)."""
    if not isinstance(value, str):
        raise ServerError(f"{where} must be a date (YYYY-MM-DD) or an ISO time, not {value!r}")
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ServerError(f"{where}: {value!r} is not a date (YYYY-MM-DD) or an ISO time") from None
    if when.tzinfo is not None:
        when = when.astimezone(timezone.utc).replace(tzinfo=None)
    if not 2000 <= when.year <= 9999:
        raise ServerError(f"{where}: {value!r} is out of range")
    return when.replace(microsecond=0)


def replace_warmup(server: Server, ips: Any) -> bool:
    """``{"<ip>": {"enabled"?, "start"?, "schedule"?}}`` (the JSON API): every item is checked before
    anything changes; IPs and fields left out keep theirs; ``"schedule": null`` is the default one."""
    if not isinstance(ips, dict):
        raise ServerError('ips must be an object {"<source IP>": {"enabled": true, "start": "YYYY-MM-DD", '
                          '"schedule": [{"day": 1, "limits": {"*": 50}}] or null}}')
    by_ip = {ip.ip: ip for ip in server.ips}
    changes: list[tuple[ServerIP, WarmupInput]] = []
    for name, item in ips.items():
        ip = by_ip.get(name) if isinstance(name, str) else None
        if ip is None:
            raise ServerError(f"ips: {name!r} is not a source IP of this server (its IPs: {', '.join(by_ip)})")
        where = f"ips[{name}]"
        if not isinstance(item, dict):
            raise ServerError(f'{where} must be an object {{"enabled", "start", "schedule"}}')
        unknown = sorted(set(item) - {"enabled", "start", "schedule"})
        if unknown:
            raise ServerError(f"{where}: unknown field(s) {', '.join(map(str, unknown))} "
                              "(give enabled, start and/or schedule)")
        enabled = item.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise ServerError(f"{where}.enabled must be true or false")
        start = parse_start(item["start"], f"{where}.start") if item.get("start") is not None else None
        default = "schedule" in item and item["schedule"] is None
        schedule = None if default or "schedule" not in item else check_schedule(item["schedule"], f"{where}.schedule")
        changes.append((ip, WarmupInput(enabled, start, schedule, default)))
    changed = False
    for ip, change in changes:
        changed |= set_warmup(server, ip, change)
    return changed


def settings_json(server: Server) -> dict[str, Any]:
    """What the API shows and takes."""
    result = {}
    for ip in server.ips:
        day = day_of(ip)
        result[ip.ip] = {
            "enabled": ip.warmup_start is not None,
            "start": ip.warmup_start.strftime("%Y-%m-%dT%H:%M:%SZ") if ip.warmup_start else None,
            "schedule": None if ip.warmup_schedule is None else json.loads(ip.warmup_schedule),
            "day": day, "days": schedule_of(ip)[-1]["day"] if day is not None else None,
        }
    return {"ips": result}


def agent_settings(server: Server) -> dict[str, Any]:
    """The ``warmup`` of the agent's config: one plan per warming IP (left out when none is: the
    agent then caps nothing, as an agent from before warm-up expects)."""
    plans = [{"source_ip": ip.ip, "start": _timestamp(ip.warmup_start), "day_seconds": day_seconds(),
              "schedule": schedule_of(ip)} for ip in server.ips if ip.warmup_start is not None]
    return {"warmup": plans} if plans else {}


def record(server: Server, reported: Any) -> None:
    """Keep a ping's ``warmup`` list (bad entries left out: a report never breaks the daemon's round)."""
    if reported is None:
        return  # an agent from before warm-up
    if not isinstance(reported, list):
        log.warning("server %s: ignoring a warm-up report that is not a list", server.id)
        return
    items = [item for item in (_valid(entry) for entry in reported[:100]) if item is not None]
    text = json.dumps(items)
    if text != (server.warmup or "[]"):
        server.warmup = text


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53 else None


def _valid(entry: Any) -> dict[str, Any] | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("source_ip"), str) or _count(entry.get("day")) is None:
        return None
    providers = []
    for p in entry.get("providers") or []:
        if not isinstance(p, dict) or not isinstance(p.get("provider"), str) or len(p["provider"]) > 253:
            continue
        sent, limit = _count(p.get("sent")), _count(p.get("limit"))
        if sent is not None:
            providers.append({"provider": p["provider"], "limit": limit, "sent": sent})
    return {"source_ip": entry["source_ip"][:45], "day": entry["day"], "providers": providers[:MAX_REPORTED],
            "default": _count(entry.get("default")), "held": _count(entry.get("held")) or 0}


def current(server: Server) -> list[dict[str, Any]]:
    """Each warming IP: its day of how many, and per provider the letters sent, allowed and left
    today (from the agent's last report for the same day; nothing sent yet when it has none)."""
    try:
        reported = {item["source_ip"]: item for item in json.loads(server.warmup or "[]")}
    except (ValueError, TypeError, KeyError):
        reported = {}
    result = []
    for ip in server.ips:
        day = day_of(ip)
        if day is None:
            continue
        steps = schedule_of(ip)
        days = steps[-1]["day"]
        limits = next((s["limits"] for s in reversed(steps) if s["day"] <= day), {}) if day <= days else None
        report = reported.get(ip.ip)
        sent = ({p["provider"]: p["sent"] for p in report["providers"]}
                if report is not None and report["day"] == day else {})
        providers = []
        if limits is not None:
            for name in sorted({*(n for n in limits if n != ANY), *sent}):
                limit = limits.get(name, limits.get(ANY))
                providers.append({"provider": name, "limit": limit, "sent": sent.get(name, 0),
                                  "left": None if limit is None else max(limit - sent.get(name, 0), 0)})
        result.append({"source_ip": ip.ip, "day": day, "days": days, "warm": limits is None,
                       "default": None if limits is None else limits.get(ANY), "providers": providers,
                       "start": ip.warmup_start.strftime("%Y-%m-%d %H:%M"), "reported": report is not None
                       and report["day"] == day,
                       "held": report.get("held", 0) if report is not None and report["day"] == day else 0})
    return result


def used_up(server: Server) -> set[str]:
    """Warming IPs whose agent holds letters for the next day (a provider's allowance of today is
    used up): the daemon gives them no new letters until it reports none held (daemon/dispatch.py).
    Coarse: the panel does not know the recipients' providers, so other providers' room that day
    goes unused rather than more letters waiting on the agent, filling the server's window."""
    if not any(ip.warmup_start is not None for ip in server.ips):
        return set()  # the common case, asked for every batch a server takes
    return {item["source_ip"] for item in current(server) if item["reported"] and not item["warm"] and item["held"]}
