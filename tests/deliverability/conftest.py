"""SpamAssassin's spamd on a loopback port for the deliverability checks, and the e2e helpers.

spamd runs with local tests only (`-L`: no DNS blocklists, no network) and no per-user
settings (`-x`), under a Popen of the session: it is stopped at teardown whether the tests
passed or not, its children with it (they share its process group).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devserver.ports import free_port

# The e2e fixtures (api, panel_rows, …) for the letters sent through the whole system.
from tests.e2e.conftest import Api, api, panel_db, panel_engine, panel_rows  # noqa: F401

_HIT = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s+([A-Z][A-Z0-9_]+)\s", re.MULTILINE)


@dataclass(frozen=True)
class Verdict:
    score: float  # SpamAssassin's total
    hits: dict[str, float]  # rule name -> points
    report: str  # spamc -R as printed, for failure messages

    def __str__(self) -> str:
        return self.report


class Spamd:
    def __init__(self, port: int) -> None:
        self.port = port

    def check(self, message: bytes) -> Verdict:
        """`spamc -R` on one message: the score and every rule it hit."""
        done = subprocess.run(
            ["spamc", "-d", "127.0.0.1", "-p", str(self.port), "-x", "-R"],
            input=message, capture_output=True, timeout=60,
        )
        out = done.stdout.decode("utf-8", "replace")
        first, _, report = out.partition("\n")
        if "/" not in first:
            raise AssertionError(f"spamc gave no score (exit {done.returncode}): {out} {done.stderr.decode()}")
        details = report.partition("Content analysis details:")[2]
        return Verdict(float(first.split("/")[0]),
                       {name: float(points) for points, name in _HIT.findall(details)}, out)


def _start(port: int, log: Path) -> subprocess.Popen:
    with log.open("ab") as sink:
        return subprocess.Popen(
            ["spamd", "-L", "-x", "-u", "nobody", "-i", f"127.0.0.1:{port}", "-m", "2", "-s", "stderr"],
            stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)  # its own group: spamd and the children it forked
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


@pytest.fixture(scope="session")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spamd]:
    if not (shutil.which("spamd") and shutil.which("spamc")):
        reason = "SpamAssassin is missing: apt-get install spamassassin spamc (make test does)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    log = tmp_path_factory.mktemp("spamd") / "spamd.log"
    for _attempt in range(3):  # the free port may be taken before spamd binds it
        port = free_port()
        process = _start(port, log)
        try:
            deadline = time.monotonic() + 90  # compiling the rules takes a few seconds on a busy machine
            while process.poll() is None and time.monotonic() < deadline:
                ping = subprocess.run(["spamc", "-d", "127.0.0.1", "-p", str(port), "-K"],
                                      capture_output=True, timeout=30)
                if ping.returncode == 0:
                    break
                time.sleep(0.2)
            else:
                if process.poll() is None:
                    raise AssertionError(f"spamd did not answer within 90 s:\n{log.read_text()}")
                if "in use" in log.read_text():
                    continue
                raise AssertionError(f"spamd stopped (exit {process.returncode}):\n{log.read_text()}")
            yield Spamd(port)
            return
        finally:
            _stop(process)
    raise AssertionError(f"spamd could not get a free port:\n{log.read_text()}")
