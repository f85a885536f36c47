"""End-to-end throughput: Mailfleet's whole path against the MTA alone, in one run.

(a) baseline: the same number of letters, prebuilt, submitted straight to the same Exim by a
    plain SMTP client over the same number of connections, until all reached the capture;
(b) the same recipients as a campaign: panel API → daemon → agent → Exim → capture;
(c) the agent's memory (all its processes) with 100,000 letters queued.

Prints JSON lines; the last one holds both rates, "ratio" = (b)/(a) and the RSS peaks.
Usage: python bench/e2e.py [RECIPIENTS] (default 20000)
"""

from __future__ import annotations

import json
import os
import smtplib
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devserver.stack import LocalStack, StackSettings  # noqa: E402
from panel.daemon.agent_client import AgentClient  # noqa: E402
from worker_agent.render import Renderer  # noqa: E402

CONNECTIONS = 4
SUBJECT = "News for {{ name }}"
TEXT = "Hello {{ name }},\n\nYour code is {{ code }}. Here is this week's news.\n" + "Some news text. " * 40 + \
       "\n\nUnsubscribe: {{ unsubscribe_url }}\n"
HTML = "<p>Hello <b>{{ name }}</b>,</p><p>Your code is {{ code }}.</p><p>" + "Some news text. " * 40 + \
       "</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>"


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def maildir_count(maildir: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(maildir / "new"))
    except FileNotFoundError:
        return 0


def wait_count(maildir: Path, target: int, timeout: float) -> float:
    """When the capture holds `target` letters. Listing tens of thousands of files costs CPU
    the system under test needs, so look once a second until the end is near, then often."""
    deadline = time.monotonic() + timeout
    while (count := maildir_count(maildir)) < target:
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: {count} of {target} letters arrived")
        time.sleep(1.0 if target - count > 300 else 0.05)
    return time.monotonic()


class RssSampler(threading.Thread):
    """Peak of the summed RSS of a set of process trees, sampled every 0.2 s."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids, self.peak, self._done = pids, 0, threading.Event()

    def sample(self) -> int:
        total = 0
        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def run(self) -> None:
        while not self._done.wait(0.2):
            self.peak = max(self.peak, self.sample())

    def stop(self) -> int:
        self._done.set()
        self.join()
        self.peak = max(self.peak, self.sample())
        return self.peak


def cpu_seconds(stack: LocalStack) -> dict[str, float]:
    """CPU time (user + system) used so far by each of the stack's process trees, and the machine."""
    used: dict[str, float] = {}
    for name, process in stack.processes.items():
        try:
            root = psutil.Process(process.pid)
            used[name] = sum(sum(p.cpu_times()[:2]) for p in [root, *root.children(recursive=True)])
        except psutil.NoSuchProcess:
            used[name] = 0.0
    times = psutil.cpu_times()
    used["machine"] = times.user + times.system + times.nice + times.softirq + times.irq
    return used


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: round(after[name] - before.get(name, 0.0), 1) for name in after}


def campaign_json(campaign_id: int) -> dict:
    return {
        "id": campaign_id, "subject": SUBJECT, "from_email": "news@sender.example", "from_name": "Sender News",
        "text": TEXT, "html": HTML, "encoding": "quoted-printable", "message_id_domain": "sender.example",
        "bounce_domain": "bounces.mailfleet.test", "unsubscribe_url": "http://127.0.0.1:5000/u/",
    }


def baseline(stack: LocalStack, n: int, ips: list[str]) -> float:
    renderer = Renderer()
    campaign = campaign_json(1)
    letters = [
        renderer.render(campaign, {"id": i, "email": f"b{i}@base.example", "token": f"{i}-0000000000",
                                   "source_ip": ips[i % len(ips)], "fields": {"name": f"Reader {i}", "code": f"C{i}"}})
        for i in range(n)
    ]
    start_count = maildir_count(stack.maildir)

    def submit(part: list) -> None:
        with smtplib.SMTP("127.0.0.1", stack.exim_port) as smtp:
            for letter in part:
                smtp.sendmail(letter.envelope_from, [letter.recipient], letter.data)

    threads = [threading.Thread(target=submit, args=(letters[k::CONNECTIONS],)) for k in range(CONNECTIONS)]
    cpu_before = cpu_seconds(stack)
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    finished = wait_count(stack.maildir, start_count + n, timeout=max(600, n / 20))
    emit({"phase": "baseline_cpu_s", **cpu_delta(cpu_before, cpu_seconds(stack))})
    return n / (finished - started)


