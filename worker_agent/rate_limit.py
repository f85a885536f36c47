"""Token buckets per (source IP, recipient domain): letters wait by a due time, never a sleep."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``per_minute`` letters a minute, at most one second's worth (and at least one) at once."""

    __slots__ = ("rate", "capacity", "tokens", "updated", "backlog")

    def __init__(self, per_minute: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.tokens = self.capacity
        self.updated = now
        self.backlog = 0  # letters told to wait during the current claim round

    def take(self, now: float) -> float:
        """0.0 when a letter may go now (the token is spent); else seconds until it should retry.

        Letters turned away in one round get staggered due times, so they come back one
        by one at the bucket's pace instead of all at once.
        """
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0 and self.backlog == 0:
            self.tokens -= 1.0
            return 0.0
        self.backlog += 1
        return (1.0 - self.tokens + self.backlog - 1) / self.rate


class RateLimiter:
    def __init__(self, rate_for: Callable[[str, str], float | None]) -> None:
        self._rate_for = rate_for
        self._buckets: dict[tuple[str, str], TokenBucket | None] = {}

    def wait(self, source_ip: str, domain: str, now: float | None = None) -> float:
        """Seconds this letter must wait (0.0: send it now)."""
        key = (source_ip, domain)
        bucket = self._buckets.get(key, False)
        if bucket is False:
            rate = self._rate_for(source_ip, domain)
            now = time.monotonic() if now is None else now
            bucket = self._buckets[key] = TokenBucket(rate, now) if rate else None
            if len(self._buckets) > 100_000:  # pairs without a limit are cheap to look up again
                self._buckets = {k: b for k, b in self._buckets.items() if b is not None}
        if bucket is None:
            return 0.0
        return bucket.take(time.monotonic() if now is None else now)

    def new_round(self) -> None:
        for bucket in self._buckets.values():
            if bucket is not None:
                bucket.backlog = 0
