"""The whole system on one machine: mail capture, workers (Exim + agent), the panel and its daemon.

`make run`, the end-to-end tests and the benchmarks all start the system through this class,
so what a newcomer runs is what the tests prove. Every process is a real one; all of them are
stopped by `stop()`, in reverse order.

A fleet on one machine: `StackSettings(workers=N)` runs N workers, each an Exim, an agent API
and an agent sender on ports of their own, sending from loopback IPs of their own (worker 0
from `source_ips`, worker n from 127.0.n.2 and 127.0.n.3: Linux routes all of 127.0.0.0/8 to
the loopback device, so Exim binds them with no setup), all delivering to the one capture and
registered as servers of the one admin. Tests and benchmarks stop, SIGKILL and start each part
of a worker (`kill_worker_part`, `start_worker_part`) and add workers to a running stack
(`add_worker`). The single-worker attributes (`agent_port`, `server_id`, `exim`, ...) are worker 0's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .exim import (EXIM_BIN, AGENT_RETRY_RULES, Exim, EximError, EximSettings, default_bounce_pipe_command,
                   exim_user_can)
from .mail_capture import CaptureServer
from .ports import free_port, wait_listening

REPO = Path(__file__).resolve().parent.parent
BOUNCE_DOMAIN = "bounces.mailfleet.test"
DEFAULT_SOURCE_IPS = [("127.0.0.2", "ip2.worker.test"), ("127.0.0.3", "ip3.worker.test")]


# What the local stack allows the panel to probe: loopback (its BIND, its agent).
LOCAL_NETWORKS = "127.0.0.0/8,::1/128"

# Runs several `flask --app panel` commands in one interpreter (each on its own costs seconds of
# start-up): a JSON list of argument lists on stdin; the last line out is a JSON list of results.
_FLASK_COMMANDS = """
import json, sys
from panel import create_app
runner = create_app().test_cli_runner()
results = []
for args in json.load(sys.stdin):
    result = runner.invoke(args=args)
    results.append({"code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
                    "error": "" if result.exception is None or isinstance(result.exception, SystemExit)
                    else repr(result.exception)})
    if result.exit_code != 0:
        break
