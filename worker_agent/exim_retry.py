"""Exim's deferred letters retried through the agent's limits (docs/shaping.md).

Exim keeps every letter it accepted, but its retry rule never retries before giving up (the
worker's Exim config), so nothing replays a backlog at once behind the limiter's back. Every few
seconds this looks at Exim's queue (its spool's ``input/*-H`` files): a message that is one of our
letters and has waited its turn (``delays`` after its last attempt, or after its arrival when we
do not know of one) asks the limiter for a token of its (source IP, provider) pair — shared with
new letters, and none while the pair is suspended — and is then tried with ``exim -M <id>``.

Exactly once: nothing here takes a letter out of Exim's queue; ``-M`` on a message already gone
does nothing, and Exim locks a message while delivering it, so a forced attempt never races
another into a second delivery. Nothing needs to survive a crash: the spool is the truth, and a
restarted sender at worst tries a message sooner than planned, still within the limits.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .config import EximRetries
from .exim_spool import arrival_time
from .queue import QueueDB
from .rate_limit import RateLimiter

log = logging.getLogger("worker_agent.exim_retry")

SCAN_EVERY = 2.0  # s between looks at Exim's queue
_HEADER_FILE = re.compile(r"^([0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4})-H$")


def queued_ids(spool: Path) -> list[str]:
    """Exim ids of the messages in Exim's queue (split_spool_directory or not)."""
    root = spool / "input"
    try:
        folders = [root] + [root / name for name in os.listdir(root) if len(name) == 1]
    except FileNotFoundError:
        return []
    ids = []
    for folder in folders:
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        ids.extend(m[1] for name in names if (m := _HEADER_FILE.match(name)))
    return ids


class RetryDriver:
    def __init__(self, queue: QueueDB, spool: Path, settings: EximRetries,
                 clock: Callable[[], float] = time.time) -> None:
        self.queue, self.spool, self.settings, self.clock = queue, spool, settings, clock
        self._tries: dict[str, tuple[float, int]] = {}  # exim id -> (last attempt, attempts); main thread
        self._deferred: list[tuple[str, float]] = []  # from the log thread, taken by the main thread
        self._running: list[subprocess.Popen[bytes]] = []
        self._next_scan = 0.0
        self._candidates: list[tuple[str, str, str]] = []  # due at the last scan, not yet forced

    def deferred(self, exim_ids: Iterable[str]) -> None:
        """Exim logged a failed attempt of these messages (called from the log thread)."""
        now = self.clock()
        self._deferred.extend((exim_id, now) for exim_id in exim_ids)  # list.extend: atomic enough

    def step(self, limiter: RateLimiter) -> int:
        """Force the messages whose turn has come and whose pair has a token; how many."""
        self._running = [p for p in self._running if p.poll() is None]
        pending, self._deferred = self._deferred, []
        for exim_id, at in pending:
            self._tries[exim_id] = (at, self._tries.get(exim_id, (at, 0))[1] + 1)
        now = self.clock()
        if now >= self._next_scan:
            self._next_scan = now + SCAN_EVERY
            in_queue = queued_ids(self.spool)
            queued = set(in_queue)
            self._tries = {i: t for i, t in self._tries.items() if i in queued}  # the rest were delivered or given up
            self._candidates = self._letters([i for i in in_queue if now >= self._due(i)])
        forced = 0
        limiter.new_round()  # its hold counts start again, as for a round of new letters
        waiting = []
        for row in self._candidates:
            exim_id, source_ip, email = row
            if len(self._running) >= self.settings.parallel or limiter.wait(  # a forced retry holds a connection
                    source_ip, email.rpartition("@")[2].lower(), key=exim_id) > 0:
                waiting.append(row)
                continue
            self._tries[exim_id] = (now, self._tries.get(exim_id, (now, 1))[1])
            try:
                self._running.append(subprocess.Popen([*self.settings.command, "-M", exim_id],
                                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                      stderr=subprocess.DEVNULL))
            except OSError as exc:
                log.error("cannot run %s: %s", self.settings.command[0], exc)
                waiting.append(row)
                continue
            forced += 1
        self._candidates = waiting
        return forced

    def stop(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        for p in self._running:
            try:
                p.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass  # Exim finishes the delivery on its own; we only stop waiting

    def _due(self, exim_id: str) -> float:
        last, attempts = self._tries.get(exim_id, (float(arrival_time(exim_id) or 0), 1))
        delays = self.settings.delays
        return last + delays[min(attempts, len(delays)) - 1]

    def _letters(self, exim_ids: list[str]) -> list[tuple[str, str, str]]:
        """(exim id, source IP, email) of those that are our letters, oldest first."""
        found: list[tuple[str, str, str]] = []
        conn = self.queue.conn()
        for start in range(0, len(exim_ids), 500):
            chunk = exim_ids[start:start + 500]
            found.extend(conn.execute(
                f"SELECT exim_id, source_ip, email FROM letters WHERE exim_id IN ({','.join('?' * len(chunk))})",
                chunk).fetchall())
        return sorted(found, key=lambda row: self._due(row[0]))
