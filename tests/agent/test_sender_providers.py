"""The sender paces letters per (source IP, mailbox provider) against a real Exim and a real BIND:
two domains whose MX hosts are Google's share Google's limit; another domain is not held up."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator

import dns.query
import dns.update
import pytest

from devserver.bind import BindServer
from devserver.mail_capture import CaptureServer
from tests.helpers import wait_for
from worker_agent import remote_config
from worker_agent.config import AgentConfig
from worker_agent.queue import QueueDB

from .conftest import make_recipient
from .test_sender_exim import RunningSender, campaign, make_agent  # noqa: F401 (a fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a real Exim and named need root")

MX = {"gmail.test": "gmail-smtp-in.l.google.com.", "workspace.test": "alt1.aspmx.l.google.com.",
      "plain.test": "mx1.plainhosting.net."}


@pytest.fixture(scope="module")
def bind() -> Iterator[BindServer]:
    with BindServer(list(MX)) as server:
        for zone, host in MX.items():
            update = dns.update.UpdateMessage(zone, keyring=server.keyring)
            update.add("@", 300, "MX", f"10 {host}")
            assert dns.query.tcp(update, server.host, port=server.port, timeout=5).rcode() == 0
        yield server


def test_two_domains_of_one_provider_share_its_limit(make_agent: Callable[..., tuple[AgentConfig, RunningSender,  # noqa: F811
                                                                                        QueueDB]],
                                                      bind: BindServer, capture: CaptureServer) -> None:
    config, sender, db = make_agent(rate_limits=[], dns_server=f"{bind.host}:{bind.port}")
    pushed = remote_config.parse({"version": 1, "rate_limits": [], "helo": {},
                                  "provider_limits": [{"source_ip": "*", "provider": "google", "per_minute": 120}]},
                                 config.source_ips)
    remote_config.apply(db, config, pushed)
    google = [make_recipient(i, email=f"user{i}@{'gmail.test' if i % 2 else 'workspace.test'}") for i in range(1, 31)]
    plain = [make_recipient(i, email=f"user{i}@plain.test") for i in range(101, 131)]
    db.queue_batch("b1", campaign(), google + plain)
    sender.start()
    wait_for(lambda: capture.count() == 60, "60 letters", timeout=60)
    conn = sqlite3.connect(config.queue_db)
    sent_at = dict(conn.execute("SELECT delivery_id, at FROM events WHERE status = 'sent'").fetchall())
    conn.close()
    start = min(sent_at.values())
    google_span = max(sent_at[i] for i in range(1, 31)) - start
    plain_span = max(sent_at[i] for i in range(101, 131)) - start
    # 120 a minute for both domains together: 2 at once, then 2 a second, so about 14 s
    assert 11 < google_span < 25, google_span
    assert plain_span < 7, plain_span  # all at once (a busy machine's Exim takes a few seconds for 60)
