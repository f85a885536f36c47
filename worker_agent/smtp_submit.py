"""Submitting one letter over SMTP to the local Exim and reading its queue id from the reply.

Right before a letter's transaction starts, ``submit`` calls ``offer`` with the connection's local
port; the sender marks the letter 'submitting' on disk there (reconcile.py), and a letter it no
longer holds is not sent. A connection lost once DATA began leaves the letter's fate open
("unknown"): Exim may have taken it, so it is reconciled, never simply offered again."""

from __future__ import annotations

import re
import smtplib
import time
from collections.abc import Callable
from dataclasses import dataclass

from .render import Letter

_EXIM_ID = re.compile(rb"\bid=([0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4})\b")
IDLE_RECONNECT = 30.0  # s: Exim may have dropped an idle connection, open a fresh one


@dataclass(frozen=True, slots=True)
class Outcome:
    # "sent" | "failed" (refused for good) | "retry" (4xx, connection lost before DATA) | "unreachable"
    # | "unknown" (connection lost after DATA began: Exim may have it) | "withdrawn" (not ours any more)
    kind: str
    code: int | None
    text: str
    exim_id: str | None = None


class EximSubmitter:
    """One SMTP connection, used for letter after letter (one per sender thread)."""

    def __init__(self, host: str, port: int, helo: str, timeout: float = 60.0) -> None:
        self.host, self.port, self.helo, self.timeout = host, port, helo, timeout
        self._smtp: smtplib.SMTP | None = None
        self._last_used = 0.0

    def close(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                self._smtp.close()
            self._smtp = None

    @property
    def local_port(self) -> int | None:
        """The local port of the open connection (None: none open)."""
        try:
            return self._smtp.sock.getsockname()[1] if self._smtp is not None and self._smtp.sock else None
        except OSError:
            return None

    def submit(self, letter: Letter, offer: Callable[[int | None], bool] = lambda port: True) -> Outcome:
        """``offer(local port)`` is called right before the transaction starts; False: not sent."""
        fresh = self._smtp is None or time.monotonic() - self._last_used > IDLE_RECONNECT
        if fresh:
            self.close()
            try:
                # local_hostname given: smtplib would otherwise call socket.getfqdn()
                self._smtp = smtplib.SMTP(self.host, self.port, local_hostname=self.helo, timeout=self.timeout)
                self._smtp.ehlo_or_helo_if_needed()  # smtplib's low-level mail() does not greet by itself
            except (OSError, smtplib.SMTPException) as exc:
                self._drop()
                return Outcome("unreachable", None, f"local Exim at {self.host}:{self.port} unreachable: {exc}")
        if not offer(self.local_port):
            return Outcome("withdrawn", None, "no longer held by this sender")
        try:
            outcome = self._transaction(letter)
        except smtplib.SMTPServerDisconnected as exc:
            self._smtp = None
            if getattr(exc, "after_data", False):
                return Outcome("unknown", None, f"connection to local Exim lost during DATA: {exc}")
            if not fresh:
                return self.submit(letter, offer)  # an old connection Exim had closed: nothing was sent yet
            return Outcome("retry", None, f"connection to local Exim lost: {exc}")
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            if getattr(exc, "after_data", False):
                return Outcome("unknown", None, f"connection to local Exim failed during DATA: {exc}")
            return Outcome("retry", None, f"connection to local Exim failed: {exc}")
        self._last_used = time.monotonic()
        return outcome

    def _transaction(self, letter: Letter) -> Outcome:
        smtp = self._smtp
        assert smtp is not None
        code, reply = smtp.mail(letter.envelope_from)
        if code == 250:
            code, reply = smtp.rcpt(letter.recipient)
        if code not in (250, 251):
            self._rset()
            return _refused(code, reply)
        try:
            code, reply = smtp.data(letter.data)
        except smtplib.SMTPDataError as exc:  # refused the DATA command itself
            self._rset()
            return _refused(exc.smtp_code, exc.smtp_error)
        except (OSError, smtplib.SMTPException) as exc:
            # the end of the letter may have reached Exim: whether it took it is not known here
            exc.after_data = True  # type: ignore[attr-defined]
            raise
        if code != 250:
            return _refused(code, reply)
        found = _EXIM_ID.search(reply)
        return Outcome("sent", code, _text(code, reply), found.group(1).decode() if found else None)

    def _rset(self) -> None:
        """End a refused transaction; a connection that cannot even do that is dropped."""
        try:
            assert self._smtp is not None
            self._smtp.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()

    def _drop(self) -> None:
        if self._smtp is not None:
            try:
                self._smtp.close()
            except OSError:
                pass
        self._smtp = None


def _text(code: int, reply: bytes) -> str:
    return f"{code} {reply.decode('utf-8', 'replace')}".replace("\n", " ")


def _refused(code: int, reply: bytes) -> Outcome:
    """5xx: refused for good; anything else (4xx, odd codes): try again later."""
    return Outcome("failed" if 500 <= code < 600 else "retry", code, _text(code, reply))

