"""The panel <-> agent wire format: every body is Fernet(zlib(JSON)) under the worker's key.

Both sides import this module, so the panel and the agent can never disagree on it.
A sealed message carries the endpoint path it was meant for (a body captured for one
endpoint cannot be replayed against another) and a random nonce, which the receiver
remembers for MAX_AGE seconds to refuse replays. Fernet's own timestamp bounds the age.
A reply is sealed with the request's nonce as ``reply_to`` so the panel can tell that
the answer belongs to its question.
"""

from __future__ import annotations

import json
import secrets
import time
import zlib
from dataclasses import dataclass
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

CONTENT_TYPE = "application/vnd.mailfleet.sealed"
MAX_AGE = 120  # seconds a sealed message stays acceptable; nonces are kept as long
CLOCK_SKEW = 60  # seconds a sender's clock may run ahead of ours


class ProtocolError(Exception):
    """A message that must be refused; ``reason`` is safe to show and to log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Opened:
    nonce: str
    sent_at: int
    data: Any
    reply_to: str | None


def new_key() -> bytes:
    return Fernet.generate_key()


def seal(key: bytes, path: str, data: Any, *, reply_to: str | None = None) -> tuple[str, bytes]:
    """Return (nonce, token) for ``data`` addressed to ``path``."""
    nonce = secrets.token_hex(16)
    envelope = {"path": path, "nonce": nonce, "data": data}
    if reply_to is not None:
        envelope["reply_to"] = reply_to
    raw = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
    return nonce, Fernet(key).encrypt(zlib.compress(raw, 1))


def unseal_any(keys: list[bytes], path: str, token: bytes, **limits: Any) -> tuple[bytes, Opened]:
    """Like ``unseal`` (same keyword limits) with the first of ``keys`` (newest first) whose signature
    matches; returns it too, so the reply is sealed with the key the sender used (while the key is
    being replaced)."""
    for key in keys:
        try:
            Fernet(key).extract_timestamp(token)  # checks the signature only
        except InvalidToken:
            continue
        return key, unseal(key, path, token, **limits)
    raise ProtocolError("message is not sealed with this worker's key or was altered")


def unseal(key: bytes, path: str, token: bytes, *, max_age: int = MAX_AGE, now: float | None = None,
           max_inflated: int | None = None, max_values: int | None = None) -> Opened:
    """Decrypt and check a sealed message; raise ProtocolError with a plain reason.

    A receiver that does not trust the sender bounds what opening costs: ``max_inflated`` bytes
    of JSON at most (a zlib bomb is refused after inflating that much, not all of it) and
    ``max_values`` JSON values (a 32 MiB "[[],[],…" would become a gigabyte of Python lists).
    """
    fernet = Fernet(key)
    try:
        sent_at = fernet.extract_timestamp(token)
        plain = fernet.decrypt(token)  # no ttl here: age is checked below with a clearer reason
    except InvalidToken:
        raise ProtocolError("message is not sealed with this worker's key or was altered") from None
    now = time.time() if now is None else now
    if sent_at < now - max_age:
        raise ProtocolError(f"message is stale (sent {int(now - sent_at)} s ago, limit {max_age} s)")
    if sent_at > now + CLOCK_SKEW:
        raise ProtocolError("message is dated in the future: check both clocks")
    try:
        raw = _inflate(plain, max_inflated)
    except zlib.error:
        raise ProtocolError("message body is not compressed JSON") from None
    if max_values is not None and _too_many_values(raw, max_values):
        raise ProtocolError(f"message holds more than {max_values} JSON values")
    try:
        envelope = json.loads(raw)
    except ValueError:
        raise ProtocolError("message body is not compressed JSON") from None
    except RecursionError:
        raise ProtocolError("message body nests JSON too deeply") from None
    if b"\\u" in raw and _lone_surrogate(envelope):
        raise ProtocolError("message body holds text that is not Unicode (a lone surrogate escape)")
    if not isinstance(envelope, dict) or envelope.get("path") != path:
        raise ProtocolError(f"message was not meant for {path}")
    nonce = envelope.get("nonce")
    if not isinstance(nonce, str) or not nonce:
        raise ProtocolError("message has no nonce")
    return Opened(nonce=nonce, sent_at=sent_at, data=envelope.get("data"), reply_to=envelope.get("reply_to"))


def _lone_surrogate(value: Any) -> bool:
    """Whether JSON's \\uD800-style escapes left half a character in a string (no UTF-8 holds one:
    SQLite and every encoder downstream would fail on it). Only looked at when escapes are present."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n and n % (1 << 20) == 0 else f"{n} bytes"


def _inflate(data: bytes, limit: int | None) -> bytes:
    """zlib-inflate ``data``, refusing output past ``limit`` bytes without producing the rest."""
    if limit is None:
        return zlib.decompress(data)
    inflater = zlib.decompressobj()
    out = inflater.decompress(data, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise ProtocolError(f"message inflates to more than {_size(limit)}")
    if not inflater.eof:
        raise zlib.error("truncated")
    return out


_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'",[{')))
_WINDOW = 1 << 20


def _too_many_values(raw: bytes, limit: int) -> bool:
    """Whether the JSON text holds more than ``limit`` values, counting its commas, brackets and
    braces outside strings (each about one Python object once parsed). A string's own commas do not
    count, so bounces full of text pass. Read in windows: counting costs a few MiB at most."""
    if raw.count(b",") + raw.count(b"[") + raw.count(b"{") <= limit:
        return False  # even counting those inside strings
    count, inside, start = 0, False, 0
    while start < len(raw):
        end = min(start + _WINDOW, len(raw))
        window = raw[start:end]
        end += (len(window) - len(window.rstrip(b"\\"))) % 2  # never end a window inside an escape
        # Escaped backslashes, then escaped quotes, go first: neither ends a string.
        marks = raw[start:end].replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
        for at in range(0, len(marks), 1 << 16):
            pieces = marks[at:at + (1 << 16)].split(b'"')
            count += sum(map(len, pieces[1 if inside else 0::2]))
            inside ^= len(pieces) % 2 == 0  # an odd number of quotes in this piece
        if count > limit:
            return True
        start = end
    return False
