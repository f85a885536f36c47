"""Small helpers shared by tests that drive real processes."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

# 355 real bounce and non-bounce messages with labels (sisimai's set-of-emails, BSD 2-Clause:
# tests/corpus/bounces/LICENSE.set-of-emails), kept in the repository so a clean clone tests alone.
BOUNCE_CORPUS = Path(__file__).resolve().parent / "corpus" / "bounces"


def on_database(backend: str) -> pytest.MarkDecorator:
    """Runs a test on one database backend instead of both. For the slow tests whose subject is
    not the database (a real host provisioned in minutes): the panel's database code runs on
    both backends in the panel's own tests, so a second provisioning of a host proves nothing new."""
    return pytest.mark.parametrize("db_backend", [backend], indirect=True, scope="session")


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.1) -> Any:
    """Call `check` until it returns something truthy and return that; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# Virtual file systems and this sandbox's own tool mount: nothing a test run writes lands there.
_NOT_FILES = ("/proc", "/sys", "/dev", "/mnt/sandboxing")


def files_containing(needle: bytes, changed_since: float) -> list[str]:
    """Every regular file on this machine changed since `changed_since` (epoch seconds) that
    holds `needle`: a leak can only be in a file something wrote while the test ran.

    One `find` over the whole tree (a few seconds), then each candidate is read in chunks
    that overlap by len(needle), so a needle split across two reads is still found.
    """
    prune = [arg for path in _NOT_FILES for arg in ("-o", "-path", path)][1:]
    found = subprocess.run(
        ["find", "/", "(", *prune, ")", "-prune", "-o", "-type", "f",
         "-newerct", f"@{int(changed_since) - 1}", "-print0"],
        capture_output=True, check=False, timeout=300,
    )
    hits = []
    for raw in found.stdout.split(b"\0"):
        if raw and file_holds(raw.decode(errors="surrogateescape"), needle):
            hits.append(raw.decode(errors="replace"))
    return hits


def file_holds(path: str | Path, needle: bytes, chunk: int = 1 << 20) -> bool:
    try:
        with open(path, "rb") as handle:
            tail = b""
            while block := handle.read(chunk):
                if needle in tail + block:
                    return True
                tail = block[-len(needle):]
    except OSError:  # gone already, or a socket/fifo renamed in: nothing to read
        return False
    return False


def process_texts() -> Iterator[tuple[int, str, bytes]]:
    """(pid, "cmdline" | "environ", its bytes) of every process that can still be read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for part in ("cmdline", "environ"):
            try:
                yield int(entry.name), part, (entry / part).read_bytes()
            except OSError:  # gone meanwhile
                continue