print(json.dumps(results))
"""


@dataclass
class StackSettings:
    root: Path
    source_ips: list[tuple[str, str]] = field(default_factory=lambda: list(DEFAULT_SOURCE_IPS))  # worker 0's
    panel_port: int = 0  # 0: pick a free port (so do the three below; agent and Exim ports are worker 0's)
    agent_port: int = 0
    exim_port: int = 0
    capture_port: int = 0
    instance_path: Path | None = None  # the panel's instance folder; None: ROOT/panel
    admin_email: str = "admin@mailfleet.test"
    admin_password: str = ""  # empty: generate one
    database_url: str | None = None  # None: SQLite under the panel's instance folder
    smtp_connections: int = 4
    start_daemon: bool = True
    panel_workers: int = 2
    workers: int = 1  # worker pairs (Exim + agent), each a server of the admin
    # s a worker's agent waits before retrying a deferred letter (attempt 1, 2, …; the last repeats):
    # Exim never retries a remote delivery on its own, the agent does through its limits (docs/shaping.md)
    exim_retry_delays: tuple[int, ...] = (60, 300, 900, 1800, 3600)
    # MAILFLEET_* settings for the panel and its daemon (e.g. {"MAILFLEET_DISPATCH_WINDOW": "5"}).
    panel_env: dict[str, str] = field(default_factory=dict)


WORKER_PARTS = ("api", "sender", "exim")


def worker_source_ips(n: int) -> list[tuple[str, str]]:
    """The (IP, HELO) pairs worker n >= 1 sends from."""
    if not 1 <= n <= 255:
        raise ValueError(f"worker {n}: a local stack has workers 0 to 255")
    return [(f"127.0.{n}.2", f"ip2.worker{n}.test"), (f"127.0.{n}.3", f"ip3.worker{n}.test")]


@dataclass
class Worker:
    """One worker of the stack: its Exim, agent API and agent sender, and the server it is in the panel."""

    index: int
    source_ips: list[tuple[str, str]]
    agent_dir: Path
    agent_port: int = 0  # 0 until started
    exim_port: int = 0
    exim: Exim | None = None
    server_id: int | None = None
    fingerprint: str = ""

    @property
    def suffix(self) -> str:
        return "" if self.index == 0 else f"-{self.index}"  # worker 0's names are those of a one-worker stack

    @property
    def api_name(self) -> str:
        return "agent-api" + self.suffix

    @property
    def sender_name(self) -> str:
        return "agent-sender" + self.suffix

    @property
    def config_path(self) -> Path:
        return self.agent_dir / "agent.json"

    @property
    def hostname(self) -> str:
        return "worker.test" if self.index == 0 else f"worker{self.index}.test"

    @property
    def ips(self) -> list[str]:
        return [ip for ip, _ in self.source_ips]


class LocalStack:
    def __init__(self, settings: StackSettings) -> None:
        if settings.workers < 1:
            raise ValueError(f"a local stack needs at least one worker, not {settings.workers}")
        self.settings = settings
        self.root = settings.root.resolve()
        self.logs = self.root / "logs"
        self.processes: dict[str, subprocess.Popen] = {}
        self.capture: CaptureServer | None = None
        self.panel_url = ""
        self.api_token = ""
        self.admin_password = settings.admin_password or secrets.token_urlsafe(12)
        self.state_file = self.root / "local-stack.json"  # what a restart of the same root reuses
        self.workers = [self._new_worker(n) for n in range(settings.workers)]
        self.workers[0].agent_port, self.workers[0].exim_port = settings.agent_port, settings.exim_port
        self._exim_home: Path | None = None
        self._pipe_command: str | None = None

    def _new_worker(self, n: int) -> Worker:
        if n == 0:
            return Worker(0, list(self.settings.source_ips), self.root / "agent")
        return Worker(n, worker_source_ips(n), self.root / f"agent-{n}")

    # -- worker 0, under the names a one-worker stack has always had ----------------------
    @property
    def agent_port(self) -> int:
        return self.workers[0].agent_port

    @property
    def exim_port(self) -> int:
        return self.workers[0].exim_port

    @property
    def exim(self) -> Exim | None:
        return self.workers[0].exim

    @property
    def server_id(self) -> int | None:
        return self.workers[0].server_id

    @property
    def agent_fingerprint(self) -> str:
        return self.workers[0].fingerprint

    @property
    def agent_config_path(self) -> Path:
        return self.workers[0].config_path

    # -- paths and environments --------------------------------------------------------
    @property
    def maildir(self) -> Path:
        return self.root / "captured"

    @property
    def instance_path(self) -> Path:
        return (self.settings.instance_path or self.root / "panel").resolve()

    @property
    def database_url(self) -> str:
        """The panel's SQLAlchemy URL: settings.database_url, or the panel's default SQLite file."""
        return self.settings.database_url or f"sqlite:///{self.instance_path / 'mailfleet.db'}"

    def panel_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            MAILFLEET_INSTANCE_PATH=str(self.instance_path),
            MAILFLEET_PUBLIC_URL=self.panel_url,
            MAILFLEET_BOUNCE_DOMAIN=BOUNCE_DOMAIN,
            PYTHONPATH=str(REPO),
        )
        # Its agent and BIND are on this machine's loopback, which the panel does not
        # probe unless told (panel/services/network_policy.py); a value set by the caller wins.
        env.setdefault("MAILFLEET_ALLOWED_HOST_NETWORKS", LOCAL_NETWORKS)
        if self.settings.database_url:
            env["DATABASE_URL"] = self.settings.database_url
        env.update(self.settings.panel_env)
        return env

    def flask(self, *args: str) -> str:
        """Run `flask --app panel ARGS` against this stack's panel; returns its stdout."""
        result = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "panel", *args],
            cwd=REPO, env=self.panel_env(), capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"flask {' '.join(args[:2])} failed: {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout.strip()

    def flask_commands(self, *commands: list[str]) -> list[str]:
        """Run several `flask --app panel` commands, in order, in one process; their stdouts.
        RuntimeError naming the first that failed (those after it are not run)."""
        result = subprocess.run(
            [sys.executable, "-c", _FLASK_COMMANDS], input=json.dumps(commands),
            cwd=REPO, env=self.panel_env(), capture_output=True, text=True, timeout=300,
        )
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            raise RuntimeError(f"flask commands failed: {result.stderr.strip()[-2000:]}")
        outputs = []
        for args, done in zip(commands, json.loads(lines[-1])):
            if done["code"] != 0:
                why = done["error"] or done["stderr"].strip() or done["stdout"].strip()
                raise RuntimeError(f"flask {' '.join(args[:2])} failed: {why}")
            outputs.append(done["stdout"].strip())
        return outputs

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.logs / f"{name}.log", "ab")
        process = subprocess.Popen(
            argv, cwd=REPO, env=env or self.panel_env(), stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        self.processes[name] = process
        return process

    def _wait_port(self, name: str, port: int, timeout: float = 30.0) -> None:
        wait_listening(self.processes[name], port, name, timeout, hint=f"; see {self.logs / (name + '.log')}")

    # -- the parts ---------------------------------------------------------------------
    def start_capture(self) -> None:
        self.capture = CaptureServer(
            self.maildir, port=self.settings.capture_port, rules_file=self.root / "capture-rules.json"
        )
        self.capture.start()

    @property
    def exim_home(self) -> Path:
        """Where Exim's run directories and the bounce spools live: under the root when the Exim
        user (Debian-exim) can reach it, else in /var/lib/mailfleet-dev (a checkout under /root)."""
        if self._exim_home is not None:
            return self._exim_home
        if exim_user_can("-x", self.root):
            self._exim_home = self.root
            return self.root
        home = Path("/var/lib/mailfleet-dev") / hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        home.mkdir(parents=True, exist_ok=True)
        for path in (home.parent, home):
            path.chmod(0o711)
        self._exim_home = home
        return home

    def worker_bounce_spool(self, worker: Worker) -> Path:
        return self.exim_home / ("bounces" + worker.suffix)

    @property
    def bounce_spool(self) -> Path:
        return self.worker_bounce_spool(self.workers[0])

    def _bounce_pipe_command(self, spool: Path) -> str:
        """The agent's bounce intake, copied where Debian-exim can read it if the checkout is not
        (once per stack: a running worker's Exim may be piping to the copy)."""
        if exim_user_can("-r", REPO / "worker_agent" / "bounce_intake.py"):
            return default_bounce_pipe_command(spool)
        code = self.exim_home / "agent-code"
        if self._pipe_command is None:
            shutil.rmtree(code, ignore_errors=True)
            shutil.copytree(REPO / "worker_agent", code / "worker_agent", ignore=shutil.ignore_patterns("__pycache__"))
            for path in [code, *code.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
            self._pipe_command = str(code)
        return default_bounce_pipe_command(spool, agent_dir=code)

    def start_exim(self, worker: Worker | None = None) -> None:
        """Start the worker's Exim (worker 0's by default): a new one, or the same again after a stop or kill."""
        assert self.capture is not None
        worker = worker or self.workers[0]
        if worker.exim is not None:
            if not worker.exim.running:
                worker.exim.start()
            return
        chosen = worker.exim_port
        for attempt in range(3):  # a free port may be taken by someone else before Exim binds it
            worker.exim_port = chosen or free_port()
            spool = self.worker_bounce_spool(worker)
            exim = Exim(
                EximSettings(
                    rundir=self.exim_home / ("exim" + worker.suffix),
                    smtp_port=worker.exim_port,
                    source_ips=worker.source_ips,
                    smarthost=("127.0.0.1", self.capture.port),
                    bounce_domains=[BOUNCE_DOMAIN],
                    bounce_spool=spool,
                    bounce_pipe_command=self._bounce_pipe_command(spool),
                    hostname=worker.hostname,
                    # as on a worker: remote deliveries retried by the agent only (write_agent_config)
                    overrides={"exim_retry_rules": AGENT_RETRY_RULES},
                )
            )
            try:
                exim.start()
            except EximError as exc:
                if chosen or "in use" not in str(exc) or attempt == 2:
                    raise
                continue
            worker.exim = exim
            return

    def write_agent_config(self, worker: Worker | None = None) -> Path:
        worker = worker or self.workers[0]
        assert worker.exim is not None
        agent_dir = worker.agent_dir
        agent_dir.mkdir(parents=True, exist_ok=True)
        worker.agent_port = worker.agent_port or free_port()
        config = {
            "data_dir": str(agent_dir / "data"),
            "key_file": str(agent_dir / "agent.key"),
            "cert_file": str(agent_dir / "tls.crt"),
            "cert_key_file": str(agent_dir / "tls.key"),
            "listen": f"127.0.0.1:{worker.agent_port}",
            "smtp_host": "127.0.0.1",
            "smtp_port": worker.exim_port,
            "smtp_connections": self.settings.smtp_connections,
            "exim_mainlog": str(worker.exim.mainlog),
            "source_ips": worker.ips,
            "bounce_spool": str(worker.exim.bounce_spool),
            "helo_map": str(worker.exim.helo_map),  # HELO names pushed by the panel, read by this Exim
            "hostname": worker.hostname,
            "exim_spool": str(worker.exim.spool_directory),  # its own queue, searched after a crash
            # Exim's deferred letters forced through the limits (its retry rule never retries them)
            "exim_retries": {"command": [EXIM_BIN, "-C", str(worker.exim.config_path)],
                             "delays": list(self.settings.exim_retry_delays)},
        }
        worker.config_path.write_text(json.dumps(config, indent=2))
        return worker.config_path

    def init_agent(self, worker: Worker | None = None) -> dict:
        worker = worker or self.workers[0]
        result = subprocess.run(
            [sys.executable, "-m", "worker_agent", "init", "--config", str(worker.config_path)],
            cwd=REPO, capture_output=True, text=True, timeout=60, env=self.panel_env(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"worker_agent init failed: {result.stderr.strip()}")
        agent = json.loads(result.stdout.strip().splitlines()[-1])
        worker.fingerprint = agent["fingerprint"]
        return agent

    def _start_agent_api(self, worker: Worker) -> None:
        if not self.is_running(worker.index, "api"):
            self._spawn(worker.api_name,
                        [sys.executable, "-m", "worker_agent", "serve", "--config", str(worker.config_path)])
            self._wait_port(worker.api_name, worker.agent_port)

    def _start_agent_sender(self, worker: Worker) -> None:
        if not self.is_running(worker.index, "sender"):
            self._spawn(worker.sender_name,
                        [sys.executable, "-m", "worker_agent", "sender", "--config", str(worker.config_path)])

    def start_agent(self, worker: Worker | None = None) -> None:
        worker = worker or self.workers[0]
        self._start_agent_api(worker)
        self._start_agent_sender(worker)

    def stop_agent(self, worker: Worker | None = None) -> None:
        worker = worker or self.workers[0]
        for name in (worker.sender_name, worker.api_name):
            self._stop_process(name)

    def _start_worker(self, worker: Worker) -> None:
        self.start_exim(worker)
        self.write_agent_config(worker)
        self.init_agent(worker)
        self.start_agent(worker)

    # -- one worker's parts, for crash tests ------------------------------------------------
    def _parts(self, part: str) -> tuple[str, ...]:
        if part == "all":
            return WORKER_PARTS
        if part not in WORKER_PARTS:
            raise ValueError(f"a worker's part is one of {', '.join(WORKER_PARTS)} or all, not {part!r}")
        return (part,)

    def is_running(self, n: int, part: str) -> bool:
        """Whether worker n's "api", "sender" or "exim" is running."""
        worker = self.workers[n]
        if part == "exim":
            return worker.exim is not None and worker.exim.running
        if part not in WORKER_PARTS:
            raise ValueError(f"a worker's part is one of {', '.join(WORKER_PARTS)}, not {part!r}")
        process = self.processes.get(worker.api_name if part == "api" else worker.sender_name)
        return process is not None and process.poll() is None

    def kill_worker_part(self, n: int, part: str) -> None:
        """SIGKILL worker n's "api", "sender", "exim" (the daemon and every process it started) or "all"
        of them at once, as a crash would; nothing is cleaned up after them."""
        worker = self.workers[n]
        parts = self._parts(part)
        names = [name for p, name in (("api", worker.api_name), ("sender", worker.sender_name)) if p in parts]
        for name in names:
            self._signal_process(name, signal.SIGKILL)
        if "exim" in parts and worker.exim is not None:
            worker.exim.kill()
        for name in names:
            process = self.processes.pop(name, None)
            if process is not None:
                process.wait(timeout=15)

    def stop_worker_part(self, n: int, part: str) -> None:
        """Stop worker n's "api", "sender", "exim" or "all" the polite way (SIGTERM, waited for)."""
        worker = self.workers[n]
        parts = self._parts(part)
        if "sender" in parts:
            self._stop_process(worker.sender_name)
        if "api" in parts:
            self._stop_process(worker.api_name)
        if "exim" in parts and worker.exim is not None:
            worker.exim.stop()

    def start_worker_part(self, n: int, part: str) -> None:
        """Start worker n's "api", "sender", "exim" or "all" again (those already running are left be);
        the API is listening when this returns."""
        worker = self.workers[n]
        parts = self._parts(part)
        if "exim" in parts:
            self.start_exim(worker)
        if "api" in parts:
            self._start_agent_api(worker)
        if "sender" in parts:
            self._start_agent_sender(worker)

    def add_worker(self) -> Worker:
        """Start one more worker and register it as a server of the admin (the panel may be running)."""
        worker = self._new_worker(len(self.workers))
        self.workers.append(worker)
        self._start_worker(worker)
        self._register_workers()
        self._save_state()
        return worker

    # -- the panel ---------------------------------------------------------------------
    def init_panel(self, agent: dict | None = None) -> None:
        """Migrate the DB, then create the admin and a token once per root, and register each worker
        not registered yet (`agent`: unused, kept for callers of the one-worker stack)."""
        commands = [["init-db"]]
        if self.state_file.exists():
            state = json.loads(self.state_file.read_text())
            self.admin_password, self.api_token = state["password"], state["token"]
        else:
            commands += [["users", "create", self.settings.admin_email, "--password", self.admin_password, "--admin"],
                         ["users", "create-token", self.settings.admin_email, "--name", "local"]]
        outputs = self._register_workers(commands)
        if len(commands) == 3:
            self.api_token = outputs[2]
        self._save_state()

    def _reuse_agent_ports(self) -> None:
        """On a root started before, each worker's agent listens where the panel knows it, unless told otherwise."""
        if not self.state_file.exists():
            return
        ports = json.loads(self.state_file.read_text()).get("agent_ports", [])
        for worker, port in zip(self.workers, ports):
            worker.agent_port = worker.agent_port or port

    def _register_workers(self, before: list[list[str]] | None = None) -> list[str]:
        """Run the `before` flask commands, then register as a server each worker that is not one yet;
        all in one process. Returns the outputs of the `before` commands."""
        commands = list(before or [])
        state = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        server_ids: list[int | None] = state.get("server_ids") or [state.get("server_id")]
        new: list[Worker] = []
        for worker in self.workers:
            if worker.index < len(server_ids) and server_ids[worker.index] is not None:
                worker.server_id = server_ids[worker.index]
                continue
            ip_args: list[str] = []
            for ip, helo in worker.source_ips:
                ip_args += ["--ip", f"{ip}={helo}"]
            name = "local worker" if worker.index == 0 else f"local worker {worker.index}"
            commands.append([
                "servers", "add", "--user", self.settings.admin_email, "--name", name,
                "--host", "127.0.0.1", "--port", str(worker.agent_port),
                "--key-file", json.loads(worker.config_path.read_text())["key_file"],
                "--fingerprint", worker.fingerprint, *ip_args,
            ])
            new.append(worker)
        outputs = self.flask_commands(*commands) if commands else []
        for worker, out in zip(new, outputs[len(commands) - len(new):]):
            digits = "".join(ch for ch in out.split()[-1] if ch.isdigit()) if out else ""
            worker.server_id = int(digits) if digits else None
        return outputs[:len(commands) - len(new)]

    def _save_state(self) -> None:
        fd = os.open(self.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"password": self.admin_password, "token": self.api_token, "server_id": self.server_id,
                       "server_ids": [worker.server_id for worker in self.workers],
                       "agent_ports": [worker.agent_port for worker in self.workers]}, f)

    def start_panel(self) -> None:
        port = self.settings.panel_port or free_port()
        self.panel_url = f"http://127.0.0.1:{port}"
        self._spawn(
            "panel",
            [sys.executable, "-m", "gunicorn", "-w", str(self.settings.panel_workers), "--threads", "4",
             "-b", f"127.0.0.1:{port}", "--access-logfile", "-", "panel:create_app()"],
        )
        self._wait_port("panel", port)

    def start_daemon(self, name: str = "daemon") -> None:
        """Start a panel daemon (another name: one more daemon process, which PostgreSQL allows)."""
        self._spawn(name, [sys.executable, "-m", "panel.daemon"])

    def stop_daemon(self, name: str = "daemon") -> None:
        self._stop_process(name)

    def kill_daemon(self, name: str = "daemon") -> None:
        """SIGKILL a daemon, as a crash would."""
        self._signal_process(name, signal.SIGKILL)
        process = self.processes.pop(name, None)
        if process is not None:
            process.wait(timeout=15)

    # -- whole stack -------------------------------------------------------------------
    def start(self) -> "LocalStack":
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            port = self.settings.panel_port or free_port()
            self.settings.panel_port = port
            self.panel_url = f"http://127.0.0.1:{port}"
            self.start_capture()
            self._reuse_agent_ports()
            for worker in self.workers:
                self._start_worker(worker)
            self.init_panel()
            self.start_panel()
            if self.settings.start_daemon:
                self.start_daemon()
        except BaseException:
            self.stop()
            raise
        return self

    def _signal_process(self, name: str, signum: int) -> None:
        process = self.processes.get(name)
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signum)  # its whole group: it was started in a session of its own

    def _stop_process(self, name: str, timeout: float = 15.0) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            self._stop_process(name)
        for worker in reversed(self.workers):
            if worker.exim is not None:
                worker.exim.stop()
                worker.exim = None
        if self.capture is not None:
            self.capture.stop()
            self.capture = None

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
