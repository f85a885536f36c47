"""100,000 letters queued: the agent's processes (API + sender) stay under 120 MB RSS together."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from devserver.ports import free_port
from worker_agent import protocol
from worker_agent.config import AgentConfig

from .conftest import make_campaign
from .test_api import pinned_pool

REPO = Path(__file__).resolve().parents[2]
LETTERS = 100_000
BATCH = 5_000  # the most one batch may carry (worker_agent.api.MAX_RECIPIENTS)
LIMIT_MB = 120


def tree_rss(process: subprocess.Popen[bytes]) -> int:
    root = psutil.Process(process.pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class PeakSampler(threading.Thread):
    """The highest combined RSS seen, sampled every 20 ms (peaks inside a request count too)."""

    def __init__(self, processes: list[subprocess.Popen[bytes]]) -> None:
        super().__init__(daemon=True)
        self.processes, self.peak, self.done = processes, 0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, sum(tree_rss(p) for p in self.processes))

    def stop(self) -> int:
        self.done.set()
        self.join()
        return self.peak


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "worker_agent", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_hundred_thousand_queued_letters_fit_in_120_mb(write_config: Any, tmp_path: Path) -> None:
    port = free_port()
    # Exim "down" (nothing on smtp_port): the sender keeps claiming and putting back the whole time
    config: AgentConfig = write_config(listen=f"127.0.0.1:{port}", smtp_port=free_port())
    init = subprocess.run([sys.executable, "-m", "worker_agent", "init", "--config", str(config.path)],
                          cwd=REPO, capture_output=True, check=True)
    fingerprint = json.loads(init.stdout)["fingerprint"]
    key = config.read_key()
    api = start(["serve", "--config", str(config.path)], tmp_path / "api.log")
    sender = start(["sender", "--config", str(config.path)], tmp_path / "sender.log")
    try:
        pool = pinned_pool(port, fingerprint)

        def call(path: str, data: Any) -> Any:
            deadline = time.monotonic() + 30
            while True:
                nonce, body = protocol.seal(key, path, data)
                try:
                    response = pool.request("POST", path, body=body)
                    break
                except Exception:
                    assert api.poll() is None and time.monotonic() < deadline, (tmp_path / "api.log").read_text()
                    time.sleep(0.2)
            assert response.status == 200, response.data
            return protocol.unseal(key, path, response.data).data

        campaign = make_campaign(text="Hello {{ name }}, " + "x" * 1500 + "\n")
        sampler = PeakSampler([api, sender])
        sampler.start()
        for n in range(LETTERS // BATCH):
            recipients = [{"id": i, "email": f"user{i}@example.org",
                           "fields": {"name": f"Reader {i}", "code": f"C{i}", "city": "Tromsø", "plan": "Gold"},
                           "source_ip": "127.0.0.2", "token": f"{i}-{i:010x}"}
                          for i in range(n * BATCH + 1, (n + 1) * BATCH + 1)]
            assert call("/v1/batches", {"batch_id": f"b{n}", "campaign": campaign, "recipients": recipients})[
                "queued"] == BATCH
        ping = call("/v1/ping", {})
        assert ping["queued"] + ping["sending"] == LETTERS
        time.sleep(2)  # the sender goes on claiming and putting back meanwhile
        assert sender.poll() is None, (tmp_path / "sender.log").read_text()
        now = tree_rss(api) + tree_rss(sender)
        peak = sampler.stop()
        print(json.dumps({"queued": LETTERS, "rss_mb_now": round(now / 2**20, 1), "rss_mb_peak": round(peak / 2**20, 1)}))
        assert peak < LIMIT_MB * 2**20, f"agent processes peaked at {peak / 2**20:.1f} MB"
    finally:
        stop(sender)
        stop(api)
