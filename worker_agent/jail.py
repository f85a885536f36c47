"""Rendering in a child process with memory and CPU limits, for the panel's previews and save checks.

The panel must not render a user's template in its own web process: one template past a limit,
or finding a way around one, would slow or starve every other user's pages. So each job runs in
a fresh child forked from a small fork server (this module run as ``python -m worker_agent.jail``,
with only Jinja and the renderer loaded), started once per panel process on first use:

- the child sets RLIMIT_AS (``MEMORY_LIMIT``) and RLIMIT_CPU and an alarm, renders, answers, exits;
  it shares nothing with the next job;
- the caller waits ``WALL_SECONDS`` at most, then kills the child; a child that died (memory, CPU,
  a kill) is a ``JailError`` with a message for the user, and the next job gets a new child;
- a dead fork server is started again on the next job.

A job is ``(kind, data)`` for one of the functions in ``JOBS``; the answer is their JSON result.
A fork costs about a millisecond or two; the fork server's first start about 0.1-0.2 s.
"""

from __future__ import annotations

import atexit
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

MEMORY_LIMIT = 256 << 20  # bytes of address space a render child may map
CPU_SECONDS = 2  # RLIMIT_CPU of a child (the render itself stops at 1 s: template_limits)
WALL_SECONDS = 3.0  # how long the caller waits before it kills the child
MAX_JOB = 16 << 20  # bytes of a job's JSON
MAX_ANSWER = 64 << 20  # bytes of an answer's JSON

_REPO = Path(__file__).resolve().parent.parent
_KEPT_ENV = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "TZ")


class JailError(Exception):
    """The render child did not answer: out of memory or time, or killed."""


# -- the jobs (run in the child) -------------------------------------------------------------

def _letter(data: dict[str, Any]) -> dict[str, Any]:
    """One letter as the agent would build it, taken apart for display."""
    import email
    import email.policy

    from .render import CampaignError, Renderer, RenderError

    try:
        letter = Renderer().render(data["campaign"], data["recipient"])
    except (CampaignError, RenderError) as exc:
        return {"error": str(exc)}
    message = email.message_from_bytes(letter.data, policy=email.policy.default)
    answer: dict[str, Any] = {"raw": letter.data.decode("ascii"), "text": None, "html": None,
                              "headers": [(name, str(value)) for name, value in message.items()]}
    for part in message.walk():
        if part.is_multipart():
            continue
        if part.get_content_type() == "text/plain" and answer["text"] is None:
            answer["text"] = part.get_content()
        elif part.get_content_type() == "text/html" and answer["html"] is None:
            answer["html"] = part.get_content()
    return answer


def _limits(data: dict[str, Any]) -> dict[str, Any]:
    from .render import limit_problems

    return {"problems": limit_problems(data["parts"], data["variables"])}


JOBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"letter": _letter, "limits": _limits}


# -- the child and the fork server ---------------------------------------------------------

