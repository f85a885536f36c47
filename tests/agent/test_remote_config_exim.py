"""A config pushed to a running agent reaches the running sender and Exim: a real Exim delivering
to the mail capture, the sender as its own process, the config posted to the agent's API."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from devserver.exim import EXIM_BIN, Exim
from devserver.mail_capture import CaptureServer
from tests.helpers import wait_for
from worker_agent.api import create_app
from worker_agent.config import AgentConfig
from worker_agent.remote_config import write_helo_map
from worker_agent.setup_node import init_node

from .conftest import make_recipient
from .test_api import Panel
from .test_sender_exim import campaign, make_agent  # noqa: F401  (make_agent is a fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a real Exim with its own config needs root")


@pytest.fixture
def node(make_agent: Callable[..., tuple], exim: Exim) -> tuple[Any, Any, Any, Panel]:  # noqa: F811
    """An agent whose HELO map is the one the Exim fixture reads, its sender running, and the panel's side."""
    config, sender, db = make_agent(helo_map=str(exim.helo_map))
    init_node(config)
    sender.start()
    return config, sender, db, Panel(create_app(config).test_client(), config.read_key())


def push(panel: Panel, config: dict[str, Any]) -> None:
    status, reply = panel.call("/v1/config", config)
    assert status == 200, reply


def sent_times(config: AgentConfig, ids: range) -> list[float]:
    conn = sqlite3.connect(config.queue_db)
    try:
        rows = conn.execute(
            f"SELECT at FROM events WHERE status = 'sent' AND delivery_id IN ({','.join(map(str, ids))}) ORDER BY at"
        ).fetchall()
    finally:
        conn.close()
    return [r[0] for r in rows]


def helo_of(capture: CaptureServer, email: str) -> tuple[str, str]:
    (message,) = [m for m in capture.messages() if m.rcpt_to == email]
    return message.peer_ip, message.helo


def test_a_helo_change_takes_effect_for_the_next_letter(node: tuple, capture: CaptureServer, exim: Exim) -> None:
    config, sender, db, panel = node
    assert not exim.helo_map.exists()  # no map yet: Exim greets with its configured names and still delivers
    db.queue_batch("b1", campaign(), [make_recipient(1, email="a1@example.org"),
                                      make_recipient(2, email="a2@example.org", source_ip="127.0.0.3")])
    wait_for(lambda: capture.count() == 2, "the first two letters")
    assert helo_of(capture, "a1@example.org") == ("127.0.0.2", "ip2.worker.test")
    assert helo_of(capture, "a2@example.org") == ("127.0.0.3", "ip3.worker.test")

    push(panel, {"version": 1, "rate_limits": [], "helo": {"127.0.0.2": "Fresh.Example.net"}})
    db.queue_batch("b2", campaign(), [make_recipient(3, email="a3@example.org"),
                                      make_recipient(4, email="a4@example.org", source_ip="127.0.0.3")])
    wait_for(lambda: capture.count() == 4, "the next two letters")
    assert helo_of(capture, "a3@example.org") == ("127.0.0.2", "fresh.example.net")  # no reload, no restart
    assert helo_of(capture, "a4@example.org") == ("127.0.0.3", "ip3.worker.test")  # not in the map: unchanged

    push(panel, {"version": 2, "rate_limits": [], "helo": {}})
    db.queue_batch("b3", campaign(), [make_recipient(5, email="a5@example.org")])
    wait_for(lambda: capture.count() == 5, "the fifth letter")
    assert helo_of(capture, "a5@example.org") == ("127.0.0.2", "ip2.worker.test")  # back to Ansible's name
    assert not [line for line in exim.log_lines() if "helo" in line.lower() and "defer" in line.lower()]


