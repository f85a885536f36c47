"""A real agent and fake agents for the daemon's tests (tests/panel/fake_agent.py run as a process of its own, so
the test process's memory is the daemon's alone) and a plain HTTP server that counts its visitors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
from cryptography.fernet import Fernet

from devserver.ports import free_port, wait_listening
from panel.daemon.loop import DaemonState, run_round
from panel.extensions import db
from panel.models import User
from panel.services.servers import SourceIP, register_server
from tests.helpers import wait_for
from worker_agent import protocol
from worker_agent.setup_node import cert_fingerprint, self_signed_cert

FAKE_AGENT = Path(__file__).resolve().parent / "fake_agent.py"
REPO = Path(__file__).resolve().parents[2]


class Agent:
    """`python -m worker_agent serve` on its own port and data dir; can be stopped and started again."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "agent.json"
        self.config.write_text(json.dumps({
            "data_dir": str(root / "data"), "exim_mainlog": str(root / "mainlog"), "listen": f"127.0.0.1:{self.port}",
            "hostname": "worker.test", "source_ips": ["127.0.0.2", "127.0.0.3"], "helo_map": str(root / "helo-map"),
        }))
        init = subprocess.run([sys.executable, "-m", "worker_agent", "init", "--config", str(self.config)],
                              cwd=REPO, capture_output=True, check=True, text=True)
        self.fingerprint = json.loads(init.stdout)["fingerprint"]
        self.key = (root / "data" / "agent.key").read_text().strip()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.root / "serve.log", "ab")
        self.process = subprocess.Popen([sys.executable, "-m", "worker_agent", "serve", "--config", str(self.config)],
                                        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_for(self._answers, "the agent's API")

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, (self.root / "serve.log").read_text()
        try:
            requests.post(f"https://127.0.0.1:{self.port}/v1/ping", verify=False, timeout=2)
            return True
        except requests.exceptions.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        self.process = None

    def ping(self) -> dict:
        _, body = protocol.seal(self.key.encode(), "/v1/ping", {})
        reply = requests.post(f"https://127.0.0.1:{self.port}/v1/ping", data=body, verify=False, timeout=5)
        return protocol.unseal(self.key.encode(), "/v1/ping", reply.content).data


class FakeAgent:
    """One fake agent: its own certificate, key and port; `mode` says how it answers /v1/ping."""

    def __init__(self, root: Path, mode: str, **extra: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.port, self.key = root, free_port(), Fernet.generate_key().decode()
        key_pem, cert_pem = self_signed_cert("fake.worker.test", "127.0.0.1")
        (root / "key.pem").write_bytes(key_pem)
        (root / "cert.pem").write_bytes(cert_pem)
        self.fingerprint = cert_fingerprint(cert_pem)
        self.report_file = root / "report.json"
        self.config = {"port": self.port, "cert_file": str(root / "cert.pem"), "key_file": str(root / "key.pem"),
                       "agent_key": self.key, "mode": mode, "report_file": str(self.report_file), **extra}
        (root / "config.json").write_text(json.dumps(self.config))
        self.log = root / "agent.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([sys.executable, str(FAKE_AGENT), str(root / "config.json")],
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_listening(self.process, self.port, "the fake agent", hint=f" (see {self.log})")

    def report(self, events: list[dict] = (), bounces: list[dict] = ()) -> None:
        """What the agent answers on /v1/outcomes from now on (items above the panel's ack)."""
        self.report_file.write_text(json.dumps({"events": list(events), "bounces": list(bounces)}))

    def register(self, app, user_id: int, name: str) -> int:
        with app.app_context():
            server = register_server(
                db.session.get(User, user_id), name=name, host="127.0.0.1", port=self.port, agent_key=self.key,
                fingerprint=self.fingerprint, ips=[SourceIP("127.0.0.2", "ip2.worker.test")])
            db.session.commit()
            return server.id

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Agents:
    """Starts fake agents for a test and stops every one of them afterwards."""

    def __init__(self, root: Path) -> None:
        self.root, self.started = root, []

    def start(self, mode: str = "honest", **extra: str) -> FakeAgent:
        agent = FakeAgent(self.root / f"agent{len(self.started)}", mode, **extra)
        self.started.append(agent)
        return agent

    def stop(self) -> None:
        for agent in self.started:
            agent.stop()


class CountingServer:
    """A plain HTTP server on 127.0.0.1 that records every request it gets (a redirect's target)."""

    def __init__(self) -> None:
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                hits.append((self.command, self.path))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = do_PUT = _record  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/internal/admin"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def daemon_round(app, state: DaemonState | None = None) -> None:
    with app.app_context():
        run_round(state or DaemonState())


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def peak_growth_mib(fn) -> float:
    """How far this process's resident memory rose above where it was while `fn` ran (MiB): the
    kernel's high-water mark, reset first (writing 5 to clear_refs), so no peak between samples is missed."""
    baseline = rss_kib()
    Path("/proc/self/clear_refs").write_text("5")
    fn()
    return (rss_kib("VmHWM") - baseline) / 1024


class TakingAgent:
    """Stands in for an AgentClient that takes every push (for tests whose letters must have been
    given to their server, as the daemon gives them, before the server may report about them)."""

    def call(self, path: str, payload: dict, **_: object) -> dict:
        return {}


class RecordingAgent(TakingAgent):
    """A TakingAgent that keeps every batch pushed to it, and answers a recall as an agent whose
    sender has not reached any of them: it gives back what it holds, except ids in `sending`."""

    def __init__(self) -> None:
        self.batches: list[dict] = []
        self.held: set[int] = set()
        self.sending: set[int] = set()

    def call(self, path: str, payload: dict, **_: object) -> dict:
        if path == "/v1/batches":
            self.batches.append(payload)
            self.held |= {item["id"] for item in payload["recipients"]}
        if path == "/v1/recall":
            asked = payload["ids"]
            recalled = [i for i in asked if i in self.held and i not in self.sending]
            self.held -= set(recalled)
            return {"recalled": recalled, "not_recalled": {
                "sending": [i for i in asked if i in self.sending],
                "unknown": [i for i in asked if i not in self.held and i not in recalled]}}
        return {}


def hand_over(server_id: int) -> RecordingAgent:
    """What a daemon round does for a server that answers (call inside an app context): it takes
    letters of its running campaigns, choosing their IPs, and pushes them (to a RecordingAgent)."""
    from panel.daemon.dispatch import dispatch_server
    from panel.models import Server

    server = db.session.get(Server, server_id)
    server.status = "online"
    db.session.commit()
    agent = RecordingAgent()
    dispatch_server(agent, db.session.get(Server, server_id))
    return agent