def _read_all(sock: socket.socket, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise JailError("too large")
        chunks.append(chunk)


def _child(conn: socket.socket) -> None:
    for kind, limit in ((resource.RLIMIT_AS, MEMORY_LIMIT), (resource.RLIMIT_CPU, CPU_SECONDS)):
        hard = resource.getrlimit(kind)[1]  # never above what the panel itself was given
        hard = limit + (kind == resource.RLIMIT_CPU) if hard == resource.RLIM_INFINITY else min(hard, limit + 1)
        resource.setrlimit(kind, (min(limit, hard), hard))
    signal.alarm(int(WALL_SECONDS) + 2)  # a child the caller forgot still ends
    conn.sendall(f"{os.getpid()}\n".encode())
    try:
        kind, data = json.loads(_read_all(conn, MAX_JOB))
        answer = {"ok": JOBS[kind](data)}
    except MemoryError:
        answer = {"fault": "memory"}
    except Exception as exc:  # noqa: BLE001 (reported to the caller, which says what failed)
        answer = {"fault": f"{type(exc).__name__}: {exc}"[:500]}
    conn.sendall(json.dumps(answer).encode())


def serve(control_fd: int) -> None:
    """The fork server: a child per socket the caller passes over ``control_fd``; ends with it."""
    import email.policy  # noqa: F401  (loaded once here, shared by every child)

    from . import render  # noqa: F401
    email.message_from_bytes(b"Subject: warm\r\n\r\nup\r\n", policy=email.policy.default).items()

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    control = socket.socket(fileno=control_fd)
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(control, 1, 1)
        except InterruptedError:
            continue
        if not fds:
            return  # the panel process is gone
        if os.fork() == 0:
            control.close()
            try:
                _child(socket.socket(fileno=fds[0]))
            finally:
                os._exit(0)
        os.close(fds[0])


# -- the caller's side (the panel) ----------------------------------------------------------

class _Server:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.control: socket.socket | None = None
        self.process: subprocess.Popen | None = None
        self.pid = 0  # the process that started it: a forked web worker starts its own
        atexit.register(self.stop)

    def stop(self) -> None:
        """End this process's fork server (closing the control socket ends it) and reap it."""
        with self.lock:
            control, process = self.control, self.process
            self.control = self.process = None
            if control is None or self.pid != os.getpid():
                return  # not started, or started by the process this one was forked from
            control.close()
            if process is not None:
                try:
                    process.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

    def _start(self) -> socket.socket:
        ours, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker_agent.jail", str(theirs.fileno())], pass_fds=[theirs.fileno()],
            cwd=_REPO, stdin=subprocess.DEVNULL, close_fds=True,
            # none of the panel's settings (database URL, keys): a render needs none of them
            env={name: value for name, value in os.environ.items() if name in _KEPT_ENV})
        theirs.close()
        self.control, self.pid = ours, os.getpid()
        return ours

    def hand_over(self, sock: socket.socket) -> None:
        """Give the server one end of a job's socket pair, starting the server if needed."""
        with self.lock:
            for attempt in (1, 2):
                control = self.control
                if control is None or self.pid != os.getpid() or (self.process and self.process.poll() is not None):
                    control = self._start()
                try:
                    socket.send_fds(control, [b"j"], [sock.fileno()])
                    return
                except OSError:
                    self.control = None
                    if attempt == 2:
                        raise JailError("the render process could not be started") from None


_server = _Server()


def run(kind: str, data: dict[str, Any], wall_seconds: float = WALL_SECONDS) -> dict[str, Any]:
    """Run job ``kind`` on ``data`` in a fresh limited child; its answer, or JailError."""
    ours, theirs = socket.socketpair()
    try:
        _server.hand_over(theirs)
        theirs.close()
        ours.sendall(json.dumps([kind, data]).encode())
        ours.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + wall_seconds
        buffer, pid = b"", 0
        while True:
            ours.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = ours.recv(1 << 16)
            except TimeoutError:
                if pid:
                    _kill(pid)
                raise JailError(f"it took longer than {wall_seconds:g} s and was stopped") from None
            if not chunk:
                break
            buffer += chunk
            if not pid and b"\n" in buffer:
                head, buffer = buffer.split(b"\n", 1)
                pid = int(head)
            if len(buffer) > MAX_ANSWER:
                _kill(pid)
                raise JailError("its answer was too large")
    finally:
        ours.close()
        theirs.close()
    try:
        answer = json.loads(buffer)
    except ValueError:
        raise JailError(f"it ran out of memory ({MEMORY_LIMIT >> 20} MB) or CPU time, or was killed") from None
    if "fault" in answer:
        if answer["fault"] == "memory":
            raise JailError(f"it needed more than {MEMORY_LIMIT >> 20} MB of memory")
        raise JailError(f"it failed: {answer['fault']}")
    return answer["ok"]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


if __name__ == "__main__":
    serve(int(sys.argv[1]))
