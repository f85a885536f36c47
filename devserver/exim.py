"""A real Exim running the worker's configuration, for tests, benchmarks and `make run`.

The configuration is the Ansible role's template
(`ansible/roles/exim/templates/etc/exim4/exim4.conf.j2`) rendered with plain
Jinja2, so what the tests exercise is what the role installs on a worker.

Exim is run as root with `-C <config>`; the config's absolute path is listed in
`/etc/exim4/trusted_configs` while it runs, otherwise every re-exec'd delivery
process drops its privileges and fails. The daemon receives and delivers as the
Exim user (Debian-exim), so everything it touches - spool, logs, the bounce
spool and the bounce intake's code - must be reachable by that user.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
import psutil

from .processes import end_child

REPO_ROOT = Path(__file__).resolve().parent.parent
ROLE_DIR = REPO_ROOT / "ansible" / "roles" / "exim"
TEMPLATE_NAME = "etc/exim4/exim4.conf.j2"
EXIM_BIN = "/usr/sbin/exim4"
EXIM_USER = "Debian-exim"
BASE_PYTHON = "/usr/bin/python3"
TRUSTED_CONFIGS = Path("/etc/exim4/trusted_configs")
CONFIG_NAME = "mailfleet-exim4.conf"
ANSIBLE_MANAGED = "Rendered by devserver/exim.py for a local Mailfleet Exim; edits are overwritten"

_TRUSTED_CONFIGS_LOCK = Path("/run/lock/mailfleet-exim-trusted-configs.lock")

# The role's retry rules (ansible/roles/exim/defaults/main.yml): Exim never retries a remote delivery
# before giving up, the agent forces each retry through its limits (its config's "exim_retries");
# the bounce pipe keeps a short rule. For an Exim whose agent runs the retry driver (the local stack).
AGENT_RETRY_RULES = [
    "*@+bounce_domains * F,10m,2m; F,2h,15m; G,16h,1h,1.5; F,2d,4h",
    "*@+pushed_bounce_domains * F,10m,2m; F,2h,15m; G,16h,1h,1.5; F,2d,4h",
    "* * F,2d,2d",
]


class EximError(RuntimeError):
    """Exim could not be set up, started or queried; the message says why."""


@dataclass
class EximSettings:
    rundir: Path  # everything of this instance lives under it
    smtp_port: int
    source_ips: list[tuple[str, str]]  # (ip, helo)
    smarthost: tuple[str, int] | None  # deliver every remote domain here
    bounce_domains: list[str]
    bounce_spool: Path | None  # where the pipe writes; created, owned by Debian-exim (default rundir/bounces)
    hostname: str = "worker.test"
    listen: str = "127.0.0.1"
    # Command Exim pipes bounce+/unsubscribe+ mail to; default: the agent's bounce intake
    # run by Debian's python3 (`/usr/bin/python3 <repo>/worker_agent/bounce_intake.py <bounce spool>`).
    bounce_pipe_command: str | None = None
    # Accept into the queue only; the daemon's queue runners (every `queue_interval`) deliver.
    queue_only: bool = False
    queue_interval: str = "5s"
    # The HELO map the agent writes (default rundir/helo-map; it need not exist).
    helo_map: Path | None = None
    # Any other `exim_*` template variable, e.g. {"exim_queue_run_max": 4}.
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def bounce_spool_path(self) -> Path:
        return (self.bounce_spool or self.rundir / "bounces").absolute()

    @property
    def helo_map_path(self) -> Path:
        return (self.helo_map or self.rundir / "helo-map").absolute()


def comment(text: str, style: str = "plain", decoration: str = "# ") -> str:
    """Ansible's `comment` filter (plain style): the text as a `#` comment block."""
    if style != "plain":
        raise ValueError(f"comment style {style!r} is not supported outside Ansible")
    body = "\n".join((decoration + line).rstrip() for line in text.splitlines())
    return f"#\n{body}\n#"


def _environment() -> jinja2.Environment:
    # Ansible's template module renders with trim_blocks on and lstrip_blocks off.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROLE_DIR / "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["comment"] = comment
    return env


def default_bounce_pipe_command(bounce_spool: Path, agent_dir: Path = REPO_ROOT) -> str:
    script = agent_dir / "worker_agent" / "bounce_intake.py"
    return shlex.join([BASE_PYTHON, str(script), str(bounce_spool)])


