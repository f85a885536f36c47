"""A stand-in for the recipients' mail servers: an SMTP server that keeps what it gets.

Run as its own process::

    python -m devserver.mail_capture --listen 127.0.0.1:2526 --maildir DIR [--rules FILE] [--attempts FILE]

Every accepted message is written into the Maildir DIR once per recipient
(tmp/ then renamed into new/, so a reader never sees half a message), with
trace headers in front recording what the recipients' server saw::

    X-Capture-Peer: 127.0.0.2               client IP of the SMTP connection
    X-Capture-Helo: ip2.worker.test         its HELO/EHLO name
    X-Capture-Mail-From: bounce+t@b.test    envelope sender (<> for the null sender)
    X-Capture-Rcpt-To: ann@example.org      the one recipient this file is for
    X-Capture-Time: 1796378259.123456       when it was accepted (Unix time)

The rules file is JSON, re-read whenever it changes; it lets the capture play mailbox providers::

    {"ann@x.test": "defer",                  per address: "accept" | "defer" | "reject"
     "@busy.test": "defer",                  per recipient domain (an address's own rule wins)
     "@gmail.test": {"throttle_per_minute": 60}}

A deferred recipient gets ``451 4.2.0 <address>: mailbox busy, try later``, a rejected
one ``550 5.1.1 <address>: no such user``, any other is accepted. A throttled domain
accepts at most N letters from one source IP in any 60 s; beyond, RCPT is answered with
Gmail's ``421-4.7.28 ... rate limited``. A throttle's other keys: "window_seconds" (60),
"provider" (domains naming the same provider share one count; default the domain),
"reply" (the answer instead of Gmail's, ``{ip}`` replaced by the client's address) and
"at": "rcpt" (default) or "data" (refuse at the end of DATA, as Gmail often does, so the
refused letter's Message-ID is known).

A slow domain, ``{"delay_seconds": 1.5}``, accepts its letters that long after their DATA (a
busy provider: the sender's connections stay open meanwhile, so their number can be counted).

Every answer to a recipient is appended to the attempts log (JSON lines, by default
DIR.attempts.jsonl next to the Maildir): time, source IP, HELO, recipient, domain,
provider group, result (accepted, deferred, rejected), code, reply, Message-ID (null
for a recipient refused before DATA) and the SMTP connection it came on (``conn``). Each
connection, once closed, is a line of the connections log (DIR.connections.jsonl): conn, source
IP, opened, closed. Benchmarks and tests read rates per (IP, provider), the deferred share,
concurrent connections and letters per connection from them (:func:`read_attempts`,
:func:`peak_per_window`, :func:`deferred_share`, :func:`peak_connections`, :func:`letters_per_connection`).

Tests and `make run` drive it through :class:`CaptureServer`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.policy
import itertools
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session, syntax

REPO_ROOT = Path(__file__).resolve().parent.parent
ACTIONS = ("accept", "defer", "reject")
TRACE_HEADERS = ("X-Capture-Peer", "X-Capture-Helo", "X-Capture-Mail-From", "X-Capture-Rcpt-To", "X-Capture-Time")
SERVER_NAME = "capture.localhost"
READY_PREFIX = "mail capture listening on "

log = logging.getLogger("mailfleet.mail_capture")


# -- the server process ---------------------------------------------------------


# Gmail's answer when an IP sends too fast (one line per reply line, as Gmail words it).
GMAIL_RATE_LIMITED = (
    "421-4.7.28 [{ip}] Gmail has detected an unusual rate of unsolicited mail originating\r\n"
    "421-4.7.28 from your IP address. To protect our users from spam, mail sent from your IP\r\n"
    "421-4.7.28 address has been temporarily rate limited. Please visit\r\n"
    "421 4.7.28  https://support.google.com/mail/?p=UnsolicitedRateLimitError to review our guidelines"
)
THROTTLE_KEYS = ("throttle_per_minute", "window_seconds", "provider", "reply", "at")


@dataclass(frozen=True)
class Throttle:
    """At most `per_window` letters accepted from one source IP for `group` in any `window` seconds."""

    per_window: int
    window: float
    group: str  # the count is shared by every domain naming this provider
    reply: str  # {ip}: the client's address
    at: str  # "rcpt" or "data": where the refusal is answered


@dataclass(frozen=True)
class Slow:
    """Accept, `delay` seconds after the end of DATA."""

    delay: float


Rule = str | Throttle | Slow


class Rules:
    """Behaviour per address and per recipient domain from a JSON file, re-read when the file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._rules: dict[str, Rule] = {}

    def rule_for(self, address: str) -> Rule:
        self._refresh()
        address = normalise_address(address)
        rule = self._rules.get(address)
        if rule is None:
            rule = self._rules.get("@" + domain_of(address), "accept")
        return rule

    def action(self, address: str) -> str:
        """accept, defer or reject (a throttled domain is "accept" here: the count decides)."""
        rule = self.rule_for(address)
        return rule if isinstance(rule, str) else "accept"

    def _refresh(self) -> None:
        if self.path is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._signature, self._rules = None, {}
            return
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if signature == self._signature:
            return
        try:
            data = json.loads(self.path.read_bytes() or b"{}")
            rules = parse_rules(data)
        except (OSError, ValueError) as exc:
            # Half-written by an editor, or wrong: keep the old rules and look again next time.
            log.warning("ignoring rules file %s for now: %s", self.path, exc)
            return
        self._signature, self._rules = signature, rules


