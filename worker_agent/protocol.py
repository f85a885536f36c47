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


def unseal(key: bytes, path: str, token: bytes, *, max_age: int = MAX_AGE, now: float | None = None) -> Opened:
    """Decrypt and check a sealed message; raise ProtocolError with a plain reason."""
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
        envelope = json.loads(zlib.decompress(plain))
    except (zlib.error, ValueError):
        raise ProtocolError("message body is not compressed JSON") from None
    if not isinstance(envelope, dict) or envelope.get("path") != path:
        raise ProtocolError(f"message was not meant for {path}")
    nonce = envelope.get("nonce")
    if not isinstance(nonce, str) or not nonce:
        raise ProtocolError("message has no nonce")
    return Opened(nonce=nonce, sent_at=sent_at, data=envelope.get("data"), reply_to=envelope.get("reply_to"))