def template_vars(settings: EximSettings) -> dict[str, Any]:
    """Every variable the template uses, for this local instance."""
    rundir = settings.rundir.absolute()
    smarthost = ""
    if settings.smarthost is not None:
        host, port = settings.smarthost
        if ":" in host:
            raise ValueError(f"smarthost {host!r}: give an IPv4 address or a host name")
        smarthost = f"{host}::{port}"
    spool = settings.bounce_spool_path
    variables: dict[str, Any] = {
        "ansible_managed": ANSIBLE_MANAGED,
        "exim_primary_hostname": settings.hostname,
        "exim_listen_addresses": [settings.listen],
        "exim_smtp_port": settings.smtp_port,
        "exim_spool_directory": str(rundir / "spool"),
        "exim_log_directory": str(rundir / "log"),
        "exim_pid_file": str(rundir / "exim.pid"),
        # An abstract socket name limited to 107 bytes: the default (under the spool) is
        # too long for a rundir deep in /tmp ("daemon_notifier_socket bind: Invalid argument").
        "exim_notifier_socket": f"mailfleet-exim-{settings.smtp_port}-{os.getpid()}",
        "exim_relay_from_hosts": ["127.0.0.1", "::1"],
        "exim_source_ips": [{"ip": ip, "helo": helo} for ip, helo in settings.source_ips],
        "exim_helo_map": str(settings.helo_map_path),
        # where the agent, told the HELO map's path, writes these by default
        "exim_dkim_directory": str(settings.helo_map_path.parent / "dkim"),
        "exim_dkim_sign_headers": ["From", "To", "Cc", "Reply-To", "Subject", "Date", "Message-ID", "MIME-Version",
                                   "Content-Type", "Content-Transfer-Encoding", "List-Unsubscribe",
                                   "List-Unsubscribe-Post", "List-Id"],
        "exim_bounce_domains_file": str(settings.helo_map_path.parent / "bounce-domains"),
        "exim_smarthost": smarthost,
        "exim_bounce_domains": list(settings.bounce_domains),
        "exim_bounce_local_part_prefixes": ["bounce+", "unsubscribe+"],
        "exim_bounce_pipe_command": settings.bounce_pipe_command or default_bounce_pipe_command(spool),
        "exim_pipe_user": EXIM_USER,
        "exim_tls_certificate": "",
        "exim_tls_privatekey": "",
        "exim_control_headers": ["X-Mailfleet-*"],
        "exim_smtp_accept_max": 200,
        "exim_remote_max_parallel": 20,
        "exim_queue_run_max": 8,
        "exim_queue_only": settings.queue_only,
        "exim_message_size_limit": "50M",
        "exim_retry_rules": ["* * F,10m,2m; F,2h,15m; G,16h,1h,1.5; F,2d,4h"],
        "exim_timeout_frozen_after": "3d",
        # Fail at once if the port is taken instead of retrying for minutes.
        "exim_daemon_startup_retries": 0,
    }
    unknown = [k for k in settings.overrides if k not in variables]
    if unknown:
        raise ValueError(f"unknown Exim template variables: {', '.join(sorted(unknown))}")
    variables.update(settings.overrides)
    return variables


def render_config(settings: EximSettings) -> str:
    """The worker's Exim configuration for these settings."""
    return render_template(template_vars(settings))


def render_template(variables: dict[str, Any]) -> str:
    """Render the role's template with the given variables (all of them must be given)."""
    return _environment().get_template(TEMPLATE_NAME).render(**variables)


def exim_user_can(test_flag: str, path: Path) -> bool:
    """Whether the Exim user passes `test <test_flag> path` (-r, -w, -x) - parents included."""
    result = subprocess.run(
        ["test", test_flag, str(path)],
        user=EXIM_USER,
        group=EXIM_USER,
        extra_groups=[],
        check=False,
    )
    return result.returncode == 0


def _unreachable_parent(path: Path) -> Path | None:
    """The first directory on the way to `path` that the Exim user cannot enter."""
    for parent in [*reversed(path.parents), path]:
        if parent.is_dir() and not exim_user_can("-x", parent):
            return parent
    return None


def _require_exim_user_access(path: Path, test_flag: str, what: str) -> None:
    if exim_user_can(test_flag, path):
        return
    blocked = _unreachable_parent(path if path.is_dir() else path.parent)
    where = f": {blocked} is not searchable by {EXIM_USER} (chmod o+x it)" if blocked else ""
    raise EximError(f"{what} {path} is not {'writable' if test_flag == '-w' else 'readable'} by {EXIM_USER}{where}")


