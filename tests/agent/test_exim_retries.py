"""Exim's retries go through the agent's limits (issue 9 defect "Exim's own retries bypass the
agent's limits"; design in docs/shaping.md): Exim's retry rule never retries before giving up,
and the sender's retry driver forces each deferred letter with `exim -M` when its
(source IP, provider) pair has a token."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devserver.exim import EXIM_BIN, Exim
from devserver.mail_capture import CaptureServer
from tests.helpers import wait_for
from worker_agent import remote_config
from worker_agent.config import AgentConfig, load_config
from worker_agent.queue import QueueDB

from .conftest import make_recipient
from .test_sender_exim import RunningSender, campaign, statuses

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a real Exim with its own config needs root")

NEVER_BEFORE_GIVING_UP = ["* * F,2d,2d"]


@pytest.fixture
def held_exim(exim_factory: Callable[..., Exim]) -> Exim:
    return exim_factory(exim_retry_rules=NEVER_BEFORE_GIVING_UP)


@pytest.fixture
def make_sender(held_exim: Exim, tmp_path: Path) -> Iterator[Callable[..., tuple[AgentConfig, RunningSender, QueueDB]]]:
    made: list[tuple[RunningSender, QueueDB]] = []

    def make(**overrides: Any) -> tuple[AgentConfig, RunningSender, QueueDB]:
        path = tmp_path / "agent.json"
        settings = {
            "data_dir": str(tmp_path / "data"), "smtp_port": held_exim.settings.smtp_port, "smtp_connections": 4,
            "exim_mainlog": str(held_exim.mainlog), "bounce_spool": str(held_exim.bounce_spool),
            "exim_spool": str(held_exim.spool_directory), "source_ips": ["127.0.0.2", "127.0.0.3"],
            "hostname": "agent.worker.test", "rate_limits": [],
            "exim_retries": {"command": [EXIM_BIN, "-C", str(held_exim.config_path)], "delays": [3]},
        }
        settings.update(overrides)
        path.write_text(json.dumps(settings))
        config = load_config(path)
        db = QueueDB(config.queue_db)
        sender = RunningSender(config, tmp_path / "sender.log")
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


@needs_root
def test_deferred_letters_are_retried_at_their_pair_s_pace(make_sender, capture: CaptureServer, held_exim: Exim):
    config, sender, db = make_sender()
    pushed = remote_config.parse({"version": 1, "rate_limits": [], "helo": {},
                                  "provider_limits": [{"source_ip": "*", "provider": "*", "per_minute": 120}]},
                                 config.source_ips)
    remote_config.apply(db, config, pushed)
    capture.set_rule("@busy.test", "defer")
    db.queue_batch("b1", campaign(), [make_recipient(i, email=f"user{i}@busy.test") for i in range(1, 13)])
    sender.start()
    wait_for(lambda: all(s[:2] == ["sent", "deferred"] for s in statuses(db).values()) and len(statuses(db)) == 12,
             f"12 letters deferred once, have {statuses(db)}", timeout=60)
    assert held_exim.queue_count() == 12
    capture.set_rule("@busy.test", "accept")
    wait_for(lambda: capture.count() == 12, "the 12 letters retried and delivered", timeout=60)
    accepted = sorted(a["time"] for a in capture.attempts() if a["result"] == "accepted")
    assert len(accepted) == 12
    # 120 a minute: 2 at once, then one each half second — not the whole backlog at once
    assert accepted[-1] - accepted[0] >= 4.0, accepted
    wait_for(lambda: all(s[-1] == "delivered" for s in statuses(db).values()), "Exim's log read", timeout=20)
    assert all(s.count("delivered") == 1 for s in statuses(db).values()), statuses(db)
    assert held_exim.queue_count() == 0


@pytest.mark.parametrize("value", [[], {"command": []}, {"command": "exim4"}, {"command": ["exim4"], "delays": [0]},
                                   {"command": ["exim4"], "parallel": 99}, {"command": ["exim4"], "when": 1}])
def test_a_bad_exim_retries_setting_says_what_to_write(tmp_path: Path, value: Any):
    from worker_agent.config import ConfigError

    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"data_dir": str(tmp_path), "exim_retries": value}))
    with pytest.raises(ConfigError, match='"exim_retries" must be'):
        load_config(path)


def test_exim_retries_default_delays(tmp_path: Path):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"data_dir": str(tmp_path), "exim_retries": {"command": ["/usr/sbin/exim4"]}}))
    settings = load_config(path).exim_retries
    assert settings is not None and settings.command == ("/usr/sbin/exim4",) and settings.delays[0] == 60