def normalise_address(address: str) -> str:
    return address.strip().strip("<>").lower()


def domain_of(address: str) -> str:
    return normalise_address(address).rpartition("@")[2]


def parse_rules(data: Any) -> dict[str, Rule]:
    if not isinstance(data, dict):
        raise ValueError("the rules file must hold a JSON object {address or @domain: rule}")
    return {normalise_address(key): parse_rule(key, value) for key, value in data.items()}


def parse_rule(key: str, value: Any) -> Rule:
    """One rule: an action for an address or "@domain", or a throttle (an object) for a domain."""
    if isinstance(value, str):
        if value not in ACTIONS:
            raise ValueError(f"{key}: action {value!r} is not one of {', '.join(ACTIONS)}")
        return value
    if not isinstance(value, dict):
        raise ValueError(f"{key}: a rule is one of {', '.join(ACTIONS)} or a throttle "
                         '{"throttle_per_minute": N}, not ' + repr(value))
    domain = normalise_address(key)
    if not domain.startswith("@") or len(domain) == 1:
        raise ValueError(f"{key}: a throttle is per recipient domain: name it \"@domain\"")
    if "delay_seconds" in value:
        delay = value["delay_seconds"]
        if set(value) != {"delay_seconds"}:
            raise ValueError(f"{key}: a slow domain takes only delay_seconds")
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 < delay <= 60:
            raise ValueError(f"{key}: delay_seconds must be a number of seconds above 0 and at most 60, not {delay!r}")
        return Slow(float(delay))
    unknown = sorted(set(value) - set(THROTTLE_KEYS))
    if unknown:
        raise ValueError(f"{key}: unknown key(s) {', '.join(unknown)} (known: {', '.join(THROTTLE_KEYS)})")
    per_window = value.get("throttle_per_minute")
    if isinstance(per_window, bool) or not isinstance(per_window, int) or per_window < 1:
        raise ValueError(f"{key}: throttle_per_minute must be a whole number of at least 1, not {per_window!r}")
    window = value.get("window_seconds", 60)
    if isinstance(window, bool) or not isinstance(window, (int, float)) or not window > 0:
        raise ValueError(f"{key}: window_seconds must be a number of seconds above 0, not {window!r}")
    group = value.get("provider", domain[1:])
    reply = value.get("reply", GMAIL_RATE_LIMITED)
    at = value.get("at", "rcpt")
    if not isinstance(group, str) or not group:
        raise ValueError(f"{key}: provider must be a name, not {group!r}")
    if not isinstance(reply, str) or not re.match(r"4\d\d[ -]", reply):
        raise ValueError(f"{key}: reply must be a 4xx SMTP answer such as \"421 4.7.0 try later\", not {reply!r}")
    if at not in ("rcpt", "data"):
        raise ValueError(f"{key}: at must be \"rcpt\" or \"data\", not {at!r}")
    return Throttle(per_window=per_window, window=float(window), group=group.lower(), reply=reply, at=at)


