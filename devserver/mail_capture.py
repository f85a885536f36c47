"""A stand-in for the recipients' mail servers: an SMTP server that keeps what it gets.

Run as its own process::

    python -m devserver.mail_capture --listen 127.0.0.1:2526 --maildir DIR [--rules FILE]

Every accepted message is written into the Maildir DIR once per recipient
(tmp/ then renamed into new/, so a reader never sees half a message), with
trace headers in front recording what the recipients' server saw::

    X-Capture-Peer: 127.0.0.2               client IP of the SMTP connection
    X-Capture-Helo: ip2.worker.test         its HELO/EHLO name
    X-Capture-Mail-From: bounce+t@b.test    envelope sender (<> for the null sender)
    X-Capture-Rcpt-To: ann@example.org      the one recipient this file is for

The rules file is JSON, ``{"address@x": "accept" | "defer" | "reject"}``, re-read
whenever it changes; a deferred recipient gets ``451 4.2.0 <address>: mailbox busy,
try later``, a rejected one ``550 5.1.1 <address>: no such user``, any other is accepted.

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
import time
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
TRACE_HEADERS = ("X-Capture-Peer", "X-Capture-Helo", "X-Capture-Mail-From", "X-Capture-Rcpt-To")
SERVER_NAME = "capture.localhost"
READY_PREFIX = "mail capture listening on "

log = logging.getLogger("mailfleet.mail_capture")


# -- the server process ---------------------------------------------------------


class Rules:
    """Per-address behaviour from a JSON file, re-read when the file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._signature: tuple[int, int, int] | None = None
        self._rules: dict[str, str] = {}

    def action(self, address: str) -> str:
        self._refresh()
        return self._rules.get(normalise_address(address), "accept")

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


def parse_rules(data: Any) -> dict[str, str]:
    if not isinstance(data, dict):
        raise ValueError("the rules file must hold a JSON object {address: action}")
    rules = {}
    for address, action in data.items():
        if action not in ACTIONS:
            raise ValueError(f"{address}: action {action!r} is not one of {', '.join(ACTIONS)}")
        rules[normalise_address(address)] = action
    return rules


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


class CaptureHandler:
    """aiosmtpd hooks: rules at RCPT, one Maildir file per recipient at DATA."""

    def __init__(self, maildir: MaildirWriter, rules: Rules) -> None:
        self.maildir = maildir
        self.rules = rules

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        action = self.rules.action(address)
        if action == "defer":
            return f"451 4.2.0 <{address}>: mailbox busy, try later"
        if action == "reject":
            return f"550 5.1.1 <{address}>: no such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        if isinstance(content, str):
            content = content.encode("utf-8", "surrogateescape")
        body = content.replace(b"\r\n", b"\n")
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        common = (
            f"X-Capture-Peer: {peer}\n"
            f"X-Capture-Helo: {session.host_name or ''}\n"
            f"X-Capture-Mail-From: {envelope.mail_from or '<>'}\n"
        ).encode("utf-8", "surrogateescape")
        names = []
        try:
            for rcpt in envelope.rcpt_tos:
                trace = f"X-Capture-Rcpt-To: {rcpt}\n".encode("utf-8", "surrogateescape")
                names.append(self.maildir.deliver(common + trace + body))
        except OSError as exc:
            log.error("could not store a message: %s", exc)
            return "451 4.3.0 capture could not store the message, try later"
        return f"250 2.0.0 OK queued as {names[0] if names else 'nothing'}"


class CaptureSMTP(SMTP):
    """aiosmtpd's server with a faster DATA: the message is read in large pieces.

    aiosmtpd reads DATA one line at a time, several microseconds of Python per line,
    which held a single connection under 1,000 letters/s. The reply texts, the
    checks before DATA and the handler hook are the same.
    """

    line_length_limit = 1 << 16  # the reader's buffer limit: DATA comes in pieces of up to this

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


async def serve(host: str, port: int, maildir: Path, rules_file: Path | None) -> None:
    loop = asyncio.get_running_loop()
    handler = CaptureHandler(MaildirWriter(maildir), Rules(rules_file))

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
    parser.add_argument("--rules", type=Path, default=None, help='JSON file {"address": "accept"|"defer"|"reject"}')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="mail_capture: %(levelname)s %(message)s")
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
    host, port = args.listen
    asyncio.run(serve(host, port, args.maildir.absolute(), args.rules.absolute() if args.rules else None))
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


# -- driving the server from Python ---------------------------------------------------


class CaptureServer:
    """Runs `python -m devserver.mail_capture` as a child process; a context manager."""

    def __init__(
        self, maildir: Path, *, host: str = "127.0.0.1", port: int = 0, rules_file: Path | None = None
    ) -> None:
        self.maildir = Path(maildir).absolute()
        self.host = host
        self.port = port
        self.rules_file = (rules_file or self.maildir.with_name(self.maildir.name + ".rules.json")).absolute()
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
             "--maildir", str(self.maildir), "--rules", str(self.rules_file)],
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

    def set_rule(self, address: str, action: str) -> None:
        """Make the server accept, defer or reject `address` from the next RCPT on."""
        if action not in ACTIONS:
            raise ValueError(f"action {action!r} is not one of {', '.join(ACTIONS)}")
        try:
            rules = json.loads(self.rules_file.read_text(encoding="utf-8") or "{}")
        except FileNotFoundError:
            rules = {}
        rules[address] = action
        tmp = self.rules_file.with_name(f".{self.rules_file.name}.tmp")
        tmp.write_text(json.dumps(rules, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, self.rules_file)

    def messages(self) -> list[Captured]:
        return read_maildir(self.maildir)

    def count(self) -> int:
        return count_messages(self.maildir)


if __name__ == "__main__":
    sys.exit(main())
