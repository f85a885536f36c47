"""Shared fixtures: the mail capture and real Exim instances delivering to it; the panel's
database on each backend (SQLite, and PostgreSQL on a server of the session's own).

Every process a fixture starts is stopped at teardown, whether the test passed or not.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shlex
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from devserver.exim import BASE_PYTHON, REPO_ROOT, Exim, EximError, EximSettings, default_bounce_pipe_command, exim_user_can
from devserver.mail_capture import CaptureServer
from devserver.ports import free_port
from devserver.postgres import PostgresServer, server_binaries
from devserver.stack import LocalStack, StackSettings

DEFAULT_SOURCE_IPS = [("127.0.0.2", "ip2.worker.test"), ("127.0.0.3", "ip3.worker.test")]
BOUNCE_DOMAIN = "bounces.test"
BOUNCE_INTAKE = REPO_ROOT / "worker_agent" / "bounce_intake.py"

# Used while worker_agent/bounce_intake.py does not exist yet: stores each piped message
# in the spool (atomically) with the RECIPIENT Exim passed, like the real intake's contract.
STUB_BOUNCE_INTAKE = '''\
"""Test stand-in for worker_agent/bounce_intake.py: keep each piped message in the spool."""
import os
import sys
import time

try:
    spool = sys.argv[1]
    data = sys.stdin.buffer.read()
    name = "%d.%d" % (time.time_ns(), os.getpid())
    tmp = os.path.join(spool, "." + name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(b"X-Stub-Recipient: " + os.environ.get("RECIPIENT", "").encode() + b"\\n" + data)
    os.rename(tmp, os.path.join(spool, name + ".eml"))
except OSError as exc:
    print("stub bounce intake: %s" % exc)
    sys.exit(75)
'''


@pytest.fixture(scope="session")
def exim_tmp_base() -> Iterator[Path]:
    """A session directory the Exim user can reach.

    pytest's own tmp_path lives under a 0700 directory, which Exim's receiving and
    delivering processes (running as Debian-exim) cannot enter.
    """
    base = Path(tempfile.mkdtemp(prefix="mailfleet-tests-"))
    base.chmod(0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def exim_tmp(exim_tmp_base: Path, request: pytest.FixtureRequest) -> Path:
    """A per-test directory reachable by the Exim user (use it for Exim rundirs and bounce spools)."""
    prefix = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40] + "-"
    path = Path(tempfile.mkdtemp(dir=exim_tmp_base, prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture
def stub_bounce_intake(exim_tmp: Path) -> Path:
    """The stdlib stand-in for the bounce intake, readable by the Exim user."""
    script = exim_tmp / "stub_bounce_intake.py"
    script.write_text(STUB_BOUNCE_INTAKE, encoding="utf-8")
    script.chmod(0o644)
    return script


def _real_bounce_intake(exim_tmp: Path) -> Path | None:
    """worker_agent/bounce_intake.py where the Exim user can read it, or None if it does not exist yet."""
    if not BOUNCE_INTAKE.exists():
        return None
    if exim_user_can("-r", BOUNCE_INTAKE):
        return BOUNCE_INTAKE
    # The checkout is not readable by Debian-exim (e.g. under /root): run a copy of the package.
    agent_dir = exim_tmp / "agent"
    if not agent_dir.exists():
        shutil.copytree(REPO_ROOT / "worker_agent", agent_dir / "worker_agent",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for path in [agent_dir, *agent_dir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    return agent_dir / "worker_agent" / "bounce_intake.py"


@pytest.fixture
def bounce_pipe_command(exim_tmp: Path, stub_bounce_intake: Path) -> Callable[[Path], str]:
    """Builds the pipe command for a bounce spool: the real intake when present, else the stub."""

    def build(spool: Path) -> str:
        real = _real_bounce_intake(exim_tmp)
        if real is not None:
            return default_bounce_pipe_command(spool, agent_dir=real.parent.parent)
        return shlex.join([BASE_PYTHON, str(stub_bounce_intake), str(spool)])

    return build


@pytest.fixture
def capture(tmp_path: Path) -> Iterator[CaptureServer]:
    """The recipients' mail servers: a mail capture with its Maildir in tmp_path."""
    server = CaptureServer(tmp_path / "captured")
    server.start()
    try:
        yield server
    finally:
        server.stop()


EximFactory = Callable[..., Exim]