class ThrottleCounts:
    """Letters accepted per (source IP, provider group) in the current window, in this process."""

    def __init__(self) -> None:
        self._accepted: dict[tuple[str, str], deque[float]] = {}

    def _times(self, ip: str, throttle: Throttle, now: float) -> deque[float]:
        times = self._accepted.setdefault((ip, throttle.group), deque())
        while times and times[0] <= now - throttle.window:
            times.popleft()
        return times

    def full(self, ip: str, throttle: Throttle) -> bool:
        return len(self._times(ip, throttle, time.monotonic())) >= throttle.per_window

    def take(self, ip: str, throttle: Throttle) -> bool:
        """Count one letter accepted now if the window has room; False (nothing counted) if not."""
        now = time.monotonic()
        times = self._times(ip, throttle, now)
        if len(times) >= throttle.per_window:
            return False
        times.append(now)
        return True


class AttemptsLog:
    """Appends one JSON line per answer to a recipient; each line in one write, so never half a line
    between two whole ones."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if path is not None else None

    def record(self, **fields: Any) -> None:
        if self._fd is None:
            return
        line = json.dumps(fields, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            os.write(self._fd, line.encode("utf-8", "surrogateescape"))
        except OSError as exc:
            log.error("could not write the attempts log %s: %s", self.path, exc)


class MaildirWriter:
    """Writes messages into a Maildir: tmp/ first, then an atomic rename into new/."""

    def __init__(self, path: Path) -> None:
        self.path = path
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)
        host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")
        self._suffix = f"P{os.getpid()}Q{{}}.{host}"
        self._counter = itertools.count(1)

    def deliver(self, data: bytes) -> str:
        now = time.time()
        seconds = int(now)
        name = f"{seconds}.M{int((now - seconds) * 1e6):06d}" + self._suffix.format(next(self._counter))
        tmp = self.path / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(tmp, self.path / "new" / name)
        return name


_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def message_id_of(data: bytes) -> str | None:
    """The Message-ID header's value in a message's header block, unfolded; None if it has none."""
    head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
    found = _MESSAGE_ID.search(head)
    if found is None:
        return None
    return b" ".join(found.group(1).split()).decode("utf-8", "replace") or None


class CaptureHandler:
    """aiosmtpd hooks: rules at RCPT, one Maildir file per recipient at DATA, every answer logged."""

    def __init__(self, maildir: MaildirWriter, rules: Rules, attempts: AttemptsLog | None = None,
                 connections: AttemptsLog | None = None) -> None:
        self.maildir = maildir
        self.rules = rules
        self.attempts = attempts or AttemptsLog(None)
        self.connections = connections or AttemptsLog(None)
        self.counts = ThrottleCounts()
        self._conn_ids = itertools.count(1)

    def opened(self, session: Session) -> None:
        session.capture_conn = next(self._conn_ids)  # type: ignore[attr-defined]
        session.capture_opened = time.time()  # type: ignore[attr-defined]

    def closed(self, session: Session) -> None:
        self.connections.record(conn=getattr(session, "capture_conn", None), ip=_peer_ip(session),
                                opened=round(getattr(session, "capture_opened", 0.0), 6), closed=round(time.time(), 6))

    def _record(self, session: Session, envelope: Envelope, rcpt: str, group: str, result: str, reply: str,
                message_id: str | None, when: float | None = None) -> None:
        self.attempts.record(
            time=round(when if when is not None else time.time(), 6), ip=_peer_ip(session),
            helo=session.host_name or "", mail_from=envelope.mail_from or "", rcpt=rcpt, domain=domain_of(rcpt),
            group=group, result=result, code=int(reply[:3]), reply=reply[4:].replace("\r\n", "\n"),
            message_id=message_id, conn=getattr(session, "capture_conn", None),
        )

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        rule = self.rules.rule_for(address)
        group = rule.group if isinstance(rule, Throttle) else domain_of(address)
        reply = ""
        if rule == "defer":
            reply = f"451 4.2.0 <{address}>: mailbox busy, try later"
        elif rule == "reject":
            reply = f"550 5.1.1 <{address}>: no such user"
        elif isinstance(rule, Throttle) and rule.at == "rcpt" and not self.counts.take(_peer_ip(session), rule):
            reply = rule.reply.replace("{ip}", _peer_ip(session))
        if reply:
            self._record(session, envelope, address, group, "deferred" if reply[0] == "4" else "rejected", reply, None)
            return reply
        envelope.rcpt_tos.append(address)
        # What DATA needs to log this recipient's answer and, at "data", to count it.
        if not hasattr(envelope, "capture_rules"):
            envelope.capture_rules = []  # type: ignore[attr-defined]  # a new Envelope per transaction
        envelope.capture_rules.append((address, group, rule))  # type: ignore[attr-defined]
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        body = content.replace(b"\r\n", b"\n")
        peer = _peer_ip(session)
        message_id = message_id_of(body)
        rules = getattr(envelope, "capture_rules", [])
        # Throttles answered at the end of DATA: the whole message is refused if one recipient's is full.
        for _, _, rule in rules:
            if isinstance(rule, Throttle) and rule.at == "data" and self.counts.full(peer, rule):
                reply = rule.reply.replace("{ip}", peer)
                for rcpt, group, _ in rules:
                    self._record(session, envelope, rcpt, group, "deferred", reply, message_id)
                return reply
        for _, _, rule in rules:
            if isinstance(rule, Throttle) and rule.at == "data":
                self.counts.take(peer, rule)
        delay = max((rule.delay for _, _, rule in rules if isinstance(rule, Slow)), default=0.0)
        if delay:
            await asyncio.sleep(delay)  # the connection stays open meanwhile
        now = time.time()
        common = (
            f"X-Capture-Peer: {peer}\n"
            f"X-Capture-Helo: {session.host_name or ''}\n"
            f"X-Capture-Mail-From: {envelope.mail_from or '<>'}\n"
        ).encode("utf-8", "surrogateescape")
        stamp = f"X-Capture-Time: {now:.6f}\n".encode()
        names = []
        try:
            for rcpt in envelope.rcpt_tos:
                trace = f"X-Capture-Rcpt-To: {rcpt}\n".encode("utf-8", "surrogateescape")
                names.append(self.maildir.deliver(common + trace + stamp + body))
        except OSError as exc:
            log.error("could not store a message: %s", exc)
            reply = "451 4.3.0 capture could not store the message, try later"
            for rcpt, group, _ in rules:
                self._record(session, envelope, rcpt, group, "deferred", reply, message_id)
            return reply
        reply = f"250 2.0.0 OK queued as {names[0] if names else 'nothing'}"
        for rcpt, group, _ in rules:
            self._record(session, envelope, rcpt, group, "accepted", reply, message_id, when=now)
        return reply


def _peer_ip(session: Session) -> str:
    return session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)


class CaptureSMTP(SMTP):
    """aiosmtpd's server with a faster DATA: the message is read in large pieces.

    aiosmtpd reads DATA one line at a time, several microseconds of Python per line,
    which held a single connection under 1,000 letters/s. The reply texts, the
    checks before DATA and the handler hook are the same.
    """

    line_length_limit = 1 << 16  # the reader's buffer limit: DATA comes in pieces of up to this

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.session is not None:
            self.event_handler.opened(self.session)

    def connection_lost(self, error: Exception | None) -> None:
        if self.session is not None:
            self.event_handler.closed(self.session)
        super().connection_lost(error)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        pieces: list[bytes] = []
        size = 0
        tail = b""
        while True:
            try:
                piece = await self._reader.readuntil(b".\r\n")
            except asyncio.LimitOverrunError as exc:  # no "." + CRLF within the buffer limit yet
                piece = await self._reader.readexactly(exc.consumed)
                pieces.append(piece)
                size += len(piece)
                tail = (tail + piece)[-5:]
                continue
            pieces.append(piece)
            size += len(piece)
            tail = (tail + piece)[-5:]
            # The end is a line holding a single dot, not any line ending in a dot.
            if tail == b"\r\n.\r\n" or size == 3:
                break
        data = b"".join(pieces)[:-3]
        if self.data_size_limit and len(data) > self.data_size_limit:
            self._set_post_data_state()
            await self.push("552 Error: Too much mail data")
            return
        # Undo dot-stuffing (RFC 5321 4.5.2): a leading dot on any line is dropped.
        content = (b"\r\n" + data).replace(b"\r\n.", b"\r\n")[2:]
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push("250 OK" if status is MISSING else status)


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"--listen wants HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def default_attempts_file(maildir: Path) -> Path:
    return maildir.with_name(maildir.name + ".attempts.jsonl")


def default_connections_file(maildir: Path) -> Path:
    return maildir.with_name(maildir.name + ".connections.jsonl")


async def serve(
    host: str, port: int, maildir: Path, rules_file: Path | None, attempts_file: Path | None = None,
    connections_file: Path | None = None,
) -> None:
    loop = asyncio.get_running_loop()
    writer = MaildirWriter(maildir)
    attempts = AttemptsLog(attempts_file or default_attempts_file(maildir))
    connections = AttemptsLog(connections_file or default_connections_file(maildir))
    handler = CaptureHandler(writer, Rules(rules_file), attempts, connections)

    def factory() -> SMTP:
        return CaptureSMTP(handler, hostname=SERVER_NAME, ident="Mailfleet mail capture", enable_SMTPUTF8=True, loop=loop)

    server = await loop.create_server(factory, host=host, port=port)
    bound = server.sockets[0].getsockname()
    print(f"{READY_PREFIX}{host}:{bound[1]} maildir {maildir}", flush=True)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devserver.mail_capture",
        description="SMTP server standing in for the recipients' mail servers; keeps every message in a Maildir.",
    )
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 2526), help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--maildir", type=Path, required=True, help="Maildir to write messages into (created)")
    parser.add_argument("--rules", type=Path, default=None,
                        help='JSON file {"address" or "@domain": "accept"|"defer"|"reject"|{"throttle_per_minute": N}}')
    parser.add_argument("--attempts", type=Path, default=None,
                        help="JSON lines file of every answer to a recipient (default: MAILDIR.attempts.jsonl)")
    parser.add_argument("--connections", type=Path, default=None,
                        help="JSON lines file of every SMTP connection, once closed (default: MAILDIR.connections.jsonl)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="mail_capture: %(levelname)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
    host, port = args.listen
    asyncio.run(serve(host, port, args.maildir.absolute(), args.rules.absolute() if args.rules else None,
                      args.attempts.absolute() if args.attempts else None,
                      args.connections.absolute() if args.connections else None))
    return 0


# -- reading what was captured ----------------------------------------------------


@dataclass
class Captured:
    """One message as one recipient's server received it."""

    peer_ip: str
    helo: str
    mail_from: str  # "" for the null sender <>
    rcpt_to: str
    raw: bytes  # the message as received, trace headers not included, LF line ends
    path: Path
    received_at: float = 0.0  # Unix time it was accepted (0.0 for a file written before this was recorded)

    @cached_property
    def message_id(self) -> str | None:
        return message_id_of(self.raw)

    @cached_property
    def message(self) -> EmailMessage:
        message = BytesParser(policy=email.policy.default).parsebytes(self.raw)
        assert isinstance(message, EmailMessage)
        return message


