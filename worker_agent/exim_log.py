"""Following Exim's main log and turning its lines into delivery events.

Exim writes one line per delivery attempt (``=>`` delivered, ``==`` deferred, ``**``
failed) keyed by its queue id. The sender learns that id from the DATA reply; the
arrival line (``<= bounce+<token>@…``) also names our VERP token, which covers the
moment before the sender has recorded the id, and a letter whose submission looked lost
(connection dropped after DATA) although Exim took it. Lines for other messages are
ignored. The read position (inode + offset) is committed together with the events it
produced, so after a restart reading goes on exactly where it stopped. Each event carries
the time on its line: Exim's local time, with its UTC offset when ``log_timezone`` is set
(as the role's config does), else read in this host's zone.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Callable

from .queue import Event, QueueDB

log = logging.getLogger("worker_agent.exim_log")

POSITION_KEY = "exim_log_position"
READ_CHUNK = 1 << 20  # bytes per read: memory stays flat however far behind the reader is
CLAIM_WAIT = 10.0  # s to let the sender record a letter Exim has logged before the reader records it

# "2026-11-28 00:30:24 [pid] 1tGxyz-000abc-De => rest"; [pid] and a zone only with some log_selector settings
_LINE = re.compile(
    r"^(?P<when>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?P<fraction>\.\d+)?(?: (?P<zone>[+-]\d{4}))?(?: \[\d+\])? "
    r"(?P<id>[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}) (?P<flag><=|=>|->|==|\*\*) (?P<rest>.*)$"
)
# "… 1tGxyz-000abc-De Completed": the message has left Exim's queue
_COMPLETED = re.compile(
    r"^(?P<when>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?P<fraction>\.\d+)?(?: (?P<zone>[+-]\d{4}))?(?: \[\d+\])? "
    r"(?P<id>[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}) Completed(?: QT=\S+)?$"
)
_VERP = re.compile(r"^bounce\+(?P<token>[A-Za-z0-9._=-]+)@", re.IGNORECASE)
_CONFIRMATION = re.compile(r' C="(?P<c>.*)"')  # greedy: the reply itself may hold a quote
_RETURN_PATH = re.compile(r"(?:^| )P=<(?P<p>[^>]*)>")
_TIMINGS = re.compile(r"(?: (?:QT|DT)=\S+)+$")  # +queue_time/+deliver_time may follow the error text
_REPLY = re.compile(r"(?:^|: )(?P<reply>(?P<code>[2-5]\d\d)(?:[ -].*)?)$")
_STATUS = {"=>": "delivered", "->": "delivered", "==": "deferred", "**": "failed"}


@dataclass(frozen=True, slots=True)
class LogRecord:
    exim_id: str
    flag: str  # <= arrival, => / -> delivered, == deferred, ** failed
    address: str  # the sender for <=, the recipient otherwise
    code: int | None = None
    text: str | None = None
    return_path: str | None = None  # P=<…> on delivery lines (log_selector +return_path_on_delivery)
    at: float | None = None  # unix time of the line (None: not a valid date)

    @property
    def status(self) -> str | None:
        return _STATUS.get(self.flag)


def parse_line(line: str) -> LogRecord | None:
    """One main-log line -> LogRecord, or None for lines that say nothing about a delivery."""
    m = _LINE.match(line.rstrip("\r\n"))
    if m is None:
        return None
    record = _record(m["id"], m["flag"], m["rest"])
    return None if record is None else replace(record, at=_logged_at(m))


def _logged_at(m: re.Match[str]) -> float | None:
    """The line's time in unix seconds. Without a zone it is this host's local time, as Exim
    (same host, same /etc/localtime) wrote it; an hour repeated when clocks go back is ambiguous
    then, which is why the role sets log_timezone."""
    try:
        if m["zone"]:
            at = datetime.strptime(f"{m['when']} {m['zone']}", "%Y-%m-%d %H:%M:%S %z").timestamp()
        else:
            at = datetime.strptime(m["when"], "%Y-%m-%d %H:%M:%S").timestamp()  # naive: local time
    except (ValueError, OverflowError):
        return None  # not a date (month 13): the event gets the reader's time
    return at + float(m["fraction"] or 0)


def _record(exim_id: str, flag: str, rest: str) -> LogRecord | None:
    address, _, tail = rest.partition(" ")
    if flag == "<=":
        return LogRecord(exim_id, flag, address)
    address = address.rstrip(":")  # "** x@y: Unrouteable address" has no R=/T= fields
    p = _RETURN_PATH.search(tail)
    return_path = p["p"] if p else None
    if flag in ("=>", "->"):
        c = _CONFIRMATION.search(tail)
        if c is None:
            return LogRecord(exim_id, flag, address, return_path=return_path)
        text = c["c"]
        return LogRecord(exim_id, flag, address, _reply_code(text), text, return_path)
    # == and **: what went wrong follows the first ": " after the routing fields
    _, sep, error = (" " + tail if rest.startswith(address + ":") else tail).partition(": ")
    error = _TIMINGS.sub("", error if sep else tail)
    if "retry time not reached" in error:
        return None  # a queue run skipping the address: no news, just noise
    reply = _REPLY.search(error)
    if reply is None:
        return LogRecord(exim_id, flag, address, None, error or None, return_path)
    return LogRecord(exim_id, flag, address, int(reply["code"]), reply["reply"], return_path)


def _reply_code(text: str) -> int | None:
    return int(text[:3]) if len(text) >= 3 and text[:3].isdigit() else None


class LogFollower:
    """Reads complete lines from a log file that may be rotated (renamed) or truncated."""

    def __init__(self, path: Path, inode: int | None = None, offset: int = 0) -> None:
        self.path = path
        self.inode = inode
        self.offset = offset  # just after the last complete line handed out
        self._file: BinaryIO | None = None
        self._pending = b""
        # The last read found the end of the file, with no part of a line left over: every line
        # written before that read began has been handed out (reconcile.py waits for this).
        self.at_end = False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read_lines(self) -> list[tuple[bytes, int]]:
        """Complete lines (without the newline) and the offset after each; [] when nothing new."""
        self.at_end = False
        if self._file is None and not self._open():
            self.at_end = not self.path.exists()  # no log yet: nothing written
            return []
        assert self._file is not None
        chunk = self._file.read(READ_CHUNK)
        if not chunk:
            self.at_end = not self._check_replaced() and not self._pending
            return []
        data = self._pending + chunk
        lines: list[tuple[bytes, int]] = []
        start, pos = 0, self.offset
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                break
            pos += end + 1 - start
            lines.append((data[start:end], pos))
            start = end + 1
        self._pending = data[start:]
        if lines:
            self.offset = lines[-1][1]
        # a short read reached the end of the file (busy logs seldom give an empty one)
        self.at_end = len(chunk) < READ_CHUNK and not self._pending and self._still_ours()
        return lines

    def _still_ours(self) -> bool:
        """The path still names the file we read (not rotated away or truncated meanwhile)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True  # rotated, new one not created yet: what was written went to ours
        return st.st_ino == self.inode and st.st_size >= self.offset

    def _open(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        if self.inode is not None and st.st_ino != self.inode:
            # rotated while we were away: finish the old file first if it is still next to us
            for old in (self.path.with_name(self.path.name + ".1"), self.path.with_name(self.path.name + ".0")):
                try:
                    if os.stat(old).st_ino == self.inode:
                        self._file = open(old, "rb")
                        self._file.seek(self.offset)
                        return True
                except FileNotFoundError:
                    continue
            self.offset = 0
        elif self.inode is not None and st.st_size < self.offset:
            self.offset = 0  # truncated
        self._file = open(self.path, "rb")
        self.inode = os.fstat(self._file.fileno()).st_ino
        self._file.seek(self.offset)
        self._pending = b""
        return True

    def _check_replaced(self) -> bool:
        """At end of file: switch to a new file at the path, or start over after truncation.
        True when it did (there may be lines to read at once)."""
        assert self._file is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # rotated, new one not created yet: keep the old one open
        if st.st_ino != self.inode:
            self.close()
            self.inode, self.offset, self._pending = st.st_ino, 0, b""
            self._file = open(self.path, "rb")
            if os.fstat(self._file.fileno()).st_ino != self.inode:  # replaced again meanwhile
                self.inode = os.fstat(self._file.fileno()).st_ino
            return True
        if st.st_size < self.offset:
            self._file.seek(0)
            self.offset, self._pending = 0, b""
            return True
        return False


class EximLogReader:
    """Turns new main-log lines into events in the queue; ``poll`` does one round."""

    def __init__(self, queue: QueueDB, log_path: Path, claim_wait: float = CLAIM_WAIT,
                 in_flight: Callable[[int], bool] | None = None,
                 observe: Callable[[list[Event]], None] | None = None) -> None:
        """``in_flight``: whether the sender is still waiting for Exim's answer for a letter in
        'submitting' (its result comes soon); any other letter Exim logged is taken over at once.
        ``observe``: told of the outcome events once they are committed (backoff.py reads them)."""
        self.queue = queue
        self.observe = observe
        saved = queue.get_state(POSITION_KEY) or {}
        same_file = saved.get("path") == str(log_path)
        self.follower = LogFollower(log_path, saved.get("inode") if same_file else None,
                                    saved.get("offset", 0) if same_file else 0)
        # Going on where an earlier process stopped: arrivals before that point were read by it.
        self._resumed = bool(same_file and saved.get("offset"))
        self.claim_wait = claim_wait
        self.in_flight = in_flight or (lambda delivery_id: False)
        self.caught_up = 0.0  # wall time: every line Exim wrote before it has been handled
        self._ids: OrderedDict[str, int] = OrderedDict()  # exim id -> delivery id seen on arrival lines
        # Our letters whose arrival this reader saw and whose `=>` / `**` it has not: a `Completed` for one
        # of them means Exim was killed between delivering it and logging so; its -J journal held the
        # delivery and the restarted Exim finished the message without a `=>` line.
        self._open: OrderedDict[str, int] = OrderedDict()
        self._done: OrderedDict[str, None] = OrderedDict()  # exim ids whose `=>` / `**` this reader read
        self._events: list[Event] = []
        self._takeovers: list[tuple[int, str]] = []
        self._exim_ids: list[tuple[str, int]] = []

    def poll(self, stop: threading.Event | None = None) -> int:
        """Read what is new; return the number of lines handled."""
        started = time.time()
        lines = self.follower.read_lines()
        for raw, end in lines:
            line = raw.decode("utf-8", "replace")
            record = parse_line(line)
            if record is not None:
                self._handle(record, end - len(raw) - 1, stop)
            elif (completed := _COMPLETED.match(line.rstrip("\r\n"))) is not None:
                self._completed(completed)
        if lines:
            self._flush(self.follower.offset)
        if self.follower.at_end:
            self.caught_up = started
        return len(lines)

    def close(self) -> None:
        self.follower.close()

    def run(self, stop: threading.Event, idle: float = 0.2) -> None:
        while not stop.is_set():
            try:
                if not self.poll(stop):
                    stop.wait(idle)
            except Exception:  # a bad moment (DB busy, file vanished) must not end the thread
                log.exception("reading %s failed; trying again", self.follower.path)
                stop.wait(2.0)
        self.follower.close()

    def _handle(self, record: LogRecord, start: int, stop: threading.Event | None) -> None:
        """``start``: offset of the line, where reading resumes if we stop before it is committed."""
        if record.flag == "<=":
            self._arrival(record, start, stop)
            return
        if record.flag in ("=>", "->", "**"):
            self._open.pop(record.exim_id, None)
            self._done[record.exim_id] = None
            if len(self._done) > 50_000:
                self._done.popitem(last=False)
        delivery_id = self._ids.get(record.exim_id)
        if delivery_id is None:
            row = self.queue.letter_by_exim_id(record.exim_id)
            if row is None and record.return_path and (verp := _VERP.match(record.return_path)):
                row = self.queue.letter_by_token(verp["token"])
            if row is None:
                return  # not one of our letters (a DSN, local mail, …)
            delivery_id = row[0]
            if row[1] == "submitting" and not self.in_flight(delivery_id):
                # Exim delivers a letter whose arrival it never logged (killed in between): it has it
                self._takeovers.append((delivery_id, record.exim_id))
        assert record.status is not None
        self._events.append(Event(delivery_id, record.status, record.code, record.text, record.at))

    def _arrival(self, record: LogRecord, start: int, stop: threading.Event | None) -> None:
        verp = _VERP.match(record.address)
        if verp is None:
            return
        row = self.queue.letter_by_token(verp["token"])
        if row is None:
            return
        delivery_id, state, _ = row
        self._remember(record.exim_id, delivery_id)
        self._open[record.exim_id] = delivery_id
        if len(self._open) > 50_000:
            self._open.popitem(last=False)
        self._exim_ids.append((record.exim_id, delivery_id))
        if state == "claimed" or (state == "submitting" and self.in_flight(delivery_id)):
            # The sender is about to record it (with Exim's reply): let it, so 'sent' comes before 'delivered'.
            self._flush(start)  # no transaction may stay open while we wait for the sender's
            deadline = time.monotonic() + self.claim_wait
            waited = state
            while state == waited and time.monotonic() < deadline and not (stop and stop.is_set()):
                time.sleep(0.05)
                state = self.queue.letter_state(delivery_id) or "gone"
        if state in ("claimed", "submitting", "queued"):
            # Exim has it although the sender did not hear so (connection lost after DATA):
            # record it as sent here, so that the letter is not submitted a second time.
            self._takeovers.append((delivery_id, record.exim_id))

    def _completed(self, m: re.Match[str]) -> None:
        exim_id = m["id"]
        delivery_id = self._open.pop(exim_id, None)
        if exim_id in self._done:
            del self._done[exim_id]
            return  # its outcome was logged
        if delivery_id is None:
            if not self._resumed or exim_id in self._ids:
                return
            # Its arrival may have been read by the process before this one (killed with Exim, as a whole
            # worker is): a letter of ours Exim finished. At worst its `=>` was read before too, and this
            # second 'delivered' is one the panel ignores.
            row = self.queue.letter_by_exim_id(exim_id)
            if row is None or row[1] != "submitted":
                return
            delivery_id = row[0]
        self._events.append(Event(delivery_id, "delivered", None,
                                  "delivered before Exim was stopped (its journal, not its log, held it)",
                                  _logged_at(m)))

    def _remember(self, exim_id: str, delivery_id: int) -> None:
        self._ids[exim_id] = delivery_id
        if len(self._ids) > 50_000:
            self._ids.popitem(last=False)

    def _flush(self, offset: int) -> None:
        """Commit the events gathered so far with the read position they lead to."""
        with self.queue.write() as conn:
            for exim_id, delivery_id in self._exim_ids:
                conn.execute("UPDATE letters SET exim_id = ? WHERE id = ? AND exim_id IS NULL", (exim_id, delivery_id))
            events: list[Event] = []
            for delivery_id, exim_id in self._takeovers:
                if conn.execute(
                    # it reached Exim, so it used an attempt (a put-back claim had its own handed back)
                    "UPDATE letters SET state = 'submitted', exim_id = ?, fields = NULL, attempts = max(attempts, 1) "
                    "WHERE id = ? AND state IN ('claimed', 'submitting', 'queued')", (exim_id, delivery_id)
                ).rowcount:
                    events.append(Event(delivery_id, "sent", None, f"accepted by Exim as {exim_id} (seen in its log)"))
            events.extend(self._events)
            self.queue.add_events(conn, events)
            self.queue.set_state(conn, POSITION_KEY, {"path": str(self.follower.path),
                                                      "inode": self.follower.inode, "offset": offset})
        observed = self._events
        self._events, self._takeovers, self._exim_ids = [], [], []
        if self.observe is not None and observed:
            try:
                self.observe(observed)
            except Exception:  # shaping is advice: the events are stored whatever it does
                log.exception("observing outcome events failed")
