"""Opaque per-letter tokens: used in VERP return paths and unsubscribe links.

A token is `<delivery id>-<16 hex of HMAC>`: 64 bits, so nobody unsubscribes someone else (or
reports a bounce for them) by guessing; lowercase hex and digits only, as it sits in an SMTP local
part (`bounce+<token>@`, `unsubscribe+<token>@`) that some MTAs case-fold.

Letters sent before migration 6d1f0c3b8a27 carry `<delivery id>-<10 hex>` (the first 40 bits of the
same HMAC). Their unsubscribe links and addresses must keep working (the law says so in many
places), so that short form is still accepted, but only for a delivery up to the id the migration
recorded (`ShortTokenCutoff`): a letter made since answers to its 64-bit token alone.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from sqlalchemy import select

from ..extensions import db
from ..models import ShortTokenCutoff

MAC_HEX = 16  # 64 bits
SHORT_MAC_HEX = 10  # 40 bits: letters made before the change only
_TOKEN = re.compile(r"([0-9]{1,18})-([0-9a-f]+)\Z")


def _mac(secret: str, delivery_id: int) -> str:
    return hmac.new(secret.encode(), f"delivery:{delivery_id}".encode(), hashlib.sha256).hexdigest()


def delivery_token(secret: str, delivery_id: int) -> str:
    return f"{delivery_id}-{_mac(secret, delivery_id)[:MAC_HEX]}"


def short_token_cutoff() -> int:
    """The newest delivery whose 40-bit token is still accepted (0: none)."""
    return db.session.scalar(select(ShortTokenCutoff.max_id).where(ShortTokenCutoff.kind == "delivery")) or 0


def delivery_id_from_token(secret: str, token: str) -> int | None:
    """The delivery id a genuine token names, or None for anything forged or malformed."""
    match = _TOKEN.match(token.lower())  # a case-folded local part is the same token
    if match is None:
        return None
    delivery_id, mac = int(match.group(1)), match.group(2)
    if len(mac) == MAC_HEX:
        return delivery_id if hmac.compare_digest(mac, _mac(secret, delivery_id)[:MAC_HEX]) else None
    if len(mac) == SHORT_MAC_HEX and hmac.compare_digest(mac, _mac(secret, delivery_id)[:SHORT_MAC_HEX]):
        # the database is asked only once the short MAC matched: a guess costs no query
        return delivery_id if delivery_id <= short_token_cutoff() else None
    return None
