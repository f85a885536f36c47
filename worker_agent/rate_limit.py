"""Token buckets per (source IP, recipient domain) and per (source IP, provider group): letters wait
by a due time, never a sleep.

A letter goes when every bucket it falls under has a token: its domain's (the ``rate_limits``
rules, per minute) and its provider group's (``provider_limits``, per minute and per hour; a
domain outside the provider table is its own group). A bucket that holds it back counts it in
its backlog, so the letters turned away in one round come back one by one at its pace. A letter
asked for with a ``key`` also needs a free slot of its pair's ``connections`` (connection_limit.py),
checked before any token is spent and taken with them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable

from .backoff import Backoff
from .connection_limit import FULL_WAIT, DeliverySlots
from .providers import ProviderLimit, ProviderResolver, limit_for


class _Window:
    """``rate`` tokens a second, at most ``capacity`` at once."""

    __slots__ = ("rate", "capacity", "tokens")

    def __init__(self, rate: float, capacity: float) -> None:
        self.rate, self.capacity, self.tokens = rate, capacity, capacity


def _minute_window(per_minute: float) -> _Window:
    # at most one second's worth (and at least one) at once: a minute never holds more than
    # the limit plus that second's worth
    return _Window(per_minute / 60.0, max(1.0, per_minute / 60.0))


def _hour_window(per_hour: float) -> _Window:
    # a minute's worth of the hourly average at once, and the rest spread over the hour, so
    # that no 60-minute span holds more than ``per_hour`` (for 2 or more an hour)
    capacity = max(1.0, per_hour / 60.0)
    return _Window(max(per_hour - capacity, per_hour / 2) / 3600.0, capacity)


class TokenBucket:
    """``per_minute`` letters a minute and/or ``per_hour`` an hour (None: no limit of that kind)."""

    __slots__ = ("windows", "updated", "backlog", "factor", "base")

    def __init__(self, per_minute: float | None, now: float, per_hour: float | None = None) -> None:
        self.windows = [w for w in (_minute_window(per_minute) if per_minute else None,
                                    _hour_window(per_hour) if per_hour else None) if w is not None]
        self.updated = now
        self.backlog = 0  # letters told to wait during the current claim round
        self.factor = 1.0  # share of the limit in force (backoff.py)
        self.base = [(w.rate, w.capacity) for w in self.windows]

    def scale(self, factor: float, now: float) -> None:
        """Run at ``factor`` times the limit (tokens earned so far at the old rate are kept)."""
        if factor == self.factor:
            return
        self.refill(now)
        self.factor = factor
        for w, (rate, capacity) in zip(self.windows, self.base):
            w.rate, w.capacity = rate * factor, max(1.0, capacity * factor)
            w.tokens = min(w.tokens, w.capacity)

    @property
    def rate(self) -> float:
        return min(w.rate for w in self.windows)

    @property
    def tokens(self) -> float:
        return min(w.tokens for w in self.windows)

    def refill(self, now: float) -> None:
        for w in self.windows:
            w.tokens = min(w.capacity, w.tokens + (now - self.updated) * w.rate)
        self.updated = now

    def ready(self) -> bool:
        return self.backlog == 0 and all(w.tokens >= 1.0 for w in self.windows)

    def spend(self) -> None:
        for w in self.windows:
            w.tokens -= 1.0

    def hold(self) -> float:
        """Count one more letter turned away this round; seconds until its turn."""
        self.backlog += 1
        return max(max((self.backlog - w.tokens) / w.rate for w in self.windows), 0.001)

    def take(self, now: float) -> float:
        """0.0 when a letter may go now (the token is spent); else seconds until it should retry.

        Letters turned away in one round get staggered due times, so they come back one
        by one at the bucket's pace instead of all at once.
        """
        self.refill(now)
        if self.ready():
            self.spend()
            return 0.0
        return self.hold()


class RateLimiter:
    """Buckets per (source IP, domain) from ``rate_for`` and per (source IP, provider group) from
    ``provider_limits``, the group given by ``resolver`` (no resolver: the domain is its group)."""

    def __init__(self, rate_for: Callable[[str, str], float | None], *, resolver: ProviderResolver | None = None,
                 provider_limits: Iterable[ProviderLimit] = (), backoff: Backoff | None = None,
                 slots: DeliverySlots | None = None) -> None:
        self._rate_for = rate_for
        self._backoff = backoff
        self.slots = slots or DeliverySlots()
        self._resolver = resolver
        self._provider_limits = tuple(provider_limits)
        self._buckets: dict[tuple[str, str], TokenBucket | None] = {}  # (ip, domain)
        self._groups: dict[tuple[str, str], TokenBucket | None] = {}  # (ip, provider group)

    def prepare(self, domains: Iterable[str]) -> None:
        """Look up the providers of a round's domains before their letters ask (in parallel)."""
        if self._resolver is not None and self._provider_limits:
            self._resolver.prefetch(domains)

    def group_of(self, domain: str) -> str:
        if self._resolver is None or not self._provider_limits:
            return domain
        return self._resolver.provider_now(domain)

    def known_group(self, domain: str) -> str:
        """The domain's group from the MX cache only (never waits: for Exim's log thread)."""
        if self._resolver is None or not self._provider_limits:
            return domain
        return self._resolver.provider_of_cached(domain)

    def per_minute(self, source_ip: str, group: str) -> float | None:
        """The pair's provider limit a minute (None: none), as the ping reports it with its backoff."""
        rule = limit_for(self._provider_limits, source_ip, group) if self._provider_limits else None
        return None if rule is None else rule.per_minute

    def connections(self, source_ip: str, group: str) -> int | None:
        """The pair's limit of concurrent connections (None: none)."""
        rule = limit_for(self._provider_limits, source_ip, group) if self._provider_limits else None
        return None if rule is None else rule.connections

    def per_connection(self, source_ip: str, domain: str) -> int | None:
        """The limit of letters per connection of this letter's pair (None: none)."""
        if not self._provider_limits:
            return None
        rule = limit_for(self._provider_limits, source_ip, self.group_of(domain))
        return None if rule is None else rule.per_connection

    def wait(self, source_ip: str, domain: str, now: float | None = None, key: Hashable = None) -> float:
        """Seconds this letter must wait (0.0: send it now). With a ``key`` (its delivery or Exim id) a
        letter that may go takes one of its pair's connection slots, freed by ``slots.free(key)``."""
        now = time.monotonic() if now is None else now
        group = self.group_of(domain)
        cap = self.connections(source_ip, group) if key is not None else None
        if cap is not None and self.slots.full((source_ip, group), cap):
            return FULL_WAIT  # no token spent: it asks again once a delivery may have ended
        group_bucket = self._group_bucket(source_ip, group, now)
        if self._backoff is not None:  # a pair the provider throttled: suspended, or a share of its limit
            factor, suspended = self._backoff.shape(source_ip, group)
            if suspended > 0:
                return suspended
            if group_bucket is not None:
                group_bucket.scale(factor, now)
        buckets = [b for b in (self._domain_bucket(source_ip, domain, now), group_bucket) if b is not None]
        for bucket in buckets:
            bucket.refill(now)
        blocked = [b for b in buckets if not b.ready()]
        if blocked:
            return max(b.hold() for b in blocked)
        for bucket in buckets:
            bucket.spend()
        if cap is not None:
            self.slots.take((source_ip, group), key)
        return 0.0

    def new_round(self) -> None:
        for buckets in (self._buckets, self._groups):
            for bucket in buckets.values():
                if bucket is not None:
                    bucket.backlog = 0

    def _domain_bucket(self, source_ip: str, domain: str, now: float) -> TokenBucket | None:
        key = (source_ip, domain)
        bucket = self._buckets.get(key, False)
        if bucket is False:
            rate = self._rate_for(source_ip, domain)
            bucket = self._buckets[key] = TokenBucket(rate, now) if rate else None
            if len(self._buckets) > 100_000:  # pairs without a limit are cheap to look up again
                self._buckets = {k: b for k, b in self._buckets.items() if b is not None}
        return bucket

    def _group_bucket(self, source_ip: str, group: str, now: float) -> TokenBucket | None:
        if not self._provider_limits:
            return None
        key = (source_ip, group)
        bucket = self._groups.get(key, False)
        if bucket is False:
            rule = limit_for(self._provider_limits, source_ip, group)
            limited = rule is not None and (rule.per_minute or rule.per_hour)
            bucket = self._groups[key] = TokenBucket(rule.per_minute, now, rule.per_hour) if limited else None
            if len(self._groups) > 100_000:
                self._groups = {k: b for k, b in self._groups.items() if b is not None}
        return bucket
