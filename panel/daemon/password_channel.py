"""The root password's only way from the web view to the daemon: a Unix socket, memory to memory.

The daemon listens on `<instance>/daemon.sock` (mode 0600, so only its own user, and root,
may connect; peers of another uid are refused too). The web view connects, sends one JSON
line `{"job_id": N, "password": "…"}` and reads one JSON line back: `{"ok": true}` or
`{"ok": false, "error": "…"}`. The daemon keeps the password in a dict in memory until its
job's bootstrap run starts, then drops it. Nothing is written to the DB, a file or a log.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("panel.daemon.passwords")

SOCKET_NAME = "daemon.sock"
MAX_MESSAGE = 16 * 1024


class ChannelError(Exception):
    """The password could not be handed to the daemon; the message says why, for the user."""


def socket_path(instance_path: str | os.PathLike) -> Path:
    return Path(instance_path) / SOCKET_NAME


class PasswordStore:
    """Passwords by job id, in this process's memory only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._passwords: dict[int, str] = {}

    def put(self, job_id: int, password: str) -> None:
        with self._lock:
            self._passwords[job_id] = password

    def take(self, job_id: int) -> str | None:
        """The job's password, forgotten here as it is handed out."""
        with self._lock:
            return self._passwords.pop(job_id, None)

    def has(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._passwords

    def discard(self, job_id: int) -> None:
        with self._lock:
            self._passwords.pop(job_id, None)

    def clear(self) -> None:
        with self._lock:
            self._passwords.clear()


class PasswordChannel:
    """The daemon's listening side. `accepts(job_id)` says whether a job waits for a password
    (None) or why not (a message sent back to the view)."""

    def __init__(self, path: Path, store: PasswordStore, accepts: Callable[[int], str | None]) -> None:
        self.path = Path(path)
        self.store = store
        self.accepts = accepts
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._inode: int | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket is born 0600: no moment in which others may connect
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self._inode = self.path.stat().st_ino
        sock.listen(8)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="password-channel", daemon=True)
        self._thread.start()
        log.info("password channel listening on %s", self.path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._sock is not None:
            self._sock.close()
        try:
            # Only our own socket: a daemon that took provisioning over may listen at this path now.
            if self._inode is not None and self.path.stat().st_ino == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        self.store.clear()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            with conn:
                try:
                    conn.settimeout(5)
                    reply = self._handle(conn)
                except Exception:  # a broken client must not end the channel; never log what it sent
                    log.warning("password channel: a request could not be read")
                    reply = {"ok": False, "error": "the request could not be read"}
                try:
                    conn.sendall(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass

    def _handle(self, conn: socket.socket) -> dict:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", creds)
        if uid not in (0, os.getuid()):
            return {"ok": False, "error": "not allowed"}
        data = _read_line(conn)
        if data is None:
            return {"ok": False, "error": "message too long"}
        message = json.loads(data.decode())
        job_id, password = message.get("job_id"), message.get("password")
        if not isinstance(job_id, int) or not isinstance(password, str) or not password:
            return {"ok": False, "error": "send {\"job_id\": N, \"password\": \"…\"}"}
        refusal = self.accepts(job_id)
        if refusal:
            return {"ok": False, "error": refusal}
        self.store.put(job_id, password)
        log.info("password received for provisioning job %s", job_id)
        return {"ok": True}


def _read_line(sock: socket.socket) -> bytes | None:
    """One JSON line from the peer (or what came before it closed); None past MAX_MESSAGE."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_MESSAGE:
            return None
    return data


def send_password(path: str | os.PathLike, job_id: int, password: str, timeout: float = 10.0) -> None:
    """Hand a job's root password to the running daemon; ChannelError if it cannot take it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise ChannelError("the panel daemon is not running") from None
        except OSError as exc:
            raise ChannelError(f"the panel daemon could not be reached ({exc.strerror or exc})") from None
        sock.sendall(json.dumps({"job_id": job_id, "password": password}).encode() + b"\n")
        data = _read_line(sock) or b""
    except (TimeoutError, socket.timeout):
        raise ChannelError("the panel daemon did not answer in time") from None
    finally:
        sock.close()
    try:
        reply = json.loads(data.decode())
    except ValueError:
        raise ChannelError("the panel daemon gave no answer") from None
    if not reply.get("ok"):
        raise ChannelError(f"the panel daemon refused the password: {reply.get('error', 'no reason given')}")