def parse_captured(data: bytes, path: Path) -> Captured:
    trace: dict[str, str] = {}
    rest = data
    while rest.startswith(b"X-Capture-"):
        line, _, rest = rest.partition(b"\n")
        name, _, value = line.decode("utf-8", "surrogateescape").partition(":")
        trace[name] = value.strip()
    mail_from = trace.get("X-Capture-Mail-From", "")
    return Captured(
        peer_ip=trace.get("X-Capture-Peer", ""),
        helo=trace.get("X-Capture-Helo", ""),
        mail_from="" if mail_from == "<>" else mail_from,
        rcpt_to=trace.get("X-Capture-Rcpt-To", ""),
        raw=rest,
        path=path,
        received_at=float(trace.get("X-Capture-Time") or 0.0),
    )


def _message_files(maildir: Path) -> list[Path]:
    files = []
    for sub in ("cur", "new"):
        with contextlib.suppress(FileNotFoundError):
            files.extend(entry for entry in os.scandir(maildir / sub) if not entry.name.startswith("."))
    return sorted((Path(entry.path) for entry in files), key=lambda p: p.name)


def count_messages(maildir: Path) -> int:
    """Messages in the Maildir (new/ and cur/), without reading them."""
    return len(_message_files(Path(maildir)))


def read_maildir(path: Path) -> list[Captured]:
    """Every message in the Maildir (new/ and cur/), oldest first."""
    captured = []
    for file in _message_files(Path(path)):
        try:
            captured.append(parse_captured(file.read_bytes(), file))
        except FileNotFoundError:  # moved to cur/ by a mail reader meanwhile
            continue
    return captured