@contextlib.contextmanager
def _trusted_configs_locked() -> Iterator[None]:
    _TRUSTED_CONFIGS_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(_TRUSTED_CONFIGS_LOCK, "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _update_trusted_configs(add: Path | None = None, remove: Path | None = None) -> None:
    """Add/remove a config in Exim's list of trusted configs, atomically and under a lock.

    Entries of our own instances whose config is gone (a killed test run) are pruned.
    """
    with _trusted_configs_locked():
        try:
            lines = TRUSTED_CONFIGS.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        keep = []
        for line in lines:
            entry = line.strip()
            if not entry or (remove is not None and entry == str(remove)):
                continue
            if entry.endswith("/" + CONFIG_NAME) and not Path(entry).exists():
                continue
            keep.append(entry)
        if add is not None and str(add) not in keep:
            keep.append(str(add))
        tmp = TRUSTED_CONFIGS.with_name(f".{TRUSTED_CONFIGS.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(f"{entry}\n" for entry in keep), encoding="utf-8")
        os.chown(tmp, 0, 0)
        tmp.chmod(0o644)
        os.replace(tmp, TRUSTED_CONFIGS)


def _chown_tree(path: Path, user: str) -> None:
    shutil.chown(path, user, user)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            shutil.chown(os.path.join(root, name), user, user)


class Exim:
    """An Exim daemon with its own config, spool and logs under `settings.rundir`."""

    def __init__(self, settings: EximSettings) -> None:
        self.settings = settings
        self.rundir = settings.rundir.absolute()
        self.config_path = self.rundir / CONFIG_NAME
        self.spool_directory = self.rundir / "spool"
        self.log_directory = self.rundir / "log"
        self.pid_file = self.rundir / "exim.pid"
        self.mainlog = self.log_directory / "mainlog"
        self.rejectlog = self.log_directory / "rejectlog"
        self.paniclog = self.log_directory / "paniclog"
        self.bounce_spool = settings.bounce_spool_path
        self.helo_map = settings.helo_map_path
        self._stderr_path = self.rundir / "exim.stderr"
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------

    def __enter__(self) -> Exim:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Write the config, prepare directories, start the daemon and wait until it answers."""
        if os.geteuid() != 0:
            raise EximError("running Exim with its own config needs root (it must be a trusted config)")
        if self._process is not None:
            raise EximError("this Exim is already running")
        self._prepare_directories()
        self._write_config()
        _update_trusted_configs(add=self.config_path)
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise

    def _prepare_directories(self) -> None:
        self.rundir.mkdir(parents=True, exist_ok=True)
        self.rundir.chmod(0o755)
        _require_exim_user_access(self.rundir, "-x", "Exim run directory")
        for directory in (self.spool_directory, self.log_directory):
            directory.mkdir(exist_ok=True)
            _chown_tree(directory, EXIM_USER)
            directory.chmod(0o750)
        spool = self.bounce_spool
        spool.mkdir(parents=True, exist_ok=True)
        shutil.chown(spool, EXIM_USER, EXIM_USER)
        spool.chmod(0o750)
        _require_exim_user_access(spool, "-w", "bounce spool")
        self._check_pipe_command()

    def _check_pipe_command(self) -> None:
        """The pipe runs as the Exim user: its interpreter and script must be readable by it."""
        command = self.settings.bounce_pipe_command or default_bounce_pipe_command(self.bounce_spool)
        for arg in shlex.split(command):
            path = Path(arg)
            if path.is_absolute() and path.is_file():
                _require_exim_user_access(path, "-r", "bounce pipe file")

    def _write_config(self) -> None:
        text = render_config(self.settings)
        tmp = self.config_path.with_name(self.config_path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.chown(tmp, 0, 0)
        tmp.chmod(0o644)  # Exim trusts a -C config only if no one but root can write it
        os.replace(tmp, self.config_path)
        check = subprocess.run(
            [EXIM_BIN, "-C", str(self.config_path), "-bV"], capture_output=True, text=True, check=False
        )
        if check.returncode != 0:
            raise EximError(f"Exim refuses the rendered config {self.config_path}:\n{check.stdout}{check.stderr}")

    def _launch(self) -> None:
        for stale in (self.pid_file,):
            stale.unlink(missing_ok=True)
        with open(self._stderr_path, "wb") as stderr:
            # -bdf: the daemon stays in the foreground as our child (it writes the pid file too).
            self._process = subprocess.Popen(
                [EXIM_BIN, "-C", str(self.config_path), "-bdf", "-q" + self.settings.queue_interval],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + 15
        while True:
            if self._process.poll() is not None:
                raise EximError(f"Exim exited with status {self._process.returncode} at start:\n{self._diagnostics()}")
            # Listening ourselves, not merely answered by whoever else holds the port.
            if self._listening() and self._answers():
                return
            if time.monotonic() > deadline:
                raise EximError(f"Exim did not answer on port {self.settings.smtp_port} within 15 s:\n{self._diagnostics()}")
            time.sleep(0.05)

    def _connect_address(self) -> tuple[str, int]:
        host = self.settings.listen
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        return host, self.settings.smtp_port

    def _listening(self) -> bool:
        assert self._process is not None
        try:
            connections = psutil.Process(self._process.pid).net_connections(kind="inet")
        except psutil.Error:
            return False
        return any(
            c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.settings.smtp_port
            for c in connections
        )

    def _answers(self) -> bool:
        try:
            with socket.create_connection(self._connect_address(), timeout=2) as sock:
                banner = sock.recv(512)
                if not banner.startswith(b"220"):
                    return False
                sock.sendall(b"QUIT\r\n")
                sock.recv(512)
                return True
        except OSError:
            return False

    def _diagnostics(self) -> str:
        parts = []
        for path in (self._stderr_path, self.paniclog):
            if path.exists() and path.stat().st_size:
                parts.append(f"--- {path}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts) or "(no output)"

    @property
    def running(self) -> bool:
        """Whether the daemon this object started is still alive."""
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """SIGKILL the daemon and every process it started at once, as a crash would; the spool, logs
        and the config's trust are left as they are, for `start()` to go on from."""
        victims = {proc.pid: proc for proc in self._processes()}
        if self.running:
            assert self._process is not None
            with contextlib.suppress(psutil.NoSuchProcess):
                victims.setdefault(self._process.pid, psutil.Process(self._process.pid))
        for proc in victims.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(list(victims.values()), timeout=10)
        if self._process is not None:
            self._process.wait(timeout=10)
            self._process = None

    def stop(self) -> None:
        """Stop the daemon and every process it started, and unregister the config."""
        try:
            self._terminate()
        finally:
            _update_trusted_configs(remove=self.config_path)

    def _terminate(self) -> None:
        pid: int | None = None
        with contextlib.suppress(FileNotFoundError, ValueError):
            pid = int(self.pid_file.read_text().split()[0])
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if self._process is not None:
            end_child(self._process)
            self._process = None
        # Queue runners, deliveries and pipes outlive the daemon: end them too.
        leftovers = self._processes()
        for proc in leftovers:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(leftovers, timeout=5)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(alive, timeout=5)
        self.pid_file.unlink(missing_ok=True)

    def _processes(self) -> list[psutil.Process]:
        """Every live process of this instance: those run with its config, and their children."""
        config = str(self.config_path)
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if config in cmdline:
                found[proc.pid] = proc
                with contextlib.suppress(psutil.NoSuchProcess):
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
        return list(found.values())

    # -- queue ---------------------------------------------------------------

    def _exim(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [EXIM_BIN, "-C", str(self.config_path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise EximError(f"exim4 {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def queue_count(self) -> int:
        """Messages on the queue (`exim4 -bpc`)."""
        return int(self._exim("-bpc").stdout.strip())

    def wait_queue_empty(self, timeout: float) -> bool:
        """Wait until the queue is empty; False if it still is not after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.queue_count() == 0:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def queue_run(self, timeout: float = 300) -> None:
        """One queue run now that, like the daemon's, skips messages whose retry time has not come (`-q`)."""
        self._exim("-q", timeout=timeout)

    def force_queue_run(self, timeout: float = 300, two_stage: bool = False) -> None:
        """Try every queued message now, retry times and frozen state notwithstanding (`-qff`).

        `two_stage` (`-qqff`) routes everything first and then delivers each host's
        messages down one connection, as Exim does with a backlog for a host.
        """
        self._exim("-qqff" if two_stage else "-qff", timeout=timeout)

    # -- logs ----------------------------------------------------------------

    def log_lines(self) -> list[str]:
        """The main log's lines so far."""
        try:
            return self.mainlog.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def wait_for_log(self, pattern: str, timeout: float = 10, count: int = 1) -> list[str]:
        """Wait until `count` main-log lines match the regex `pattern`; return those lines."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            matches = [line for line in self.log_lines() if regex.search(line)]
            if len(matches) >= count:
                return matches
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(matches)} of {count} main log lines matching {pattern!r} after {timeout} s; "
                    f"last lines:\n" + "\n".join(self.log_lines()[-20:])
                )
            time.sleep(0.05)
