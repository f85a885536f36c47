"""Small helpers for the child processes the devserver modules start."""

from __future__ import annotations

import subprocess


def end_child(process: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM a child still running, wait for it, and SIGKILL it if it does not end in `timeout` s."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)