def wait_for_count(path_or_server: Path | CaptureServer, n: int, timeout: float) -> list[Captured]:
    """Wait until at least `n` messages are in the Maildir; return them all.

    Raises TimeoutError saying how many arrived if fewer than `n` did within `timeout` seconds.
    """
    maildir = path_or_server.maildir if isinstance(path_or_server, CaptureServer) else Path(path_or_server)
    deadline = time.monotonic() + timeout
    while True:
        have = count_messages(maildir)
        if have >= n:
            return read_maildir(maildir)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{have} of {n} messages arrived in {maildir} within {timeout} s")
        time.sleep(0.02)


def read_attempts(path: Path) -> list[dict[str, Any]]:
    """Every answer the capture gave to a recipient, oldest first (a last line still being written is left out)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line]


def peak_per_window(attempts: Iterable[dict[str, Any]], window: float = 60.0) -> dict[tuple[str, str], int]:
    """The most letters accepted from each (source IP, provider group) within any `window` seconds."""
    times: dict[tuple[str, str], list[float]] = {}
    for attempt in attempts:
        if attempt["result"] == "accepted":
            times.setdefault((attempt["ip"], attempt["group"]), []).append(attempt["time"])
    peaks = {}
    for key, stamps in times.items():
        stamps.sort()
        peak, first = 0, 0
        for last, stamp in enumerate(stamps):
            while stamps[first] <= stamp - window:
                first += 1
            peak = max(peak, last - first + 1)
        peaks[key] = peak
    return peaks


def peak_connections(attempts: Iterable[dict[str, Any]], connections: Iterable[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """The most connections open at once from each (source IP, provider group): a connection counts
    for the groups of the recipients it carried, from its opening to its closing."""
    groups: dict[Any, set[str]] = {}
    for attempt in attempts:
        groups.setdefault(attempt.get("conn"), set()).add(attempt["group"])
    moments: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for conn in connections:
        for group in groups.get(conn["conn"], ()):
            moments.setdefault((conn["ip"], group), []).extend([(conn["opened"], 1), (conn["closed"], -1)])
    peaks = {}
    for key, marks in moments.items():
        marks.sort(key=lambda m: (m[0], m[1]))  # a closing before an opening at the same instant
        level = peak = 0
        for _, step in marks:
            level += step
            peak = max(peak, level)
        peaks[key] = peak
    return peaks


def letters_per_connection(attempts: Iterable[dict[str, Any]]) -> dict[tuple[str, str], int]:
    """The most letters accepted on one connection, per (source IP, provider group)."""
    counts: dict[tuple[str, str, Any], int] = {}
    for attempt in attempts:
        if attempt["result"] == "accepted":
            key = (attempt["ip"], attempt["group"], attempt.get("conn"))
            counts[key] = counts.get(key, 0) + 1
    most: dict[tuple[str, str], int] = {}
    for (ip, group, _), n in counts.items():
        most[ip, group] = max(most.get((ip, group), 0), n)
    return most


def deferred_share(attempts: Iterable[dict[str, Any]]) -> float:
    """Deferred answers as a share of all answers (0.0 when there were none)."""
    results = [attempt["result"] for attempt in attempts]
    return results.count("deferred") / len(results) if results else 0.0


# -- driving the server from Python ---------------------------------------------------


class CaptureServer:
    """Runs `python -m devserver.mail_capture` as a child process; a context manager."""

    def __init__(
        self, maildir: Path, *, host: str = "127.0.0.1", port: int = 0, rules_file: Path | None = None,
        attempts_file: Path | None = None, connections_file: Path | None = None,
    ) -> None:
        self.maildir = Path(maildir).absolute()
        self.host = host
        self.port = port
        self.rules_file = (rules_file or self.maildir.with_name(self.maildir.name + ".rules.json")).absolute()
        self.attempts_file = (attempts_file or default_attempts_file(self.maildir)).absolute()
        self.connections_file = (connections_file or default_connections_file(self.maildir)).absolute()
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> CaptureServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 15) -> None:
        if self._process is not None:
            raise RuntimeError("this capture server is already running")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        listen = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        self._process = subprocess.Popen(
            [sys.executable, "-m", "devserver.mail_capture", "--listen", listen,
             "--maildir", str(self.maildir), "--rules", str(self.rules_file), "--attempts", str(self.attempts_file),
             "--connections", str(self.connections_file)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            line = self._read_ready_line(timeout)
        except BaseException:
            self.stop()
            raise
        self.port = int(line[len(READY_PREFIX):].split()[0].rpartition(":")[2])

    def _read_ready_line(self, timeout: float) -> str:
        assert self._process is not None and self._process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise RuntimeError(f"mail capture did not start within {timeout} s")
        line = self._process.stdout.readline()
        if not line.startswith(READY_PREFIX):
            self._process.wait(timeout=5)
            raise RuntimeError(f"mail capture failed to start (exit {self._process.returncode}): {line!r}")
        return line

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()

    def set_rule(self, address: str, action: str | dict[str, Any]) -> None:
        """From the next RCPT on, accept, defer or reject `address` (or "@domain": all its addresses),
        or throttle a domain ({"throttle_per_minute": N, ...}: see the module's docstring)."""
        parse_rule(address, action)  # refused here, with what to fix, rather than ignored by the server
        try:
            rules = json.loads(self.rules_file.read_text(encoding="utf-8") or "{}")
        except FileNotFoundError:
            rules = {}
        rules[normalise_address(address)] = action
        tmp = self.rules_file.with_name(f".{self.rules_file.name}.tmp")
        tmp.write_text(json.dumps(rules, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.rules_file)

    def messages(self) -> list[Captured]:
        return read_maildir(self.maildir)

    def attempts(self) -> list[dict[str, Any]]:
        """Every answer given to a recipient so far (see :func:`read_attempts`)."""
        return read_attempts(self.attempts_file)

    def connections(self) -> list[dict[str, Any]]:
        """Every SMTP connection closed so far: conn, ip, opened, closed."""
        return read_attempts(self.connections_file)

    def count(self) -> int:
        return count_messages(self.maildir)


if __name__ == "__main__":
    sys.exit(main())
