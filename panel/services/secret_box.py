"""Secrets the panel must keep but never show (TSIG secrets, DKIM private keys), sealed at rest.

Fernet under a key of the instance: the setting ``SECRETS_KEY`` (``MAILFLEET_SECRETS_KEY``) if
given, else ``instance/secrets.key`` (made once, 0600). The panel and the daemon read the same.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from flask import current_app

KEY_FILE = "secrets.key"


class SecretBoxError(RuntimeError):
    """A sealed secret could not be opened (another instance's key, or damaged)."""


def _key() -> bytes:
    configured = current_app.config.get("SECRETS_KEY")
    if configured:
        return configured.encode() if isinstance(configured, str) else configured
    path = Path(current_app.instance_path) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
    return path.read_bytes().strip()


def seal(secret: str) -> str:
    return Fernet(_key()).encrypt(secret.encode()).decode()


def unseal(token: str) -> str:
    try:
        return Fernet(_key()).decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretBoxError("a stored secret cannot be opened with this instance's key "
                             f"({KEY_FILE} or SECRETS_KEY was changed): enter it again") from None
