"""Shaping accuracy at the recipients' server (issue 9 point 13 (a), reduced to seconds; the full
run is bench/shaping.py): a backlog for two (source IP, provider) pairs arrives at the capture at
the pair's limit, never faster than its token bucket allows in any window, and reaching it."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from devserver.mail_capture import CaptureServer
from tests.helpers import wait_for
from worker_agent import remote_config
from worker_agent.config import AgentConfig
from worker_agent.queue import QueueDB

from .conftest import make_recipient
from .test_sender_exim import RunningSender, campaign, make_agent  # noqa: F401 (a fixture)

PER_MINUTE = 240  # 4 a second: a backlog of 60 a pair takes 15 s
PER_PAIR = 60
JITTER = 2  # letters Exim's own delivery times may bunch into a window


def most_in(stamps: list[float], window: float) -> int:
    """The most stamps within any `window` seconds."""
    best, last = 0, 0
    for first, t in enumerate(stamps):
        while last < len(stamps) and stamps[last] < t + window:
            last += 1
        best = max(best, last - first)
    return best


@pytest.mark.skipif(os.geteuid() != 0, reason="a real Exim with its own config needs root")
def test_each_pair_arrives_at_its_limit_and_never_faster(make_agent: Callable[..., tuple[AgentConfig, RunningSender,  # noqa: F811
                                                                                           QueueDB]],
                                                         capture: CaptureServer) -> None:
    config, sender, db = make_agent(rate_limits=[])
    pushed = remote_config.parse({"version": 1, "rate_limits": [], "helo": {},
                                  "provider_limits": [{"source_ip": "*", "provider": "*", "per_minute": PER_MINUTE}]},
                                 config.source_ips)
    remote_config.apply(db, config, pushed)
    db.queue_batch("b1", campaign(), [make_recipient(n + offset, email=f"user{n + offset}@paced.test", source_ip=ip)
                                      for n in range(1, PER_PAIR + 1)
                                      for ip, offset in (("127.0.0.2", 0), ("127.0.0.3", 1000))])
    sender.start()
    wait_for(lambda: capture.count() == 2 * PER_PAIR, f"{2 * PER_PAIR} letters", timeout=60)
    rate = PER_MINUTE / 60.0
    capacity = max(1.0, rate)  # the bucket's burst: one second's worth
    for ip in ("127.0.0.2", "127.0.0.3"):
        stamps = sorted(a["time"] for a in capture.attempts() if a["ip"] == ip and a["result"] == "accepted")
        assert len(stamps) == PER_PAIR
        for window in (2.0, 5.0, 10.0):  # the bucket's bound: rate x window + its burst
            assert most_in(stamps, window) <= rate * window + capacity + JITTER, (ip, window, stamps)
        reached = (len(stamps) - 1) / (stamps[-1] - stamps[0])
        assert 0.9 * rate <= reached <= 1.1 * rate, (ip, reached)