def test_a_rate_limit_pushed_at_run_time_slows_a_domain(node: tuple, capture: CaptureServer) -> None:
    config, sender, db, panel = node
    db.queue_batch("b1", campaign(), [make_recipient(i, email=f"u{i}@runtime.example") for i in range(1, 11)])
    wait_for(lambda: capture.count() == 10, "ten unlimited letters")
    before = sent_times(config, range(1, 11))
    assert before[-1] - before[0] < 1.5, before  # no limit for the domain yet: all at once

    push(panel, {"version": 1, "helo": {},
                 "rate_limits": [{"source_ip": "*", "domain": "runtime.example", "per_minute": 120}]})  # 2 a second
    wait_for(lambda: "config version 1" in sender.output(), "the sender to take up version 1", timeout=10)
    db.queue_batch("b2", campaign(), [make_recipient(i, email=f"u{i}@runtime.example") for i in range(11, 21)])
    db.queue_batch("b3", campaign(), [make_recipient(i, email=f"u{i}@other.example") for i in range(21, 31)])
    wait_for(lambda: capture.count() == 30, "the next twenty letters", timeout=60)
    after = sent_times(config, range(11, 21))
    gaps = [b - a for a, b in zip(after, after[1:])]
    # two at once, then one every half second: eight gaps of about 0.5 s
    assert 3.0 < after[-1] - after[0] < 10, after
    assert sum(gap > 0.3 for gap in gaps) >= 7, gaps
    others = sent_times(config, range(21, 31))
    assert others[-1] - others[0] < 1.5, others  # another domain is not held up


def test_raising_a_limit_releases_letters_held_by_the_old_one(node: tuple, capture: CaptureServer) -> None:
    config, sender, db, panel = node
    push(panel, {"version": 1, "helo": {},
                 "rate_limits": [{"source_ip": "127.0.0.2", "domain": "held.example", "per_minute": 6}]})
    wait_for(lambda: "config version 1" in sender.output(), "the sender to take up version 1", timeout=10)
    db.queue_batch("b1", campaign(), [make_recipient(i, email=f"u{i}@held.example") for i in range(1, 5)])
    wait_for(lambda: capture.count() == 1, "the first letter (one every 10 s)")

    def held() -> list[float]:
        return [r[0] for r in db.conn().execute(
            "SELECT not_before FROM letters WHERE state = 'queued' ORDER BY not_before").fetchall()]

    assert len(wait_for(lambda: len(held()) == 3 and held(), "three letters held")) == 3
    assert held()[-1] > time.time() + 15  # staggered 10 s apart
    push(panel, {"version": 2, "helo": {},
                 "rate_limits": [{"source_ip": "127.0.0.2", "domain": "held.example", "per_minute": 6000}]})
    wait_for(lambda: capture.count() == 4, "the held letters, at the new limit", timeout=8)
    assert "config version 2: 1 rate limits now in force, 3 held letters due again" in sender.output()


def test_exim_reads_the_map_the_agent_writes_ipv4_and_ipv6(exim: Exim) -> None:
    """The exact lookup of the rendered config, run by Exim itself against a map the agent wrote."""
    line = next(line for line in exim.config_path.read_text().splitlines() if "helo_data = ${if exists" in line)
    expression = line.split("helo_data = ", 1)[1]

    def expand(text: str) -> str:
        result = subprocess.run([EXIM_BIN, "-C", str(exim.config_path), "-be"], input=text + "\n",
                                capture_output=True, text=True, check=True)
        return result.stdout.strip().removeprefix(">").strip().splitlines()[0]

    exim.helo_map.unlink(missing_ok=True)
    assert expand(expression) == "ip2.worker.test"  # no map: the configured name, no error
    write_helo_map(exim.helo_map, {"127.0.0.2": "new.example.net", "2001:db8::25": "six.example.net"})
    assert expand(expression) == "new.example.net"
    six = expression.replace("{127.0.0.2}", "{2001:db8::25}")
    assert expand(six) == "six.example.net"  # the quoted key holds the colons
    write_helo_map(exim.helo_map, {"127.0.0.3": "other.example.net"})
    assert expand(expression) == "ip2.worker.test"  # no line for the IP: the configured name
