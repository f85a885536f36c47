"""Connection slots per (source IP, provider) and the letters-per-connection classes, without Exim."""

from __future__ import annotations

from worker_agent.connection_limit import DeliverySlots, per_connection_class, tag_per_connection
from worker_agent.providers import ProviderLimit
from worker_agent.rate_limit import RateLimiter
from worker_agent.render import Letter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Google:
    def prefetch(self, domains): ...
    def provider_now(self, domain): return "google" if domain.endswith("gmail.test") else domain
    def provider_of_cached(self, domain): return self.provider_now(domain)


def limiter(slots: DeliverySlots, **limit) -> RateLimiter:
    return RateLimiter(lambda ip, domain: None, resolver=Google(),  # type: ignore[arg-type]
                       provider_limits=[ProviderLimit("*", "google", **limit)], slots=slots)


def test_a_full_pair_waits_without_spending_a_token_and_goes_once_a_slot_is_free() -> None:
    slots = DeliverySlots()
    shaper = limiter(slots, connections=2, per_minute=600)
    assert [shaper.wait("192.0.2.1", "gmail.test", now=0.0, key=i) for i in (1, 2, 3)] == [0.0, 0.0, 0.25]
    assert shaper.wait("192.0.2.2", "gmail.test", now=0.0, key=4) == 0.0  # another IP: its own slots
    assert shaper.wait("192.0.2.1", "plain.test", now=0.0, key=5) == 0.0  # another provider: none
    slots.free(1)
    assert shaper.wait("192.0.2.1", "gmail.test", now=0.1, key=3) == 0.0
    assert slots.held(("192.0.2.1", "google")) == 2


def test_a_slot_is_freed_by_any_of_its_keys_or_after_its_ttl() -> None:
    clock = Clock()
    slots = DeliverySlots(ttl=300, clock=clock)
    slots.take(("ip", "google"), 7)
    slots.take(("ip", "google"), "1xZV6e-0002Xs-0M")  # a retry the driver forced, by Exim id
    slots.free(99, "1xZV6e-0002Xs-0M")  # unknown keys are ignored
    assert slots.held(("ip", "google")) == 1
    clock.now = 301  # its outcome never came
    assert not slots.full(("ip", "google"), 1)


def test_letters_per_connection_round_down_to_a_class_of_the_exim_transports() -> None:
    assert [per_connection_class(n) for n in (1, 4, 20, 49, 499, 500, 10_000)] == [1, 2, 20, 20, 100, None, None]
    letter = Letter("bounce+1-t@b.test", "ann@gmail.test", b"From: a@b.test\r\n\r\nhi\r\n")
    assert tag_per_connection(letter, 25).data == b"X-Mailfleet-Per-Connection: 20\r\nFrom: a@b.test\r\n\r\nhi\r\n"
    assert tag_per_connection(letter, None) is letter and tag_per_connection(letter, 800) is letter
    assert limiter(DeliverySlots(), per_connection=25).per_connection("192.0.2.1", "gmail.test") == 25
