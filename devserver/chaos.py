"""A chaos run over a local fleet (issue 9 point 11): one campaign going out through three workers
while, round after round, a random part of the system is SIGKILLed at a random moment and started
again — the daemon, or one worker's agent API, sender, Exim or the whole worker.

Shared by `bench/chaos.py` (5,000 recipients, 20 rounds) and `tests/e2e/test_chaos.py` (a few
rounds in `make test`). What is judged is what arrived at the capture: every recipient's letters
counted there (by Message-ID), and the campaign's stats from the API compared with it.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import requests

from .mail_capture import count_messages, read_maildir
from .stack import LocalStack

# Small pushes and a small window, so that letters are in flight on every worker (pushed, queued in
# its agent, handed to its Exim) whenever something is killed; short leases so that a restarted
# daemon takes its servers back at once.
PANEL_ENV = {
    "MAILFLEET_DISPATCH_WINDOW": "200",
    "MAILFLEET_DISPATCH_BATCH_SIZE": "50",
    "MAILFLEET_DAEMON_INTERVAL": "0.2",
    "MAILFLEET_DAEMON_LEASE_SECONDS": "4",
}
WORKER_PARTS = ("api", "sender", "exim", "all")
DOMAIN = "chaos.example"


def victims(workers: int) -> list[str]:
    """What a round may kill: "daemon", or "worker<n>:<part>"."""
    return ["daemon"] + [f"worker{n}:{part}" for n in range(workers) for part in WORKER_PARTS]


class Api:
    def __init__(self, stack: LocalStack) -> None:
        self.base = stack.panel_url + "/api/v1"
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {stack.api_token}"

    def call(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        response = self.session.request(method, self.base + path, json=body, timeout=timeout)
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:500]}")
        return response.json()


def wait_online(api: Api, workers: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        servers = api.call("GET", "/servers")
        if len(servers) == workers and all(s["status"] == "online" for s in servers):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"servers not all online within {timeout:.0f} s: "
                               f"{[(s['id'], s['status']) for s in servers]}")
        time.sleep(0.5)


def recipients(n: int) -> list[str]:
    return [f"r{i}@{DOMAIN}" for i in range(n)]


def start_campaign(api: Api, n: int) -> int:
    """A list of n recipients and a campaign to it, started; the campaign's id."""
    list_id = api.call("POST", "/lists", {"name": "chaos"})["id"]
    report = api.call("POST", f"/lists/{list_id}/recipients", [{"email": email} for email in recipients(n)],
                      timeout=600)
    if report["added"] != n:
        raise RuntimeError(f"the list took {report['added']} of {n} recipients: {report}")
    campaign = api.call("POST", "/campaigns", {
        "name": "chaos", "subject": "Chaos", "from_email": "news@sender.example",
        "text": "Hello.\n{{ unsubscribe_url }}\n", "lists": [list_id]})
    api.call("POST", f"/campaigns/{campaign['id']}/start", {}, timeout=600)
    return campaign["id"]


def kill(stack: LocalStack, victim: str) -> None:
    if victim == "daemon":
        stack.kill_daemon()
    else:
        worker, part = victim.removeprefix("worker").split(":")
        stack.kill_worker_part(int(worker), part)


def restart(stack: LocalStack, victim: str) -> None:
    if victim == "daemon":
        stack.start_daemon()
    else:
        worker, part = victim.removeprefix("worker").split(":")
        stack.start_worker_part(int(worker), part)


@dataclass
class Round:
    number: int
    victim: str
    after_s: float  # how long the system ran before the kill
    down_s: float  # how long the victim stayed down
    captured: int  # letters at the capture when it was started again

    def json(self) -> dict:
        return {"round": self.number, "killed": self.victim, "after_s": round(self.after_s, 2),
                "down_s": round(self.down_s, 2), "captured": self.captured}


def chaos_round(stack: LocalStack, rng: random.Random, number: int,
                run_s: tuple[float, float] = (0.5, 4.0), down_s: tuple[float, float] = (0.0, 2.0)) -> Round:
    """Let the system run a random while, SIGKILL a random victim, wait a random while, start it again."""
    victim = rng.choice(victims(len(stack.workers)))
    after, down = rng.uniform(*run_s), rng.uniform(*down_s)
    time.sleep(after)
    kill(stack, victim)
    time.sleep(down)
    restart(stack, victim)
    return Round(number, victim, after, down, count_messages(stack.maildir))


