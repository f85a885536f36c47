"""Free TCP ports for the local services that tests and `make run` start."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that nothing listens on right now.

    The port is only free at the moment of the call: start the service on it
    promptly (and retry with another port if it was taken in between).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_listening(process: subprocess.Popen, port: int, name: str, timeout: float = 30.0, hint: str = "") -> None:
    """Return once something accepts connections on 127.0.0.1:`port`; RuntimeError naming `name`
    (and `hint`, e.g. where its log is) if `process` exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}{hint}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{name} did not listen on port {port} within {timeout:.0f} s{hint}")
