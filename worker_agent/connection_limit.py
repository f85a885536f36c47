"""Concurrent connections per (source IP, provider group): at most ``connections`` of a pair's letters
in Exim's hands at once.

Exim delivers each letter the agent hands it at once, in a delivery process of its own that opens
one connection from the letter's source IP to the provider's MX (and passes it on only to letters
already waiting for that host). So the letters of a pair handed over whose outcome Exim has not
logged yet bound the connections that pair holds at the provider: a letter takes a slot when it is
given to Exim (or forced by the retry driver) and frees it when Exim logs its delivery, deferral or
failure, or when the submission did not hand it over. Exim's per-IP transports cannot be limited
per provider (``max_parallel`` counts per transport and defers over the limit, and Exim 4.96 does
not expand ``connection_max_messages``), hence the count here.

Letters per connection (``per_connection``): Exim sends one letter per connection as the agent hands
them over, but passes a connection on to letters already waiting for the same host (a backlog after
deferrals, a queue run), up to the transport's ``connection_max_messages``. Each source IP has a
transport per class of that number (the Exim role's template); the agent names the class of the
letter's pair, its limit rounded down to one of ``PER_CONNECTION_CLASSES``, in the header
``X-Mailfleet-Per-Connection`` (removed before the letter leaves), so no connection carries more.

A slot whose outcome never came (a log line missed, a letter left 'unknown') is freed after
``SLOT_TTL``: longer than Exim's own SMTP timeouts give one delivery.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import replace

from .render import Letter

SLOT_TTL = 330.0  # s: Exim's 5 min data timeout, and a little more
FULL_WAIT = 0.25  # s a letter of a full pair waits before it asks again
# The same list as the Exim role's template (ansible/roles/exim/templates/etc/exim4/exim4.conf.j2).
# Each class is one more transport per source IP, which every Exim delivery process parses: few
# classes, covering the defaults (5, 20, 50, 100); a limit between two is rounded down.
PER_CONNECTION_CLASSES = (1, 2, 5, 10, 20, 50, 100)


EXIM_DEFAULT_PER_CONNECTION = 500  # connection_max_messages of a transport that sets none


def per_connection_class(limit: int) -> int | None:
    """The largest class not above the limit; None from Exim's own default up (the plain transport)."""
    if limit >= EXIM_DEFAULT_PER_CONNECTION:
        return None
    return max(c for c in PER_CONNECTION_CLASSES if c <= limit)


def tag_per_connection(letter: Letter, limit: int | None) -> Letter:
    """The letter with the header that picks its source IP's transport of that class."""
    if limit is None or (n := per_connection_class(limit)) is None:
        return letter
    return replace(letter, data=b"X-Mailfleet-Per-Connection: %d\r\n" % n + letter.data)


class DeliverySlots:
    """Letters in Exim's hands per pair; shared by the sender's main thread and Exim's log thread."""

    def __init__(self, ttl: float = SLOT_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._lock = threading.Lock()
        self._pairs: dict[tuple[str, str], dict[Hashable, float]] = {}  # pair -> key -> since
        self._pair_of: dict[Hashable, tuple[str, str]] = {}

    def held(self, pair: tuple[str, str]) -> int:
        with self._lock:
            return len(self._expire(pair))

    def full(self, pair: tuple[str, str], cap: int) -> bool:
        return self.held(pair) >= cap

    def take(self, pair: tuple[str, str], key: Hashable) -> None:
        with self._lock:
            self._pairs.setdefault(pair, {})[key] = self.clock()
            self._pair_of[key] = pair

    def free(self, *keys: Hashable) -> None:
        """The letter (by any of its keys: delivery id, Exim id) is out of Exim's hands; unknown keys are ignored."""
        with self._lock:
            for key in keys:
                pair = self._pair_of.pop(key, None)
                if pair is not None:
                    held = self._pairs.get(pair)
                    if held is not None:
                        held.pop(key, None)
                        if not held:
                            del self._pairs[pair]

    def _expire(self, pair: tuple[str, str]) -> dict[Hashable, float]:
        held = self._pairs.get(pair, {})
        old = self.clock() - self.ttl
        for key in [k for k, since in held.items() if since < old]:
            del held[key]
            self._pair_of.pop(key, None)
        return held
