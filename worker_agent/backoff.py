"""Automatic backoff per (source IP, provider group), read from Exim's outcomes.

A throttling answer from a provider (421/450/451 with its rate-limit wording, or any enhanced
code 4.7.x) halves that pair's rate and suspends it for a cooling period; once cooled it is
"backing off" and each ``step_every`` seconds in which letters were delivered raise it by
``step`` (a share of its limit) until it is back at its limit ("normal"). More throttling
answers while suspended are the same burst of letters already in flight: they do not halve it
again. A throttle while backing off shows where the provider's own limit lies: the pair then
climbs back only to ``CEILING_SHARE`` of the rate it was throttled at and holds there until
``ceiling_hold`` seconds pass without a throttle (else it would probe the provider every few
minutes and run at half its rate in between: bench/shaping.py measured 31 a minute against a
provider taking 60). The limiter (rate_limit.py) asks ``shape`` for each letter; the sender reports
``states`` to the panel through the ping (docs/agent-protocol.md).

Thread-safe: Exim's log is read in its own thread, the limiter asks from the main thread.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

COOLING = 60.0  # s a throttled pair sends nothing
STEP = 0.1  # share of the limit given back per step
STEP_EVERY = 60.0  # s of deliveries without throttling per step
FLOOR = 0.05  # the rate never falls below this share of the limit (a pair must be able to recover)
CEILING_SHARE = 0.9  # a pair throttled while backing off climbs back to this share of that rate
CEILING_HOLD = 1800.0  # s without a throttle before it climbs past that again
MAX_WHY = 300  # characters of the provider's answer kept as the reason

_ENHANCED_47 = re.compile(r"(?<![\d.])4\.7\.\d{1,3}(?![\d.])")
_CODE = re.compile(r"(?<!\d)(4\d\d)[ -]")
_WORDING = re.compile(
    r"rate[ -]?limit|unusual rate|too many (?:connections|messages|recipients|concurrent)|throttl|TSS0\d"
    r"|temporarily deferred|exceeded .*(?:rate|quota)|sending rate|try again later",
    re.IGNORECASE)
_THROTTLE_CODES = (421, 450, 451, 452)


def is_throttling(code: int | None, text: str | None) -> bool:
    """A provider telling us to slow down: any enhanced code 4.7.x, or a 421/450/451/452 whose
    text says so in one of the big providers' wordings."""
    if not text:
        return False
    if _ENHANCED_47.search(text):
        return True
    if code is None and (m := _CODE.search(text)):
        code = int(m[1])
    return code in _THROTTLE_CODES and _WORDING.search(text) is not None


@dataclass
class _Pair:
    factor: float = 1.0
    state: str = "normal"  # normal | backing_off | suspended
    until: float = 0.0  # end of the suspension
    last_step: float = 0.0  # when the factor was last raised (or the suspension ended)
    since: float = 0.0  # when the state last changed
    why: str | None = None  # the answer that throttled it last
    ceiling: float = 1.0  # the step-ups stop here until ceiling_until
    ceiling_until: float = 0.0


class Backoff:
    def __init__(self, *, cooling: float = COOLING, step: float = STEP, step_every: float = STEP_EVERY,
                 floor: float = FLOOR, ceiling_hold: float = CEILING_HOLD,
                 clock: Callable[[], float] = time.time) -> None:
        self.cooling, self.step, self.step_every, self.floor = cooling, step, step_every, floor
        self.ceiling_hold = ceiling_hold
        self.clock = clock
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self._changes: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.version = 0  # bumped on every change of any pair (the sender writes states out then)

    def observe(self, source_ip: str, group: str, status: str, code: int | None, text: str | None) -> None:
        """One outcome Exim logged for a letter of this pair."""
        if status in ("deferred", "failed"):
            if is_throttling(code, text):
                self._throttle((source_ip, group), (text or "")[:MAX_WHY])
        elif status == "delivered":
            with self._lock:
                pair = self._pairs.get((source_ip, group))
                if pair is not None:
                    self._advance(source_ip, group, pair, self.clock(), delivered=True)

    def shape(self, source_ip: str, group: str) -> tuple[float, float]:
        """(share of the limit in force, seconds until the pair may send again)."""
        pair = self._pairs.get((source_ip, group))
        if pair is None:
            return 1.0, 0.0
        with self._lock:
            now = self.clock()
            self._advance(source_ip, group, pair, now, delivered=False)
            return pair.factor, max(pair.until - now, 0.0) if pair.state == "suspended" else 0.0

    def tick(self) -> None:
        """Let suspensions that have cooled end even when no letter of the pair asks."""
        with self._lock:
            now = self.clock()
            for (ip, group), pair in self._pairs.items():
                self._advance(ip, group, pair, now, delivered=False)

    def states(self) -> list[dict[str, Any]]:
        """Every pair that was ever throttled, as the ping reports it."""
        self.tick()
        with self._lock:
            return [self._report(ip, group, pair) for (ip, group), pair in sorted(self._pairs.items())]

    def drain_changes(self) -> list[dict[str, Any]]:
        with self._lock:
            changes, self._changes = self._changes, []
            return changes

    def _throttle(self, key: tuple[str, str], why: str) -> None:
        with self._lock:
            now = self.clock()
            pair = self._pairs.setdefault(key, _Pair())
            self._advance(key[0], key[1], pair, now, delivered=False)
            pair.why = why
            if pair.state == "suspended":
                return  # the rest of the burst that was already on its way
            if pair.state == "backing_off":  # throttled on the way back up: the provider's limit is below this
                pair.ceiling = max(self.floor, pair.factor * CEILING_SHARE)
                pair.ceiling_until = now + self.ceiling_hold
            pair.factor = max(self.floor, pair.factor / 2)
            pair.until = now + self.cooling
            self._set(key[0], key[1], pair, "suspended", now)

    def _advance(self, ip: str, group: str, pair: _Pair, now: float, *, delivered: bool) -> None:
        if pair.state == "suspended" and now >= pair.until:
            pair.last_step = pair.until
            self._set(ip, group, pair, "backing_off", now)
        if pair.state == "backing_off" and delivered and now - pair.last_step >= self.step_every:
            ceiling = pair.ceiling if now < pair.ceiling_until else 1.0
            factor = max(pair.factor, min(ceiling, pair.factor + self.step))
            pair.last_step = now
            if factor != pair.factor:  # held at the ceiling: nothing new to report
                pair.factor = factor
                self.version += 1
            if pair.factor >= 1.0 - 1e-9:
                pair.factor = 1.0
                self._set(ip, group, pair, "normal", now)

    def _set(self, ip: str, group: str, pair: _Pair, state: str, now: float) -> None:
        pair.state, pair.since = state, now
        self.version += 1
        self._changes.append(self._report(ip, group, pair))

    @staticmethod
    def _report(ip: str, group: str, pair: _Pair) -> dict[str, Any]:
        return {"source_ip": ip, "provider": group, "state": pair.state, "factor": round(pair.factor, 4),
                "why": pair.why, "since": pair.since,
                "until": pair.until if pair.state == "suspended" else None}
