"""Settling letters left 'submitting': their SMTP transaction with Exim started, and the sender
never learnt how it ended (it was killed, or the connection broke after DATA began). Exim may
hold such a letter or not; it is offered again only once it is certain that Exim does not.

For each letter, in order:
1. Exim is done with the connection that carried it: the Exim side of that connection (the
   sender's local port is recorded with the mark) is gone from /proc/net/tcp{,6}. Exim writes
   its "<=" line before it answers and closes, and drops a letter whose client vanished at the
   final dot, so after that nothing more can come for it. When those sockets cannot be seen
   (another network namespace, a remote smtp_host, Exim not listening) GRACE seconds stand in.
2. The log reader has read Exim's main log to its end after that moment: an arrival it found
   was taken over as 'sent' (exim_log.py).
3. Exim's queue is searched for the letter's Message-ID (Exim killed between spooling it and
   logging it): found -> 'sent' with that Exim id.
4. Not found, and the log read to its end once more after the search (a letter delivered and
   removed from the queue meanwhile is in the log): queued again, its attempt counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from .exim_log import EximLogReader
from .exim_spool import find_message_ids
from .queue import QueueDB
from .render import message_id_local

log = logging.getLogger("worker_agent.reconcile")

GRACE = 30.0  # s after the transaction began, when Exim's side of the connection cannot be seen
_LISTEN, _TIME_WAIT, _CLOSE = "0A", "06", "07"
STOPPED = "the sender stopped while submitting it and Exim never took it"


@dataclass(frozen=True)
class EximSockets:
    listening: bool  # Exim's listening socket is visible here
    peers: frozenset[int]  # remote ports of Exim's open connections


def exim_sockets(smtp_port: int) -> EximSockets | None:
    """What /proc/net/tcp and tcp6 show of the sockets on ``smtp_port``; None if unreadable."""
    listening, peers, seen = False, set(), False
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            fields = line.split()
            if len(fields) < 4:
                continue
            local, remote, state = fields[1], fields[2], fields[3]
            if int(local.rpartition(":")[2], 16) != smtp_port:
                continue
            if state == _LISTEN:
                listening = True
            elif state not in (_TIME_WAIT, _CLOSE):
                peers.add(int(remote.rpartition(":")[2], 16))
    return EximSockets(listening, frozenset(peers)) if seen else None


class Reconciler:
    """Run ``step`` now and then (the sender does every second); it never blocks for long."""

    def __init__(self, queue: QueueDB, reader: EximLogReader, spool: Path, smtp_port: int, max_attempts: int,
                 grace: float = GRACE) -> None:
        self.queue, self.reader, self.spool = queue, reader, spool
        self.smtp_port, self.max_attempts, self.grace = smtp_port, max_attempts, grace
        self._done_at: dict[int, float] = {}  # id -> when Exim was seen done with its connection
        self._searched_at: dict[int, float] = {}  # id -> when the queue search did not find it
        self._retry: dict[int, tuple[float, str]] = {}  # id -> (not_before, why) for a broken connection
        self._pending = 0
        self._spool_error: str | None = None

    def pending(self) -> int:
        """Letters waiting to be settled at the last step."""
        return self._pending

    def retry_later(self, delivery_id: int, not_before: float, why: str) -> None:
        """The connection broke after DATA began: if Exim does not have it, retry at ``not_before``."""
        self._retry[delivery_id] = (not_before, why)

    def step(self, in_flight: Collection[int] = (), live_ports: Collection[int] = ()) -> None:
        """``in_flight``: letters the sender's SMTP threads still hold; ``live_ports``: the local
        ports of the sender's own open connections (a port a dead connection had may be reused)."""
        rows = [r for r in self.queue.submitting() if r[0] not in in_flight]
        self._pending = len(rows)
        ids = {r[0] for r in rows}
        for d in (self._done_at, self._searched_at, self._retry):
            for gone in [i for i in d if i not in ids]:
                del d[gone]
        if not rows:
            return
        sockets = exim_sockets(self.smtp_port)
        seen = time.time()  # after looking: a "<=" line of a connection seen closed was written before
        for delivery_id, _token, started, port, _attempts in rows:
            if delivery_id not in self._done_at and self._exim_done(sockets, port, started, seen, live_ports):
                self._done_at[delivery_id] = seen
        caught_up = self.reader.caught_up
        to_search = [r for r in rows
                     if r[0] not in self._searched_at and self._done_at.get(r[0], caught_up) < caught_up]
        found: list[tuple[int, str, str]] = []
        if to_search:
            wanted = {message_id_local(i, token): i for i, token, *_ in to_search}
            try:
                in_queue = find_message_ids(self.spool, wanted, min(r[2] or 0.0 for r in to_search))
            except OSError as exc:
                problem = (f"cannot read Exim's queue in {self.spool}: {exc}; "
                           f"{len(to_search)} letters wait (set exim_spool)")
                if problem != self._spool_error:
                    log.error("%s", problem)
                    self._spool_error = problem
                return
            searched = time.time()
            for delivery_id in wanted.values():
                if delivery_id in in_queue:
                    exim_id = in_queue[delivery_id]
                    found.append((delivery_id, exim_id, f"accepted by Exim as {exim_id} (found in its queue)"))
                else:
                    self._searched_at[delivery_id] = searched
        requeue = [(i, *self._retry.get(i, (time.time(), STOPPED))) for i, *_ in rows
                   if self._searched_at.get(i, caught_up) < caught_up]
        if found or requeue:
            self.queue.settle_submitting(found=found, requeue=requeue, max_attempts=self.max_attempts)
            log.info("reconciled letters whose submission was cut short: %d found in Exim, %d queued again",
                     len(found), len(requeue))

    def _exim_done(self, sockets: EximSockets | None, port: int | None, started: float | None, now: float,
                   live_ports: Collection[int]) -> bool:
        if port in live_ports:
            return True  # our own new connection has that port: the old one is long closed
        if sockets is None or port is None or (not sockets.listening and port not in sockets.peers):
            return now - (started or 0.0) >= self.grace  # Exim's side cannot be seen here
        return port not in sockets.peers