@pytest.fixture
def exim_factory(
    capture: CaptureServer,
    exim_tmp: Path,
    bounce_pipe_command: Callable[[Path], str],
    stub_bounce_intake: Path,
) -> Iterator[EximFactory]:
    """Builds and starts an Exim delivering every remote domain to `capture`.

    ``exim_factory(source_ips=[(ip, helo), ...], *, bounce_domains=["bounces.test"],
    stub_intake=False, queue_only=False, queue_interval="5s", **template_overrides) -> Exim``; the bounce
    spool is ``exim.bounce_spool`` (in exim_tmp) and the pipe runs the real bounce
    intake when worker_agent/bounce_intake.py exists (the stub with stub_intake=True
    or until then). All are stopped at teardown, and a
    non-empty panic log fails the test.
    """
    started: list[Exim] = []

    def make(
        source_ips: Sequence[tuple[str, str]] = DEFAULT_SOURCE_IPS,
        *,
        bounce_domains: Sequence[str] = (BOUNCE_DOMAIN,),
        stub_intake: bool = False,
        queue_only: bool = False,
        queue_interval: str = "5s",
        **overrides: Any,
    ) -> Exim:
        number = len(started)
        spool = exim_tmp / f"bounces{number}"
        last_error: EximError | None = None
        for _attempt in range(3):  # the free port may be taken before Exim binds it
            exim = Exim(
                EximSettings(
                    rundir=exim_tmp / f"exim{number}",
                    smtp_port=free_port(),
                    source_ips=list(source_ips),
                    smarthost=("127.0.0.1", capture.port),
                    bounce_domains=list(bounce_domains),
                    bounce_spool=spool,
                    bounce_pipe_command=(
                        shlex.join([BASE_PYTHON, str(stub_bounce_intake), str(spool)])
                        if stub_intake
                        else bounce_pipe_command(spool)
                    ),
                    queue_only=queue_only,
                    queue_interval=queue_interval,
                    overrides=overrides,
                )
            )
            started.append(exim)
            try:
                exim.start()
                return exim
            except EximError as exc:
                if "in use" not in str(exc):
                    raise
                last_error = exc
                # Not this configuration's fault: forget the attempt and its panic log.
                started.remove(exim)
                shutil.rmtree(exim.log_directory, ignore_errors=True)
        raise AssertionError(f"Exim could not get a free port: {last_error}")

    try:
        yield make
    finally:
        for exim in started:
            exim.stop()
    panics = [f"{e.paniclog}:\n{e.paniclog.read_text()}" for e in started if e.paniclog.exists() and e.paniclog.stat().st_size]
    if panics:
        pytest.fail("Exim wrote to its panic log:\n" + "\n".join(panics))


@pytest.fixture
def exim(exim_factory: EximFactory) -> Exim:
    """An Exim with source IPs 127.0.0.2 (HELO ip2.worker.test) and 127.0.0.3 (ip3.worker.test)."""
    return exim_factory()


# -- the panel's database: every test that uses it runs once on each backend -----------------
DB_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1 for the whole session, from Debian's `postgresql` package."""
    if server_binaries() is None:
        reason = "PostgreSQL's server programs are missing: apt-get install postgresql (make test does)"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI runs `make test`, which installs them: their absence is a failure
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


class Databases:
    """Databases of one backend for the tests: `new()` makes one (empty, or a copy of a template
    database given by its URL) and returns its SQLAlchemy URL; `drop(url)` removes it."""

    def __init__(self, backend: str, server: PostgresServer | None = None) -> None:
        self.backend = backend
        self.server = server
        self._numbers = itertools.count(1)
        self._copies: dict[str, str] = {}  # PostgreSQL: template URL -> its working copy's URL

    def new(self, sqlite_path: Path, template: str | None = None) -> str:
        """SQLite: the file at `sqlite_path` (a copy of the template's file). PostgreSQL: an empty
        database of its own; or, given a template, one working copy of it made once (CREATE
        DATABASE … TEMPLATE) and emptied again for each later test, which takes ~1 ms where a
        fresh copy and its DROP take ~25 ms (several times that on a busy machine)."""
        if self.server is None:
            if template is not None:
                shutil.copyfile(make_url(template).database, sqlite_path)
            return f"sqlite:///{sqlite_path}"
        if template is None:
            return self.server.create_database(f"t_{next(self._numbers)}")
        copy = self._copies.get(template)
        if copy is None:
            copy = self._copies[template] = self.server.create_database(f"t_{next(self._numbers)}",
                                                                        make_url(template).database)
        else:
            self.server.empty_tables(make_url(copy).database)
        return copy

    def drop(self, url: str) -> None:
        """Remove a database `new()` made (a working copy of a template stays for the next test)."""
        if self.server is not None and url not in self._copies.values():
            self.server.drop_database(make_url(url).database)

    @contextlib.contextmanager
    def for_system(self) -> Iterator[str | None]:
        """The DATABASE_URL for a whole system (LocalStack, `make run`): on PostgreSQL an empty
        database of its own (the system migrates it), dropped afterwards; on SQLite None, the
        panel's default file in its instance folder."""
        if self.server is None:
            yield None
            return
        url = self.new(Path("unused.db"))
        try:
            yield url
        finally:
            self.drop(url)


@pytest.fixture(scope="session", params=DB_BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    """The panel's database backend; a test that uses it runs as `[sqlite]` and as `[postgresql]`."""
    return request.param


@pytest.fixture(scope="session")
def databases(db_backend: str, request: pytest.FixtureRequest) -> Databases:
    return Databases(db_backend, request.getfixturevalue("postgres") if db_backend == "postgresql" else None)


@pytest.fixture
def empty_database_url(databases: Databases, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all, removed after the test."""
    url = databases.new(tmp_path / "empty.db")
    yield url
    databases.drop(url)


@pytest.fixture(scope="module")
def stack(exim_tmp_base: Path, databases: Databases) -> Iterator[LocalStack]:
    """The whole system (devserver/stack.py: real processes) once per module and database backend."""
    root = Path(tempfile.mkdtemp(dir=exim_tmp_base, prefix="stack-"))
    root.chmod(0o755)  # Exim's processes run as Debian-exim and must reach its run directory
    with databases.for_system() as database_url:
        with LocalStack(StackSettings(root=root, database_url=database_url)) as running:
            yield running
