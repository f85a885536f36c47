"""Automatic backoff per (source IP, provider group) (issue 9, point 5), on a virtual clock."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from tests.helpers import wait_for
from worker_agent import remote_config
from worker_agent.backoff import Backoff, is_throttling
from worker_agent.providers import ProviderLimit
from worker_agent.rate_limit import RateLimiter

from .conftest import make_recipient
from .test_sender_exim import campaign, make_agent  # noqa: F401 (a fixture)
from .test_sender_providers import bind  # noqa: F401 (a fixture)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


GMAIL_421 = "421-4.7.28 [192.0.2.10] Our system has detected an unusual rate of unsolicited mail. rate limited"


@pytest.mark.parametrize(("code", "text"), [
    (421, GMAIL_421),
    (421, "421 4.7.0 [TSS04] Messages from 192.0.2.10 temporarily deferred due to unexpected volume"),
    (451, "451 4.7.650 The mail server [192.0.2.10] has been temporarily rate limited"),
    (450, "450 too many connections from your IP"),
    (451, "451 rate limit exceeded, try again later"),
    (452, "452 4.7.1 try again later"),
    (None, "SMTP error from remote mail server after RCPT TO:<a@b>: 421 4.7.28 throttled"),
])
def test_throttling_answers_are_recognised(code, text):
    assert is_throttling(code, text)


@pytest.mark.parametrize(("code", "text"), [
    (450, "450 4.2.2 mailbox full"),
    (451, "451 4.3.0 temporary local problem"),
    (550, "550 5.1.1 no such user"),
    (421, "421 4.4.2 connection timed out"),
    (None, None),
])
def test_other_answers_are_not_throttling(code, text):
    assert not is_throttling(code, text)


def test_throttle_halves_and_suspends_then_cools_and_steps_up_to_the_limit():
    clock = Clock()
    b = Backoff(cooling=60.0, step=0.1, step_every=60.0, clock=clock)
    assert b.shape("192.0.2.10", "google") == (1.0, 0.0)
    b.observe("192.0.2.10", "google", "deferred", 421, GMAIL_421)
    factor, wait = b.shape("192.0.2.10", "google")
    assert factor == 0.5 and wait == pytest.approx(60.0)
    state = b.states()[0]
    assert state["state"] == "suspended" and state["why"] == GMAIL_421 and state["since"] == clock.now
    # more deferrals of the same burst while suspended do not halve it again
    b.observe("192.0.2.10", "google", "deferred", 421, GMAIL_421)
    assert b.shape("192.0.2.10", "google")[0] == 0.5
    clock.now += 60.0
    assert b.shape("192.0.2.10", "google") == (0.5, 0.0)
    assert b.states()[0]["state"] == "backing_off"
    # deliveries within a step do not raise it yet; a minute of them raises it by 10 % of the limit
    b.observe("192.0.2.10", "google", "delivered", 250, "250 ok")
    assert b.shape("192.0.2.10", "google")[0] == 0.5
    for _ in range(5):
        clock.now += 60.0
        b.observe("192.0.2.10", "google", "delivered", 250, "250 ok")
    assert b.shape("192.0.2.10", "google")[0] == pytest.approx(1.0)
    assert b.states()[0]["state"] == "normal"
    clock.now += 600.0
    b.observe("192.0.2.10", "google", "delivered", 250, "250 ok")
    assert b.shape("192.0.2.10", "google")[0] == 1.0  # never above its limit


def test_no_step_up_without_deliveries():
    clock = Clock()
    b = Backoff(cooling=60.0, step=0.1, step_every=60.0, clock=clock)
    b.observe("192.0.2.10", "google", "deferred", 421, GMAIL_421)
    clock.now += 600.0
    assert b.shape("192.0.2.10", "google")[0] == 0.5


def test_a_throttle_while_backing_off_halves_again_with_a_floor():
    clock = Clock()
    b = Backoff(cooling=60.0, clock=clock, floor=0.1)
    for _ in range(10):
        b.observe("192.0.2.10", "google", "deferred", 421, GMAIL_421)
        clock.now += 61.0
    assert b.shape("192.0.2.10", "google")[0] == pytest.approx(0.1)


def test_a_throttle_while_backing_off_caps_the_step_ups_under_that_rate_for_a_while():
    """A provider that throttles again while the pair is climbing back has shown where its own limit
    lies: the pair climbs back only to 90 % of the rate it was throttled at, and holds there (rather
    than probing the provider again every few minutes, at half its rate in between) until
    ``ceiling_hold`` passes without a throttle; then it climbs on to its limit."""
    clock = Clock()
    b = Backoff(cooling=60.0, step=0.1, step_every=60.0, ceiling_hold=1800.0, clock=clock)
    b.observe("192.0.2.10", "google", "deferred", 421, GMAIL_421)  # from its limit: no ceiling learnt
    clock.now += 60.0
    for _ in range(2):
        clock.now += 60.0
        b.observe("192.0.2.10", "google", "delivered", 250, "250 ok")
    assert b.shape("192.0.2.10", "google")[0] == pytest.approx(0.7)
    b.observe("192.0.2.10", "google", "deferred", 421, GMAIL_421)  # throttled again at 0.7
    assert b.shape("192.0.2.10", "google")[0] == pytest.approx(0.35)
    clock.now += 60.0
    for _ in range(10):
        clock.now += 60.0
        b.observe("192.0.2.10", "google", "delivered", 250, "250 ok")
    assert b.shape("192.0.2.10", "google")[0] == pytest.approx(0.63)  # 90 % of 0.7, held
    assert b.states()[0]["state"] == "backing_off"
    clock.now += 1800.0  # no throttle for ceiling_hold: it climbs on
    for _ in range(4):
        clock.now += 60.0
        b.observe("192.0.2.10", "google", "delivered", 250, "250 ok")
    assert b.shape("192.0.2.10", "google")[0] == 1.0
    assert b.states()[0]["state"] == "normal"


def test_other_pairs_are_not_affected():
    clock = Clock()
    b = Backoff(cooling=60.0, clock=clock)
    b.observe("192.0.2.10", "google", "deferred", 421, GMAIL_421)
    b.observe("192.0.2.10", "microsoft", "deferred", 451, "451 4.2.0 mailbox busy")  # not throttling
    assert b.shape("192.0.2.11", "google") == (1.0, 0.0)
    assert b.shape("192.0.2.10", "microsoft") == (1.0, 0.0)
    assert [s["provider"] for s in b.states()] == ["google"]


def test_changes_are_counted_once_each():
    clock = Clock()
    b = Backoff(cooling=60.0, step=0.5, step_every=60.0, clock=clock)
    b.observe("192.0.2.10", "google", "deferred", 421, GMAIL_421)
    b.observe("192.0.2.10", "google", "deferred", 421, GMAIL_421)
    clock.now += 60.0
    b.tick()
    clock.now += 60.0
    b.observe("192.0.2.10", "google", "delivered", 250, "250 ok")
    assert [c["state"] for c in b.drain_changes()] == ["suspended", "backing_off", "normal"]
    assert b.drain_changes() == []


def test_limiter_applies_the_factor_and_the_suspension_to_that_pair_only():
    clock = Clock()
    b = Backoff(cooling=60.0, step=0.1, step_every=60.0, clock=clock)
    limiter = RateLimiter(lambda ip, domain: None, backoff=b,
                          provider_limits=[ProviderLimit("*", "*", per_minute=600)])

    def sent_in(seconds: float, ip: str, domain: str, start: float) -> int:
        """Letters the limiter lets go over ``seconds`` when asked every 10 ms."""
        n, t = 0, start
        while t < start + seconds:
            limiter.new_round()
            if limiter.wait(ip, domain, now=t) == 0.0:
                n += 1
            t += 0.01
        return n

    assert 590 <= sent_in(60, "192.0.2.10", "gmail.com", 0.0) <= 612
    b.observe("192.0.2.10", "gmail.com", "deferred", 421, GMAIL_421)
    assert sent_in(59, "192.0.2.10", "gmail.com", 100.0) == 0  # suspended
    assert 590 <= sent_in(60, "192.0.2.11", "gmail.com", 100.0) <= 612  # another IP: its pace
    assert 590 <= sent_in(60, "192.0.2.10", "outlook.com", 200.0) <= 612  # another provider: its pace
    clock.now += 60.0
    assert 290 <= sent_in(60, "192.0.2.10", "gmail.com", 300.0) <= 306  # half the rate
    assert limiter.wait("192.0.2.10", "gmail.com", now=400.0) >= 0.0


# -- with a real Exim, BIND and the capture playing Gmail ----------------------------------------

@pytest.mark.skipif(os.geteuid() != 0, reason="a real Exim and named need root")
def test_a_throttling_provider_suspends_its_pair_and_the_other_keeps_its_pace(make_agent, bind, capture):
    """The capture answers 421 4.7.28 once 127.0.0.2 sent 4 letters a minute to gmail.test; the
    sender reads it from Exim's log, suspends (127.0.0.2, google) and sends it nothing more while
    it cools, while plain.test's letters go at their own limit."""
    config, sender, db = make_agent(rate_limits=[], dns_server=f"{bind.host}:{bind.port}", backoff_cooling=30)
    pushed = remote_config.parse({"version": 1, "rate_limits": [], "helo": {},
                                  "provider_limits": [{"source_ip": "*", "provider": "*", "per_minute": 120}]},
                                 config.source_ips)
    remote_config.apply(db, config, pushed)
    capture.set_rule("@gmail.test", {"throttle_per_minute": 4})
    gmail = [make_recipient(i, email=f"user{i}@gmail.test") for i in range(1, 41)]
    plain = [make_recipient(i, email=f"user{i}@plain.test") for i in range(101, 141)]
    db.queue_batch("b1", campaign(), [r for pair in zip(gmail, plain) for r in pair])
    sender.start()

    def shaping() -> list[dict]:
        return db.get_state("shaping") or []

    wait_for(lambda: any(s["state"] == "suspended" for s in shaping()), "the google pair suspended", timeout=30)
    (pair,) = shaping()
    assert (pair["source_ip"], pair["provider"], pair["factor"]) == ("127.0.0.2", "google", 0.5), pair
    assert "4.7.28" in pair["why"], pair
    assert pair["per_minute"] == 60.0
    suspended_at = time.time()

    def gmail_sent() -> int:
        conn = sqlite3.connect(config.queue_db)
        try:
            return conn.execute("SELECT count(*) FROM events e JOIN letters l ON l.id = e.delivery_id "
                                "WHERE e.status = 'sent' AND l.email LIKE '%@gmail.test'").fetchone()[0]
        finally:
            conn.close()

    time.sleep(2)  # letters already handed to the SMTP threads when it was suspended
    before = gmail_sent()
    wait_for(lambda: capture.count() >= 4 + 40, "every plain.test letter", timeout=40)
    plain_done = time.time() - suspended_at
    assert gmail_sent() == before, "letters of a suspended pair were submitted"
    assert plain_done < 25, plain_done  # 120 a minute: 40 letters in about 20 s from the start
    attempts = [a for a in capture.attempts() if a["domain"] == "gmail.test"]
    assert sum(a["result"] == "accepted" for a in attempts) == 4
    # The provider's own window (60 s) outlasts the cooling (30 s): lift its limit, or the first
    # letter after the cooling could be throttled again and suspend the pair once more.
    capture.set_rule("@gmail.test", "accept")
    # cooled: sending to Gmail again, at half its limit
    wait_for(lambda: gmail_sent() > before, "the google pair sending again", timeout=40)
    assert time.time() - suspended_at >= 29
    # the states are written out for the ping between the sender's rounds: at most one round behind
    wait_for(lambda: shaping()[0]["state"] != "suspended", "the cooled state written out", timeout=5)
    (pair,) = shaping()
    assert pair["state"] == "backing_off" and pair["per_minute"] == 60.0, pair