def campaign(stack: LocalStack, n: int) -> tuple[float, int]:
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {stack.api_token}"
    base = stack.panel_url + "/api/v1"
    list_id = api.post(base + "/lists", json={"name": "bench"}).json()["id"]
    for first in range(0, n, 10000):
        rows = [{"email": f"c{i}@camp.example", "name": f"Reader {i}", "code": f"C{i}"}
                for i in range(first, min(n, first + 10000))]
        report = api.post(f"{base}/lists/{list_id}/recipients", json=rows, timeout=300).json()
        assert report["added"] == len(rows), report
    created = api.post(base + "/campaigns", json={
        "name": "bench", "subject": SUBJECT, "from_email": "news@sender.example", "from_name": "Sender News",
        "text": TEXT, "html": HTML, "encoding": "quoted-printable", "lists": [list_id]}).json()
    start_count = maildir_count(stack.maildir)
    agent = RssSampler([stack.processes["agent-api"].pid, stack.processes["agent-sender"].pid])
    agent.start()
    cpu_before = cpu_seconds(stack)
    started = time.monotonic()
    response = api.post(f"{base}/campaigns/{created['id']}/start", timeout=300)
    assert response.status_code == 200, response.text
    finished = wait_count(stack.maildir, start_count + n, timeout=max(600, n / 20))
    emit({"phase": "campaign_cpu_s", **cpu_delta(cpu_before, cpu_seconds(stack))})
    peak = agent.stop()
    return n / (finished - started), peak


def queued_memory(stack: LocalStack, letters: int) -> int:
    """Push `letters` into the agent for a paused campaign and measure the agent's processes."""
    agent_json = json.loads(stack.agent_config_path.read_text())
    key = Path(agent_json["key_file"]).read_bytes()
    client = AgentClient(f"https://127.0.0.1:{stack.agent_port}", key, stack.agent_fingerprint, timeout=120)
    campaign_id = 10**6
    sampler = RssSampler([stack.processes["agent-api"].pid, stack.processes["agent-sender"].pid])
    sampler.start()
    client.call("/v1/campaigns/state", {"campaign_id": campaign_id, "state": "paused"})
    for first in range(0, letters, 1000):
        recipients = [{"id": 10**9 + i, "email": f"q{i}@queued.example", "fields": {"name": f"Q {i}"},
                       "source_ip": stack.settings.source_ips[0][0], "token": f"{10**9 + i}-0000000000"}
                      for i in range(first, first + 1000)]
        client.call("/v1/batches", {"batch_id": f"mem-{first}", "campaign": campaign_json(campaign_id),
                                    "recipients": recipients})
    queued = client.call("/v1/ping", {})["queued"]
    time.sleep(3)  # the sender keeps polling its queue meanwhile
    peak = sampler.stop()
    client.call("/v1/campaigns/state", {"campaign_id": campaign_id, "state": "cancelled"})
    client.close()
    emit({"phase": "agent_memory", "queued": queued, "agent_rss_mb": round(peak / 2**20, 1)})
    return peak


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    with tempfile.TemporaryDirectory(prefix="mailfleet-bench-") as tmp:
        Path(tmp).chmod(0o755)  # Exim's processes (Debian-exim) keep their run directory in it
        settings = StackSettings(root=Path(tmp), smtp_connections=CONNECTIONS)
        with LocalStack(settings) as stack:
            ips = [ip for ip, _ in settings.source_ips]
            raw = baseline(stack, n, ips)
            emit({"phase": "baseline", "letters": n, "connections": CONNECTIONS, "letters_per_s": round(raw, 1)})
            rate, sending_peak = campaign(stack, n)
            emit({"phase": "campaign", "letters": n, "letters_per_s": round(rate, 1),
                  "agent_rss_mb_peak": round(sending_peak / 2**20, 1)})
            queued_peak = queued_memory(stack, 100_000)
    emit({"bench": "e2e", "letters": n, "baseline_per_s": round(raw, 1), "mailfleet_per_s": round(rate, 1),
          "ratio": round(rate / raw, 3), "agent_rss_mb_sending": round(sending_peak / 2**20, 1),
          "agent_rss_mb_100k_queued": round(queued_peak / 2**20, 1)})


if __name__ == "__main__":
    main()
