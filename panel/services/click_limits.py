"""Rate limits on the tracking links (`/c/`, `/o/`, `/u/`) per client address.

Two kinds of visitor share one address: an office (hundreds of people behind one NAT, all clicking
when a campaign lands) and someone guessing tokens. So:

- a refused token (forged, altered, on another tenant's host, for a letter gone) spends from the
  address's small budget for refused tokens; once it is spent the answer is 429, not 404;
- a genuine click or open spends from the address's generous budget and is counted; beyond it the
  visitor is still redirected (never lost) and the click still counted while that letter's own
  repeats from the address stay few (a person clicks a letter's links a few times, a script
  replaying one token thousands of times does not add thousands of clicks);
- a genuine unsubscribe link is never held back (it changes nothing when repeated).

An IPv6 address counts by its /64 (one subscriber's network). The client address is REMOTE_ADDR
(gunicorn serves the panel directly; behind a reverse proxy, let werkzeug's ProxyFix set it from
the proxy's header), as for login throttling (services/login_throttle.py).

The budgets live in each gunicorn worker's memory, not in the database: a shared bucket would cost
a write per click on the hot path (bench/clicks.py), and a lock-step count is not needed here. So
with N workers an address gets up to N times each budget; the figures in panel/config.py are per
worker. Each budget is a GCRA (one float per key: when its bucket is full again); the tables are
bounded: past MAX_KEYS, keys whose bucket is full again are dropped, and if that frees too little
the table starts afresh (forgetting is lenient, never a refusal of a genuine visitor).
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Hashable

MAX_KEYS = 100_000


class Budget:
    """`size` actions per key, spent at once or spread out, refilled evenly over `window` seconds (GCRA)."""

    __slots__ = ("interval", "tolerance", "_full_at", "_lock")

    def __init__(self, size: float, window: float) -> None:
        self.interval = window / size if size > 0 else float("inf")
        self.tolerance = self.interval * (max(size, 1.0) - 1.0) if size > 0 else -1.0  # 0: nothing allowed
        self._full_at: dict[Hashable, float] = {}
        self._lock = threading.Lock()

    def take(self, key: Hashable, now: float | None = None) -> bool:
        """Spend one action of the key's budget; False (nothing spent) if none is left."""
        moment = time.monotonic() if now is None else now
        with self._lock:
            due = max(self._full_at.get(key, moment), moment)
            if due - moment > self.tolerance:
                return False
            if len(self._full_at) >= MAX_KEYS and key not in self._full_at:
                self._prune(moment)
            self._full_at[key] = due + self.interval
            return True

    def _prune(self, moment: float) -> None:
        for key in [key for key, due in self._full_at.items() if due <= moment]:
            del self._full_at[key]
        if len(self._full_at) >= MAX_KEYS * 9 // 10:
            self._full_at.clear()


def client_key(address: str | None) -> str:
    """The address a budget belongs to: IPv4 as it is, IPv6 by its /64."""
    if not address or ":" not in address:
        return address or "-"
    try:
        return str(ipaddress.IPv6Network((address.split("%", 1)[0], 64), strict=False).network_address)
    except ValueError:
        return address


class ClickLimits:
    """One app's budgets (panel/config.py: TRACKING_FORGED_PER_MINUTE, TRACKING_CLICKS_PER_MINUTE,
    TRACKING_REPEATS_PER_LETTER)."""

    def __init__(self, forged_per_minute: float, clicks_per_minute: float, repeats_per_letter: float) -> None:
        self.refused_tokens = Budget(forged_per_minute, 60.0)
        self.genuine = Budget(clicks_per_minute, 60.0)
        self.repeats = Budget(repeats_per_letter, 3600.0)  # one letter's clicks and opens from the address

    def refused(self, address: str | None) -> bool:
        """Note a refused token from the address; True when it has refused too many: answer 429."""
        return not self.refused_tokens.take(client_key(address))

    def counts(self, address: str | None, delivery_id: int) -> bool:
        """Whether a genuine click or open from the address is counted (it is answered anyway)."""
        key, now = client_key(address), time.monotonic()
        return self.genuine.take(key, now) or self.repeats.take((key, delivery_id), now)
