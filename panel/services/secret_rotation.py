"""Rotating the secrets key without downtime: a new key first in the key file, every sealed
secret re-sealed under it, then the old keys dropped once nothing needs them.

While both keys are in the file the panel and the daemon open secrets sealed under either (they
read the file again when it changes), so nothing stops; a process that sealed something under the
old key in between is caught by the second pass of `finish_rotation`.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken
from flask import current_app
from sqlalchemy import select

from ..extensions import db
from ..models import Domain, Server
from . import secret_box

# Every column holding a secret sealed by secret_box.
SEALED_COLUMNS = ((Domain, "tsig_secret"), (Domain, "dkim_private_key"), (Server, "agent_key"),
                  (Server, "agent_key_next"))


class RotationError(RuntimeError):
    """The keys cannot be rotated as asked; the message says why and what to do."""


def _key_file():
    if current_app.config.get("SECRETS_KEY"):
        raise RotationError("the secrets key comes from the setting SECRETS_KEY (MAILFLEET_SECRETS_KEY), which "
                            "this command cannot change: move it into a file named by SECRETS_KEY_FILE and run again")
    return secret_box.key_file()


def add_new_key() -> int:
    """Put a new key first in the key file (the old ones stay, for opening); returns how many keys it holds."""
    path = _key_file()
    keys = [Fernet.generate_key(), *secret_box.read_keys(path)]
    secret_box.write_keys(path, keys)
    return len(keys)


def reseal_all(only_stale: bool = False) -> int:
    """Seal every stored secret again under the newest key (only_stale: those the newest key alone
    cannot open); flushes and returns how many were re-sealed."""
    newest = Fernet(secret_box.read_keys(_key_file())[0])
    count = 0
    for model, name in SEALED_COLUMNS:
        column = getattr(model, name)
        for row in db.session.scalars(select(model).where(column.is_not(None)).order_by(model.id)):
            token = getattr(row, name)
            if only_stale and _opens(newest, token):
                continue
            setattr(row, name, secret_box.reseal(token))
            count += 1
    db.session.flush()
    return count


def drop_old_keys() -> None:
    """Keep only the newest key, once every secret opens with it (RotationError otherwise)."""
    path = _key_file()
    keys = secret_box.read_keys(path)
    newest = Fernet(keys[0])
    for model, name in SEALED_COLUMNS:
        column = getattr(model, name)
        for token in db.session.scalars(select(column).where(column.is_not(None))):
            if not _opens(newest, token):
                raise RotationError("a secret is still sealed under an old key: run `secrets rotate --finish` again")
    secret_box.write_keys(path, keys[:1])


def _opens(fernet: Fernet, token: str) -> bool:
    try:
        fernet.decrypt(token.encode())
    except InvalidToken:
        return False
    return True
