"""Token buckets per (source IP, recipient domain)."""

from __future__ import annotations

from worker_agent.rate_limit import RateLimiter, TokenBucket


def test_a_bucket_lets_one_seconds_worth_through_then_paces() -> None:
    bucket = TokenBucket(per_minute=600, now=0.0)  # 10 a second
    assert [bucket.take(0.0) for _ in range(10)] == [0.0] * 10
    assert bucket.take(0.0) > 0
    bucket.backlog = 0
    assert bucket.take(0.1) == 0.0  # one token back after 0.1 s
    assert bucket.take(0.1) > 0


def test_letters_turned_away_in_one_round_get_staggered_times() -> None:
    bucket = TokenBucket(per_minute=60, now=0.0)  # 1 a second
    assert bucket.take(0.0) == 0.0
    waits = [bucket.take(0.0) for _ in range(5)]
    assert waits == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_slow_rate_still_sends_one_at_once() -> None:
    bucket = TokenBucket(per_minute=2, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert 29.9 < bucket.take(0.0) < 30.1


def test_the_limiter_keeps_pairs_apart_and_unlimited_pairs_free() -> None:
    rates = {("127.0.0.2", "gmail.com"): 60.0}
    limiter = RateLimiter(lambda ip, domain: rates.get((ip, domain)))
    assert limiter.wait("127.0.0.2", "gmail.com", now=0.0) == 0.0
    assert limiter.wait("127.0.0.2", "gmail.com", now=0.0) > 0
    assert limiter.wait("127.0.0.3", "gmail.com", now=0.0) == 0.0  # another source IP: its own (no) limit
    assert all(limiter.wait("127.0.0.2", "yahoo.com", now=0.0) == 0.0 for _ in range(1000))
    limiter.new_round()
    assert limiter.wait("127.0.0.2", "gmail.com", now=1.0) == 0.0