def wait_finished(api: Api, campaign_id: int, timeout: float) -> dict:
    """The campaign's stats once it is finished (or when `timeout` has passed: then as they are)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = api.call("GET", f"/campaigns/{campaign_id}/stats")
        if stats["status"] == "finished" or time.monotonic() > deadline:
            return stats
        time.sleep(1.0)


def settle(stack: LocalStack, timeout: float = 60) -> None:
    """Wait until every worker's Exim queue is empty: a letter Exim still holds may yet arrive (twice)."""
    deadline = time.monotonic() + timeout
    for worker in stack.workers:
        assert worker.exim is not None
        worker.exim.wait_queue_empty(max(1.0, deadline - time.monotonic()))


def exim_redelivered(stack: LocalStack, twice: dict[str | None, int]) -> int:
    """Of the extra copies of letters delivered more than once, those of a letter some worker's Exim took
    only once (one `<=` line in all their logs): Exim was killed between the capture's 250 and its own
    record of the delivery (its -J journal), and delivered the letter again after its restart. That window
    is SMTP's own (RFC 1047), the same for every MTA; a copy Exim took twice is the agent's or the panel's."""
    if not twice:
        return 0
    arrivals: Counter = Counter()
    wanted = {mid.strip("<>") for mid in twice if mid}
    for worker in stack.workers:
        assert worker.exim is not None
        with open(worker.exim.mainlog, errors="replace") as log:
            for line in log:
                if " <= " in line and (found := _LOG_MESSAGE_ID.search(line)) and found[1] in wanted:
                    arrivals[found[1]] += 1
    return sum(count - 1 for mid, count in twice.items() if mid and arrivals[mid.strip("<>")] == 1)


_LOG_MESSAGE_ID = re.compile(r" id=(\S+)")


def tally(stack: LocalStack, n: int, stats: dict) -> dict:
    """What the capture holds for the campaign's recipients, against the campaign's stats.

    delivered_once: recipients whose letter arrived exactly once; lost: recipients with none;
    duplicates: copies beyond the first (duplicates_exim_redelivered: how many of them Exim made on its
    own after a kill, see exim_redelivered). Each recipient's copies are counted by Message-ID (one
    delivery has one Message-ID, kept through every retry): two Message-IDs for one recipient are two
    letters made for it, one Message-ID twice is one letter delivered twice; both are duplicates."""
    wanted = set(recipients(n))
    per_recipient: dict[str, Counter] = {email: Counter() for email in wanted}
    strangers = 0
    for letter in read_maildir(stack.maildir):
        if letter.rcpt_to in wanted:
            per_recipient[letter.rcpt_to][letter.message_id] += 1
        else:
            strangers += 1
    copies = {email: sum(ids.values()) for email, ids in per_recipient.items()}
    twice = {mid: count for ids in per_recipient.values() for mid, count in ids.items() if count > 1}
    arrived = sum(1 for c in copies.values() if c)
    stats_match = (stats["status"] == "finished" and stats["total"] == n and stats["delivered"] == arrived
                   and stats["queued"] == 0 and stats["sent"] == stats["delivered"])
    return {
        "delivered_once": sum(1 for c in copies.values() if c == 1),
        "lost": sum(1 for c in copies.values() if c == 0),
        "duplicates": sum(c - 1 for c in copies.values() if c > 1),
        "duplicates_exim_redelivered": exim_redelivered(stack, twice),
        "stats_match": stats_match,
        "stats": {key: stats[key] for key in ("status", "total", "queued", "sent", "delivered", "deferred",
                                              "failed", "cancelled")},
        "strangers": strangers,
        "lost_sample": sorted(email for email, c in copies.items() if c == 0)[:20],
        "duplicate_sample": sorted(email for email, c in copies.items() if c > 1)[:20],
    }


def run(stack: LocalStack, n: int, rounds: int, seed: int, emit=None, finish_timeout: float = 900,
        run_s: tuple[float, float] = (0.5, 4.0), down_s: tuple[float, float] = (0.0, 2.0)) -> dict:
    """The whole chaos run on a started stack; returns the headline (what emit gets last)."""
    emit = emit or (lambda record: None)
    rng = random.Random(seed)
    api = Api(stack)
    wait_online(api, len(stack.workers))
    started = time.monotonic()
    campaign_id = start_campaign(api, n)
    emit({"phase": "started", "campaign": campaign_id, "recipients": n, "start_s": round(time.monotonic() - started, 1)})
    for number in range(1, rounds + 1):
        emit(chaos_round(stack, rng, number, run_s, down_s).json())
    stats = wait_finished(api, campaign_id, finish_timeout)
    settle(stack)
    result = tally(stack, n, stats)
    result["wall_s"] = round(time.monotonic() - started, 1)
    detail = {"phase": "detail", **{k: result.pop(k) for k in ("stats", "strangers", "lost_sample", "duplicate_sample")}}
    emit(detail)
    headline = {"rounds": rounds, "recipients": n, **result}
    emit(headline)
    return {**headline, "detail": detail}
