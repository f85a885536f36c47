"""A throw-away PostgreSQL server from Debian's packages, for the tests (and by hand).

`initdb` makes a cluster in a temporary folder (as the `postgres` OS user when run as root:
PostgreSQL refuses to run as root), `pg_ctl` starts it listening on 127.0.0.1 at a free port
with its Unix socket inside that folder, and `stop()` stops it and removes the folder. The
settings that trade durability for speed (fsync, synchronous_commit, full_page_writes off)
are for tests only; never copy them to a production server.

A watchdog process stops the server and removes its folder should the process that started
it die without calling `stop()` (killed, crashed), so no server outlives its test run.

    python -m devserver.postgres   # keep one up until Ctrl-C, printing its URL
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from .ports import free_port

OS_USER = "postgres"  # the server's OS user when started by root (Debian's package creates it)
SUPERUSER = "mailfleet"  # the database role the tests connect as
TEST_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",  # tests only: a crash may lose the cluster, which is thrown away anyway
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",  # gunicorn workers, the daemon and the tests at once
    "shared_buffers": "64MB",
}


class PostgresError(RuntimeError):
    """The server could not be set up or started; the message says why and where its log is."""


def server_binaries() -> Path | None:
    """The newest installed /usr/lib/postgresql/<version>/bin holding initdb and pg_ctl, or None."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [b for b in found if (b / "pg_ctl").exists()]
    return max(found, key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else 0) if found else None


class PostgresServer:
    """One PostgreSQL cluster under `base` (a fresh temporary folder by default)."""

    def __init__(self, base: Path | None = None, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or server_binaries()
        if self.bin_dir is None:
            raise PostgresError("PostgreSQL's server programs are not installed: apt-get install postgresql")
        self.base = base or Path(tempfile.mkdtemp(prefix="mailfleet-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "run"
        self.log = self.base / "server.log"
        self.port = 0
        self.password = secrets.token_urlsafe(16)
        self._watchdog: subprocess.Popen | None = None

    # -- running the server's programs -----------------------------------------------
    def _as_server_user(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", OS_USER, "--", *argv] if os.geteuid() == 0 else argv

    def _run(self, *argv: str, timeout: float = 120) -> None:
        result = subprocess.run(self._as_server_user(list(argv)), capture_output=True, text=True,
                                timeout=timeout, cwd=self.base, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise PostgresError(f"{Path(argv[0]).name} failed: {(result.stderr or result.stdout).strip()[-2000:]}"
                                f" (server log: {self.log})")

    def _options(self) -> str:
        settings = {**TEST_SETTINGS, "port": str(self.port), "unix_socket_directories": str(self.socket_dir)}
        return " ".join(f"-c {name}={value}" for name, value in settings.items())

    # -- life cycle ------------------------------------------------------------------
    def start(self, attempts: int = 3) -> "PostgresServer":
        self.base.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self.base.chmod(0o700)
        if os.geteuid() == 0:
            shutil.chown(self.base, OS_USER, OS_USER)
            shutil.chown(self.socket_dir, OS_USER, OS_USER)
        try:
            pwfile = self.base / "pwfile"
            pwfile.write_text(self.password + "\n")
            if os.geteuid() == 0:
                shutil.chown(pwfile, OS_USER, OS_USER)
            # Password (SCRAM) over TCP, as in production; trust on the private Unix socket.
            self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={pwfile}",
                      "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C.UTF-8",
                      "--no-sync")
            pwfile.unlink()
            for attempt in range(attempts):  # the free port may be taken before the server binds it
                self.port = free_port()
                try:
                    self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                              "-t", "60", "-o", self._options(), "start")
                    break
                except PostgresError:
                    if attempt == attempts - 1 or "already in use" not in self._log_tail():
                        raise
            self._start_watchdog()
        except BaseException:
            self.stop()
            raise
        return self

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def _start_watchdog(self) -> None:
        """A shell that waits for this process to end, then stops the server and removes its folder."""
        stop = " ".join(self._as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m",
                                              "immediate", "stop"]))
        script = (f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; "
                  f"{stop} >/dev/null 2>&1; rm -rf '{self.base}'")
        self._watchdog = subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop", timeout=60)
            except (PostgresError, subprocess.TimeoutExpired):
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        if self._watchdog is not None:
            self._watchdog.send_signal(signal.SIGKILL)
            self._watchdog.wait()
            self._watchdog = None
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------
    def url(self, database: str) -> str:
        """The SQLAlchemy URL of `database` on this server, over TCP with the password."""
        return f"postgresql+psycopg://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        """An autocommit connection over the Unix socket (for CREATE/DROP DATABASE and checks)."""
        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=SUPERUSER, dbname=database,
                               autocommit=True)

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create `name` (a copy of `template` if given: the template must have no connections); its URL."""
        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            # FILE_COPY (a checkpoint and a file copy) beats WAL_LOG for small databases: ~15 ms vs ~30 ms.
            statement += sql.SQL(" TEMPLATE {} STRATEGY FILE_COPY").format(sql.Identifier(template))
        with self.connect() as connection:
            connection.execute(statement)
        return self.url(name)

    def empty_tables(self, name: str, keep: tuple[str, ...] = ("alembic_version",)) -> None:
        """Empty every table of `name` but `keep` and restart its sequences, as if just copied
        from its template, after ending its other sessions. DELETE with the foreign-key triggers
        off (`session_replication_role`) takes ~1 ms on a test's few rows; TRUNCATE ~30 ms."""
        with self.connect(name) as connection:
            connection.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                               " WHERE datname = current_database() AND pid <> pg_backend_pid()")
            tables = connection.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                                        " AND NOT tablename = ANY(%s)", (list(keep),)).fetchall()
            sequences = connection.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'").fetchall()
            statements = [sql.SQL("SET session_replication_role = replica")]
            statements += [sql.SQL("DELETE FROM {}").format(sql.Identifier(table)) for (table,) in tables]
            statements += [sql.SQL("SELECT setval({}, 1, false)").format(sql.Literal(sequence)) for (sequence,) in sequences]
            statements.append(sql.SQL("RESET session_replication_role"))
            connection.execute(sql.SQL("; ").join(statements))  # one round trip (no parameters: simple protocol)

    def drop_database(self, name: str) -> None:
        """Drop `name`, ending whatever sessions still hold it."""
        with self.connect() as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def main() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored (`… &`)
        signal.signal(signum, lambda *_: sys.exit(0))
    with PostgresServer() as server:
        server.create_database("mailfleet")
        print(f"DATABASE_URL={server.url('mailfleet')}", flush=True)
        signal.pause()


if __name__ == "__main__":
    main()
