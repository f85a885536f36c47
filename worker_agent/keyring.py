"""The agent's keys (``key_file``), so the panel can replace the key without downtime.

The file holds one key a line, newest first; an older key may carry the Unix time after which
it no longer opens anything (``KEY RETIRE_AT``). The panel hands a new key in a message sealed
with the current one (``POST /v1/key``): it goes first in the file and both open messages. Once
a message sealed with the newest key arrives (the panel switched), every older key retires
``grace`` seconds later: the panel's calls already under way with the old key still open.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from .config import ConfigError

GRACE = 300  # seconds the old keys still open after the panel first used the new one (key_grace)


class KeyRing:
    def __init__(self, path: Path, grace: int = GRACE) -> None:
        self.path, self.grace = path, grace
        self._lock = threading.Lock()
        self._entries = self._read()

    def _read(self) -> list[tuple[bytes, float | None]]:
        try:
            lines = self.path.read_bytes().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read key_file {self.path}: {exc.strerror}; run `python -m worker_agent init`") from None
        entries: list[tuple[bytes, float | None]] = []
        for line in lines:
            parts = line.split()
            if parts:
                entries.append((parts[0], float(parts[1]) if len(parts) > 1 else None))
        if not entries:
            raise ConfigError(f"key_file {self.path} holds no key; run `python -m worker_agent init`")
        return entries

    def _write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".new")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            for key, retire_at in self._entries:
                f.write(key + (b" %d" % retire_at if retire_at is not None else b"") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def keys(self, now: float | None = None) -> list[bytes]:
        """The keys that open messages now, newest first."""
        now = time.time() if now is None else now
        return [key for key, retire_at in self._entries if retire_at is None or retire_at > now]

    def add(self, key: bytes) -> None:
        """The panel's new key, first in the file; the others stay until it is used."""
        with self._lock:
            if self._entries[0][0] == key:
                return  # handed again (the panel did not see the first answer)
            self._entries = [(key, None), *[(k, r) for k, r in self._entries if k != key]]
            self._write()

    def used(self, key: bytes, now: float | None = None) -> None:
        """A message was opened with ``key``: the newest one means the panel switched to it."""
        entries = self._entries
        if key != entries[0][0] or len(entries) == 1:
            return  # the usual case: one key, nothing to retire
        now = time.time() if now is None else now
        with self._lock:
            older = [(k, r if r is not None else now + self.grace) for k, r in self._entries[1:]]
            kept = [self._entries[0], *[(k, r) for k, r in older if r > now]]
            if kept != self._entries:
                self._entries = kept
                self._write()
