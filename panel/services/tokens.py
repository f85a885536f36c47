"""Opaque per-letter tokens: used in VERP return paths and unsubscribe links.

A token is `<delivery id>-<10 hex of HMAC>`: short enough for an SMTP local part,
and unforgeable, so nobody can unsubscribe someone else by guessing ids.
"""

from __future__ import annotations

import hashlib
import hmac


def _mac(secret: str, delivery_id: int) -> str:
    return hmac.new(secret.encode(), f"delivery:{delivery_id}".encode(), hashlib.sha256).hexdigest()[:10]


def delivery_token(secret: str, delivery_id: int) -> str:
    return f"{delivery_id}-{_mac(secret, delivery_id)}"


def delivery_id_from_token(secret: str, token: str) -> int | None:
    """The delivery id a genuine token names, or None for anything forged or malformed."""
    head, sep, mac = token.partition("-")
    if not sep or not head.isdigit() or len(head) > 18:
        return None
    delivery_id = int(head)
    return delivery_id if hmac.compare_digest(mac, _mac(secret, delivery_id)) else None
