"""The sender against a real Exim delivering to the mail capture (tests/conftest.py fixtures):
submission, Exim's log read back into events, bounces piped back into the queue."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from devserver.exim import Exim
from devserver.mail_capture import CaptureServer
from devserver.ports import free_port
from worker_agent.config import AgentConfig, load_config
from tests.helpers import wait_for
from worker_agent.queue import QueueDB

from .conftest import make_campaign, make_recipient

REPO = Path(__file__).resolve().parents[2]
BOUNCE_DOMAIN = "bounces.test"  # what the conftest's Exim routes to the bounce pipe

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a real Exim with its own config needs root")


def campaign(**changes: Any) -> dict[str, Any]:
    return make_campaign(bounce_domain=BOUNCE_DOMAIN, **changes)


class RunningSender:
    """`python -m worker_agent sender` as a real process (stopped with SIGTERM)."""

    def __init__(self, config: AgentConfig, log: Path) -> None:
        self.config, self.log_path = config, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker_agent", "sender", "--config", str(self.config.path)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, timeout: float = 30) -> int:
        process, self.process = self.process, None
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise AssertionError("the sender did not stop on SIGTERM") from None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def make_agent(exim: Exim, tmp_path: Path) -> Iterator[Callable[..., tuple[AgentConfig, RunningSender, QueueDB]]]:
    """An agent config for the Exim fixture, its sender (not started yet) and its queue."""
    made: list[tuple[RunningSender, QueueDB]] = []

    def make(**overrides: Any) -> tuple[AgentConfig, RunningSender, QueueDB]:
        path = tmp_path / f"agent{len(made)}.json"
        settings = {
            "data_dir": str(tmp_path / f"data{len(made)}"), "smtp_port": exim.settings.smtp_port,
            "smtp_connections": 4, "exim_mainlog": str(exim.mainlog), "bounce_spool": str(exim.bounce_spool),
            "source_ips": ["127.0.0.2", "127.0.0.3"], "hostname": "agent.worker.test",
            "rate_limits": [{"domain": "slow.example", "per_minute": 600}],
        }
        settings.update(overrides)
        path.write_text(json.dumps(settings))
        config = load_config(path)
        db = QueueDB(config.queue_db)
        sender = RunningSender(config, tmp_path / f"sender{len(made)}.log")
        made.append((sender, db))
        return config, sender, db

    try:
        yield make
    finally:
        for sender, db in made:
            code = sender.stop()
            db.close()
            assert code == 0, sender.output()
            assert "Traceback" not in sender.output(), sender.output()


@pytest.fixture
def agent(make_agent: Callable[..., tuple[AgentConfig, RunningSender, QueueDB]]
          ) -> tuple[AgentConfig, RunningSender, QueueDB]:
    return make_agent()


def events(db: QueueDB) -> list[dict[str, Any]]:
    return db.outcomes(0)["events"]


def statuses(db: QueueDB) -> dict[int, list[str]]:
    by_id: dict[int, list[str]] = {}
    for e in events(db):
        by_id.setdefault(e["id"], []).append(e["status"])
    return by_id


def test_accept_defer_reject_and_refused_source_ip(agent: tuple, capture: CaptureServer, exim: Exim) -> None:
    config, sender, db = agent
    capture.set_rule("busy@example.org", "defer")
    capture.set_rule("gone@example.org", "reject")
    recipients = [
        make_recipient(1, email="ok@example.org", token="1-OkTok"),
        make_recipient(2, email="busy@example.org", token="2-busytok"),
        make_recipient(3, email="gone@example.org", token="3-gonetok", source_ip="127.0.0.3"),
        make_recipient(4, email="other@example.org", token="4-iptok", source_ip="10.9.9.9"),
    ]
    assert db.queue_batch("b1", campaign(), recipients) == (4, 0)
    sender.start()
    expected = {1: ["sent", "delivered"], 2: ["sent", "deferred"], 3: ["sent", "failed"], 4: ["failed"]}
    wait_for(lambda: statuses(db) == expected, f"events {expected}, have {statuses(db)}")
    by_id = {(e["id"], e["status"]): e for e in events(db)}
    assert by_id[(1, "delivered")]["code"] == 250 and "queued as" in by_id[(1, "delivered")]["text"]
    assert by_id[(2, "deferred")]["code"] == 451 and "mailbox busy" in by_id[(2, "deferred")]["text"]
    assert by_id[(3, "failed")]["code"] == 550 and "no such user" in by_id[(3, "failed")]["text"]
    # Exim's own refusal at DATA (not a source IP of this node) comes back as the failure reason
    assert by_id[(4, "failed")]["code"] == 550 and "10.9.9.9" in by_id[(4, "failed")]["text"]
    assert by_id[(1, "sent")]["text"].startswith("250 OK id=")

    # Exim's DSN for the rejected letter came back through the pipe and the spool
    bounce = wait_for(lambda: db.outcomes(0)["bounces"], "the bounce of gone@example.org")[0]
    assert bounce["token"] == "3-gonetok" and bounce["kind"] == "bounce"
    assert "X-Failed-Recipients: gone@example.org" in bounce["raw"]
    assert os.listdir(exim.bounce_spool / "new") == []

    # what the recipient's server saw
    (message,) = [m for m in capture.messages() if m.rcpt_to == "ok@example.org"]
    assert message.mail_from == "bounce+1-OkTok@bounces.test"
    assert (message.peer_ip, message.helo) == ("127.0.0.2", "ip2.worker.test")
    assert message.message["Subject"] == "News for Ann 1"
    assert "X-Mailfleet-Source-IP" not in message.message
    assert message.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    states = dict(db.conn().execute("SELECT id, state FROM letters"))
    assert states == {1: "submitted", 2: "submitted", 3: "submitted", 4: "failed"}
    assert sender.stop() == 0
    assert "sender stopped" in sender.output()


def test_many_letters_each_sent_once_and_paused_ones_wait(agent: tuple, capture: CaptureServer) -> None:
    config, sender, db = agent
    db.queue_batch("b1", campaign(id=1), [make_recipient(i) for i in range(1, 201)])
    db.queue_batch("b2", campaign(id=2), [make_recipient(i) for i in range(1001, 1011)])
    db.set_campaign_state(2, "paused")
    sender.start()
    wait_for(lambda: capture.count() >= 200, "200 letters at the capture", timeout=60)
    time.sleep(1.0)
    delivered = [m.rcpt_to for m in capture.messages()]
    assert sorted(delivered) == sorted(f"user{i}@example.org" for i in range(1, 201))  # once each
    assert db.counts() == (10, 0)  # the paused campaign's letters are still queued
    db.set_campaign_state(2, "running")
    wait_for(lambda: capture.count() == 210, "the resumed campaign's letters")
    wait_for(lambda: sum(s == ["sent", "delivered"] for s in statuses(db).values()) == 210, "210 delivered events")


def test_claims_of_a_crashed_sender_are_sent_after_a_restart(agent: tuple, capture: CaptureServer) -> None:
    config, sender, db = agent
    db.queue_batch("b1", campaign(), [make_recipient(i) for i in range(1, 6)])
    db.claim(3)  # a sender claimed three letters and died
    sender.start()
    wait_for(lambda: capture.count() == 5, "all five letters")
    assert sorted(m.rcpt_to for m in capture.messages()) == [f"user{i}@example.org" for i in range(1, 6)]


def test_a_restarted_sender_reads_the_log_on_without_repeats(agent: tuple, capture: CaptureServer) -> None:
    config, sender, db = agent
    db.queue_batch("b1", campaign(), [make_recipient(i) for i in range(1, 21)])
    sender.start()
    wait_for(lambda: sum(s == ["sent", "delivered"] for s in statuses(db).values()) == 20, "the first 20")
    assert sender.stop() == 0
    db.queue_batch("b2", campaign(), [make_recipient(i) for i in range(21, 41)])
    sender.start()
    wait_for(lambda: len(statuses(db)) == 40 and all(s == ["sent", "delivered"] for s in statuses(db).values()),
             "all 40 sent and delivered once")
    time.sleep(1.0)  # nothing more may come
    assert all(s == ["sent", "delivered"] for s in statuses(db).values())
    assert capture.count() == 40


def test_one_smtp_connection_is_enough(make_agent: Callable[..., tuple], capture: CaptureServer) -> None:
    config, sender, db = make_agent(smtp_connections=1)
    db.queue_batch("b1", campaign(), [make_recipient(i) for i in range(1, 31)])
    sender.start()
    wait_for(lambda: capture.count() == 30, "30 letters over one connection")


def test_rate_limit_paces_one_domain_without_holding_up_others(agent: tuple, capture: CaptureServer) -> None:
    config, sender, db = agent
    slow = [make_recipient(i, email=f"user{i}@slow.example") for i in range(1, 31)]  # 600/min = 10/s
    fast = [make_recipient(i, email=f"user{i}@fast.example") for i in range(101, 131)]
    db.queue_batch("b1", campaign(), slow + fast)
    sender.start()
    wait_for(lambda: capture.count() == 60, "60 letters", timeout=60)
    conn = sqlite3.connect(config.queue_db)
    sent_at = dict(conn.execute(
        "SELECT e.delivery_id, e.at FROM events e WHERE e.status = 'sent'").fetchall())
    conn.close()
    start = min(sent_at.values())
    slow_span = max(sent_at[i] for i in range(1, 31)) - start
    fast_span = max(sent_at[i] for i in range(101, 131)) - start
    assert 1.5 < slow_span < 8, slow_span  # 10 at once, then 10 a second
    assert fast_span < 1.5, fast_span


def test_an_unreachable_exim_costs_no_attempts(write_config: Callable[..., AgentConfig], tmp_path: Path) -> None:
    config = write_config(smtp_port=free_port())  # nothing listens there
    db = QueueDB(config.queue_db)
    db.queue_batch("b1", campaign(), [make_recipient(i) for i in range(1, 4)])
    sender = RunningSender(config, tmp_path / "sender.log")
    sender.start()
    try:
        wait_for(lambda: "unreachable" in sender.output(), "the sender to notice")
        time.sleep(1.5)
    finally:
        assert sender.stop() == 0
    assert "Traceback" not in sender.output()
    rows = db.conn().execute("SELECT state, attempts FROM letters").fetchall()
    assert rows == [("queued", 0)] * 3
    assert events(db) == []
    db.close()


def test_an_idle_sender_does_not_spin(write_config: Callable[..., AgentConfig], tmp_path: Path) -> None:
    config = write_config(smtp_port=free_port())
    sender = RunningSender(config, tmp_path / "sender.log")
    sender.start()
    try:
        wait_for(lambda: "sender started" in sender.output(), "the sender to start")
        assert sender.process is not None
        process = psutil.Process(sender.process.pid)
        before = sum(process.cpu_times()[:2])
        time.sleep(3)
        used = sum(process.cpu_times()[:2]) - before
    finally:
        assert sender.stop() == 0
    assert used < 0.3, f"an idle sender used {used:.2f} s of CPU in 3 s"


def test_a_letter_exim_took_before_a_crash_is_not_sent_again(write_config: Callable[..., AgentConfig],
                                                              tmp_path: Path) -> None:
    """The sender died after Exim's 250 but before recording it: the restart reads the log first."""
    config = write_config(smtp_port=free_port())
    db = QueueDB(config.queue_db)
    db.queue_batch("b1", campaign(), [make_recipient(1, token="1-tok1")])
    db.claim(1)
    config.exim_mainlog.write_text(
        "2026-11-28 00:38:10 1xX6SA-0004im-2N <= bounce+1-tok1@bounces.test H=(agent.test) [127.0.0.1] "
        "I=[127.0.0.1]:40905 P=esmtp S=297 for user1@example.org\n")
    sender = RunningSender(config, tmp_path / "sender.log")
    sender.start()
    try:
        wait_for(lambda: "sender started" in sender.output(), "the sender to start")
        time.sleep(1.0)
    finally:
        assert sender.stop() == 0
    assert db.conn().execute("SELECT state, exim_id, attempts FROM letters").fetchall() == [
        ("submitted", "1xX6SA-0004im-2N", 1)]
    assert [(e["id"], e["status"]) for e in events(db)] == [(1, "sent")]
    assert "unreachable" not in sender.output()  # nothing was submitted
    db.close()


def test_a_second_sender_on_the_same_data_refuses_to_start(agent: tuple, tmp_path: Path) -> None:
    config, sender, db = agent
    sender.start()
    wait_for(lambda: "sender started" in sender.output(), "the first sender")
    second = subprocess.run([sys.executable, "-m", "worker_agent", "sender", "--config", str(config.path)],
                            cwd=REPO, capture_output=True, timeout=30)
    assert second.returncode == 2 and b"another sender is already running" in second.stderr
