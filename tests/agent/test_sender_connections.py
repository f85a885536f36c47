"""Concurrent connections per (source IP, mailbox provider) against a real Exim, a real BIND and the
capture playing a slow provider: at most N of a pair's letters are in Exim's hands at once, so no more
than N connections from that IP reach the provider's servers; a provider without the limit is not held."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from devserver.bind import BindServer
from devserver.mail_capture import CaptureServer, letters_per_connection, peak_connections
from tests.helpers import wait_for
from worker_agent import remote_config
from worker_agent.config import AgentConfig
from worker_agent.queue import QueueDB

from .conftest import make_recipient
from .test_sender_exim import RunningSender, campaign, make_agent  # noqa: F401 (a fixture)
from .test_sender_providers import bind  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a real Exim and named need root")


def test_connections_per_provider_are_bounded(make_agent: Callable[..., tuple[AgentConfig, RunningSender,  # noqa: F811
                                                                              QueueDB]],
                                              bind: BindServer, capture: CaptureServer) -> None:  # noqa: F811
    config, sender, db = make_agent(rate_limits=[], dns_server=f"{bind.host}:{bind.port}", smtp_connections=6)
    pushed = remote_config.parse({"version": 1, "rate_limits": [], "helo": {},
                                  "provider_limits": [{"source_ip": "*", "provider": "google", "connections": 2}]},
                                 config.source_ips)
    remote_config.apply(db, config, pushed)
    for domain in ("gmail.test", "workspace.test", "plain.test"):
        capture.set_rule(f"@{domain}", {"delay_seconds": 0.6})  # each letter keeps its connection 0.6 s
    google = [make_recipient(i, email=f"user{i}@{'gmail.test' if i % 2 else 'workspace.test'}") for i in range(1, 13)]
    plain = [make_recipient(i, email=f"user{i}@plain.test") for i in range(101, 113)]
    db.queue_batch("b1", campaign(), google + plain)
    sender.start()
    wait_for(lambda: capture.count() == 24, "24 letters", timeout=60)
    wait_for(lambda: len(capture.connections()) >= 24, "every connection closed", timeout=30)
    attempts, connections = capture.attempts(), capture.connections()
    # the capture counts per domain; the two Google domains' connections together
    google_attempts = [dict(a, group="google") if a["domain"] != "plain.test" else a for a in attempts]
    peaks = peak_connections(google_attempts, connections)
    assert peaks[("127.0.0.2", "google")] <= 2, peaks
    assert peaks[("127.0.0.2", "plain.test")] > 2, peaks  # without a limit they overlap: the bound is real
    assert max(letters_per_connection(attempts).values()) == 1
