"""Secrets the panel must keep but never show (TSIG secrets, DKIM private keys, agent keys), sealed at rest.

Fernet under the keys of the instance: the setting ``SECRETS_KEY`` (``MAILFLEET_SECRETS_KEY``) if
given, else the file ``SECRETS_KEY_FILE`` (``MAILFLEET_SECRETS_KEY_FILE``; by default
``instance/secrets.key``, made once, 0600). Kept outside the instance folder, a copy of the
database or of that folder reveals no secret. The panel and the daemon read the same.

The file may hold several keys, one a line, newest first (MultiFernet): secrets are sealed with
the newest and opened with any, so `flask secrets rotate` can add a key, re-seal every secret
and then drop the old key while the panel and the daemon keep running; they read the file again
whenever it changes.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app

KEY_FILE = "secrets.key"

# (path, inode, mtime_ns, size) -> the keys read from it: the file is read again only when it changed.
_cache: dict[tuple[str, int, int, int], MultiFernet] = {}


class SecretBoxError(RuntimeError):
    """A sealed secret could not be opened (another instance's key, or damaged)."""


def key_file() -> Path:
    configured = current_app.config.get("SECRETS_KEY_FILE")
    return Path(configured) if configured else Path(current_app.instance_path) / KEY_FILE


def read_keys(path: Path) -> list[bytes]:
    """The keys in the file, newest first; the file is made (one key, 0600) when missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key() + b"\n")
    return path.read_bytes().split()


def write_keys(path: Path, keys: list[bytes]) -> None:
    """Replace the file's keys at once (a reader sees the old list or the new one, never half)."""
    tmp = path.with_name(path.name + ".new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"".join(key + b"\n" for key in keys))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def box() -> MultiFernet:
    configured = current_app.config.get("SECRETS_KEY")
    if configured:
        text = configured.decode() if isinstance(configured, bytes) else configured
        return MultiFernet([Fernet(key) for key in text.replace(",", " ").split()])
    path = key_file()
    read_keys(path)  # makes it when missing
    st = path.stat()
    ident = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    cached = _cache.get(ident)
    if cached is None:
        cached = MultiFernet([Fernet(key) for key in path.read_bytes().split()])
        _cache.clear()
        _cache[ident] = cached
    return cached


def seal(secret: str) -> str:
    return box().encrypt(secret.encode()).decode()


def unseal(token: str) -> str:
    try:
        return box().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretBoxError("a stored secret cannot be opened with this instance's key "
                             f"({KEY_FILE} or SECRETS_KEY was changed): enter it again") from None


def reseal(token: str) -> str:
    """The same secret sealed under the newest key (SecretBoxError if no key opens it)."""
    try:
        return box().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretBoxError("a stored secret cannot be opened with any of this instance's keys") from None
