"""`make run`'s contract: the four lines, a working system behind them, and Ctrl-C stopping it all."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from devserver.ports import free_port
from devserver.stack import REPO
from tests.helpers import wait_for

LINES = ("Panel:", "Login:", "API token:", "Captured mail:")


def _read_banner(process: subprocess.Popen, timeout: float) -> dict[str, str]:
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while len(found) < len(LINES):
        assert time.monotonic() < deadline, f"make run printed only {found}"
        line = process.stdout.readline()
        assert line, f"make run exited ({process.poll()}) after printing {found}"
        for prefix in LINES:
            if line.startswith(prefix):
                found[prefix] = line[len(prefix):].strip()
    return found


def _ours(instance: Path) -> list[psutil.Process]:
    """Processes whose command line names this run's instance folder (Exim, agent, capture…)."""
    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(instance) in cmdline:
            mine.append(proc)
    return mine


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_private(instance: Path, sqlite: bool) -> None:
    """What `make run` keeps in its instance folder (the DB, keys, users' uploads) only its user reads."""
    assert _mode(instance) == 0o700, oct(_mode(instance))
    names = ["secret_key", "secrets.key"] + (["mailfleet.db", "mailfleet.db-wal", "mailfleet.db-shm"] if sqlite else [])
    for name in names:
        assert _mode(instance / name) == 0o600, f"{name} is {oct(_mode(instance / name))}"
    for path in instance.iterdir():
        if path.is_file():
            assert _mode(path) & 0o077 == 0, f"{path.name} is {oct(_mode(path))}"


@pytest.fixture
def instance(exim_tmp_base) -> Path:
    path = Path(tempfile.mkdtemp(dir=exim_tmp_base, prefix="make-run-"))
    path.chmod(0o755)
    return path


@pytest.fixture
def database_url(databases) -> Iterator[str | None]:
    """What `make run` is given as DATABASE_URL: nothing (SQLite under instance/) or PostgreSQL."""
    with databases.for_system() as url:
        yield url


def test_run_local_prints_the_four_lines_serves_and_stops_on_ctrl_c(instance: Path, database_url: str | None) -> None:
    env = dict(os.environ, MAILFLEET_INSTANCE_PATH=str(instance), PYTHONUNBUFFERED="1",
               MAILFLEET_PANEL_PORT=str(free_port()), MAILFLEET_AGENT_PORT=str(free_port()),
               MAILFLEET_EXIM_PORT=str(free_port()), MAILFLEET_CAPTURE_PORT=str(free_port()))
    env.pop("DATABASE_URL", None)
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    process = subprocess.Popen([sys.executable, "-m", "devserver.run_local"], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    try:
        banner = _read_banner(process, timeout=120)
        panel = banner["Panel:"]
        email, password = banner["Login:"].split()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", panel)
        assert Path(banner["Captured mail:"]) == instance / "local" / "captured"

        session = requests.Session()
        login_page = session.get(panel + "/login", timeout=10).text
        csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', login_page).group(1)
        answer = session.post(panel + "/login", data={"csrf_token": csrf, "email": email, "password": password},
                              timeout=10, allow_redirects=False)
        assert answer.status_code == 302, "the printed login does not log in"

        api = {"Authorization": f"Bearer {banner['API token:']}"}
        servers = wait_for(
            lambda: [s for s in requests.get(panel + "/api/v1/servers", headers=api, timeout=10).json()
                     if s["status"] == "online"],
            "the local worker registered and online", timeout=30,
        )
        assert [ip["ip"] for ip in servers[0]["ips"]] == ["127.0.0.2", "127.0.0.3"]
        started = psutil.Process(process.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in started)
        for part in ("gunicorn", "panel.daemon", "worker_agent.api", "worker_agent sender", "exim4", "mail_capture"):
            assert part in names, f"{part} is not running under make run"
        _assert_private(instance, sqlite=database_url is None)
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        rest = process.communicate(timeout=60)[0]
    assert process.returncode == 0, rest
    wait_for(lambda: not [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
             and not _ours(instance), "every process make run started to stop", timeout=30)
