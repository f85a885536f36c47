"""The whole system on one machine: mail capture, Exim, a worker agent, the panel and its daemon.

`make run`, the end-to-end tests and the benchmarks all start the system through this class,
so what a newcomer runs is what the tests prove. Every process is a real one; all of them are
stopped by `stop()`, in reverse order.
"""

from __future__ import annotations

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

import requests

from .exim import Exim, EximSettings, default_bounce_pipe_command, exim_user_can
from .mail_capture import CaptureServer
from .ports import free_port, wait_listening

REPO = Path(__file__).resolve().parent.parent
BOUNCE_DOMAIN = "bounces.mailfleet.test"
DEFAULT_SOURCE_IPS = [("127.0.0.2", "ip2.worker.test"), ("127.0.0.3", "ip3.worker.test")]


# What the local stack allows the panel to probe: loopback (its BIND, its agent).
LOCAL_NETWORKS = "127.0.0.0/8,::1/128"


@dataclass
class StackSettings:
    root: Path
    source_ips: list[tuple[str, str]] = field(default_factory=lambda: list(DEFAULT_SOURCE_IPS))
    panel_port: int = 0  # 0: pick a free port (so do the three below)
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


class LocalStack:
    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings
        self.root = settings.root.resolve()
        self.logs = self.root / "logs"
        self.processes: dict[str, subprocess.Popen] = {}
        self.capture: CaptureServer | None = None
        self.exim: Exim | None = None
        self.panel_url = ""
        self.api_token = ""
        self.admin_password = settings.admin_password or secrets.token_urlsafe(12)
        self.server_id: int | None = None
        self.agent_fingerprint = ""
        self.agent_config_path = self.root / "agent" / "agent.json"
        self.agent_port = settings.agent_port
        self.exim_port = settings.exim_port
        self.state_file = self.root / "local-stack.json"  # what a restart of the same root reuses

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
        """Where Exim's run directory and the bounce spool live: under the root when the Exim
        user (Debian-exim) can reach it, else in /var/lib/mailfleet-dev (a checkout under /root)."""
        if exim_user_can("-x", self.root):
            return self.root
        home = Path("/var/lib/mailfleet-dev") / hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        home.mkdir(parents=True, exist_ok=True)
        for path in (home.parent, home):
            path.chmod(0o711)
        return home

    @property
    def bounce_spool(self) -> Path:
        return self.exim_home / "bounces"

    def _bounce_pipe_command(self) -> str:
        """The agent's bounce intake, copied where Debian-exim can read it if the checkout is not."""
        if exim_user_can("-r", REPO / "worker_agent" / "bounce_intake.py"):
            return default_bounce_pipe_command(self.bounce_spool)
        code = self.exim_home / "agent-code"
        shutil.rmtree(code, ignore_errors=True)
        shutil.copytree(REPO / "worker_agent", code / "worker_agent", ignore=shutil.ignore_patterns("__pycache__"))
        for path in [code, *code.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        return default_bounce_pipe_command(self.bounce_spool, agent_dir=code)

    def start_exim(self) -> None:
        assert self.capture is not None
        self.exim_port = self.exim_port or free_port()
        self.exim = Exim(
            EximSettings(
                rundir=self.exim_home / "exim",
                smtp_port=self.exim_port,
                source_ips=self.settings.source_ips,
                smarthost=("127.0.0.1", self.capture.port),
                bounce_domains=[BOUNCE_DOMAIN],
                bounce_spool=self.bounce_spool,
                bounce_pipe_command=self._bounce_pipe_command(),
            )
        )
        self.exim.start()

    def write_agent_config(self) -> Path:
        assert self.exim is not None
        agent_dir = self.root / "agent"
        agent_dir.mkdir(parents=True, exist_ok=True)
        self.agent_port = self.agent_port or free_port()
        config = {
            "data_dir": str(agent_dir / "data"),
            "key_file": str(agent_dir / "agent.key"),
            "cert_file": str(agent_dir / "tls.crt"),
            "cert_key_file": str(agent_dir / "tls.key"),
            "listen": f"127.0.0.1:{self.agent_port}",
            "smtp_host": "127.0.0.1",
            "smtp_port": self.exim_port,
            "smtp_connections": self.settings.smtp_connections,
            "exim_mainlog": str(self.exim.mainlog),
            "source_ips": [ip for ip, _ in self.settings.source_ips],
            "bounce_spool": str(self.bounce_spool),
            "helo_map": str(self.exim.helo_map),  # HELO names pushed by the panel, read by this Exim
            "hostname": "worker.test",
        }
        self.agent_config_path.write_text(json.dumps(config, indent=2))
        return self.agent_config_path

    def init_agent(self) -> dict:
        result = subprocess.run(
            [sys.executable, "-m", "worker_agent", "init", "--config", str(self.agent_config_path)],
            cwd=REPO, capture_output=True, text=True, timeout=60, env=self.panel_env(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"worker_agent init failed: {result.stderr.strip()}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def start_agent(self) -> None:
        config = ["--config", str(self.agent_config_path)]
        self._spawn("agent-api", [sys.executable, "-m", "worker_agent", "serve", *config])
        self._spawn("agent-sender", [sys.executable, "-m", "worker_agent", "sender", *config])
        self._wait_port("agent-api", self.agent_port)

    def stop_agent(self) -> None:
        for name in ("agent-sender", "agent-api"):
            self._stop_process(name)

    def init_panel(self, agent: dict) -> None:
        """Migrate the DB, then create the admin, a token and the server once per root."""
        self.flask("init-db")
        if self.state_file.exists():
            state = json.loads(self.state_file.read_text())
            self.admin_password, self.api_token, self.server_id = state["password"], state["token"], state["server_id"]
            return
        self.flask("users", "create", self.settings.admin_email, "--password", self.admin_password)
        self.api_token = self.flask("users", "create-token", self.settings.admin_email, "--name", "local")
        ip_args: list[str] = []
        for ip, helo in self.settings.source_ips:
            ip_args += ["--ip", f"{ip}={helo}"]
        out = self.flask(
            "servers", "add", "--user", self.settings.admin_email, "--name", "local worker",
            "--host", "127.0.0.1", "--port", str(self.agent_port),
            "--key-file", json.loads(self.agent_config_path.read_text())["key_file"],
            "--fingerprint", agent["fingerprint"], *ip_args,
        )
        digits = "".join(ch for ch in out.split()[-1] if ch.isdigit()) if out else ""
        self.server_id = int(digits) if digits else None
        fd = os.open(self.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"password": self.admin_password, "token": self.api_token, "server_id": self.server_id}, f)

    def start_panel(self) -> None:
        port = self.settings.panel_port or free_port()
        self.panel_url = f"http://127.0.0.1:{port}"
        self._spawn(
            "panel",
            [sys.executable, "-m", "gunicorn", "-w", str(self.settings.panel_workers), "--threads", "4",
             "-b", f"127.0.0.1:{port}", "--access-logfile", "-", "panel:create_app()"],
        )
        self._wait_port("panel", port)

    def start_daemon(self) -> None:
        self._spawn("daemon", [sys.executable, "-m", "panel.daemon"])

    def stop_daemon(self) -> None:
        self._stop_process("daemon")

    # -- whole stack -------------------------------------------------------------------
    def start(self) -> "LocalStack":
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            port = self.settings.panel_port or free_port()
            self.settings.panel_port = port
            self.panel_url = f"http://127.0.0.1:{port}"
            self.start_capture()
            self.start_exim()
            self.write_agent_config()
            agent = self.init_agent()
            self.agent_fingerprint = agent["fingerprint"]
            self.start_agent()
            self.init_panel(agent)
            self.start_panel()
            if self.settings.start_daemon:
                self.start_daemon()
        except BaseException:
            self.stop()
            raise
        return self

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
        if self.exim is not None:
            self.exim.stop()
            self.exim = None
        if self.capture is not None:
            self.capture.stop()
            self.capture = None

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
