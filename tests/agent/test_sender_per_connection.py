"""Letters per connection per (source IP, mailbox provider) against a real Exim, a real BIND and the
capture: a backlog Exim sends down one connection (a two-stage queue run, as after a provider's
deferrals) carries at most the pair's ``per_connection`` letters a connection; another provider's
backlog, without that limit, shares its connections freely."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from devserver.bind import BindServer
from devserver.exim import Exim
from devserver.mail_capture import CaptureServer, letters_per_connection
from tests.helpers import wait_for
from worker_agent import remote_config
from worker_agent.config import AgentConfig
from worker_agent.queue import QueueDB

from .conftest import make_recipient
from .test_sender_exim import RunningSender, campaign, make_agent  # noqa: F401 (a fixture)
from .test_sender_providers import bind  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a real Exim and named need root")


@pytest.fixture
def exim(exim_factory: Callable[..., Exim]) -> Exim:
    """Exim holding what it takes in its queue until the test's queue run (a backlog, as after deferrals):
    no queue runner of its own meanwhile, which would take letters from that run's connections."""
    return exim_factory(queue_only=True, queue_interval="1h")


def test_letters_per_connection_are_bounded(make_agent: Callable[..., tuple[AgentConfig, RunningSender,  # noqa: F811
                                                                            QueueDB]],
                                            bind: BindServer, capture: CaptureServer, exim: Exim) -> None:  # noqa: F811
    config, sender, db = make_agent(rate_limits=[], dns_server=f"{bind.host}:{bind.port}")
    pushed = remote_config.parse({"version": 1, "rate_limits": [], "helo": {},
                                  "provider_limits": [{"source_ip": "*", "provider": "google", "per_connection": 3}]},
                                 config.source_ips)
    remote_config.apply(db, config, pushed)
    google = [make_recipient(i, email=f"user{i}@{'gmail.test' if i % 2 else 'workspace.test'}") for i in range(1, 11)]
    plain = [make_recipient(i, email=f"user{i}@plain.test") for i in range(101, 111)]
    db.queue_batch("b1", campaign(), google + plain)
    sender.start()
    wait_for(lambda: exim.queue_count() == 20, "20 letters in Exim's queue", timeout=60)
    exim.force_queue_run(two_stage=True)
    wait_for(lambda: capture.count() == 20, "20 letters", timeout=60)
    attempts = [dict(a, group="google") if a["domain"] != "plain.test" else a for a in capture.attempts()]
    most = letters_per_connection(attempts)
    assert most[("127.0.0.2", "google")] <= 3, most
    assert most[("127.0.0.2", "plain.test")] > 3, most  # Exim does share connections: the bound is real


def test_the_agent_knows_the_per_connection_classes_of_the_exim_template() -> None:
    from pathlib import Path

    from devserver.exim import EximSettings, render_config
    from worker_agent.connection_limit import PER_CONNECTION_CLASSES

    text = render_config(EximSettings(rundir=Path("/nonexistent"), smtp_port=25, source_ips=[("192.0.2.1", "a.test")],
                                      smarthost=None, bounce_domains=[], bounce_spool=None))
    line = next(line for line in text.splitlines() if line.startswith("MAILFLEET_PER_CONNECTION_CLASSES = "))
    assert tuple(int(n) for n in line.partition("=")[2].split(":")) == PER_CONNECTION_CLASSES
    for n in PER_CONNECTION_CLASSES:
        assert f"smtp_192_0_2_1_c{n}:" in text and f"  connection_max_messages = {n}\n" in text
