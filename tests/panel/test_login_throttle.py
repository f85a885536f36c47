"""Failed logins are throttled per (account, address), per address and per account, in the
database (every gunicorn worker sees them), and a throttled attempt is answered at once without
computing a password hash: the login form is no lever for a denial of service, and an attacker
cannot lock the owner out of their account."""

from __future__ import annotations

import statistics
import time
import types

import pytest
from sqlalchemy import func, select

from panel.models import LoginThrottle
from panel.services import login_throttle, users as user_service

ATTACKER = "198.51.100.7"
OWNER_ADDRESS = "203.0.113.20"


@pytest.fixture
def hashes(monkeypatch):
    """Counts every password hash the panel checks."""
    calls = []
    real = user_service.check_password_hash

    def counting(stored, password):
        calls.append(stored)
        return real(stored, password)

    monkeypatch.setattr(user_service, "check_password_hash", counting)
    return calls


@pytest.fixture
def clock(monkeypatch):
    """The throttle's clock (its module's only: sessions and CSRF tokens keep the real one)."""
    now = [time.time()]
    monkeypatch.setattr(login_throttle, "time", types.SimpleNamespace(time=lambda: now[0]))
    return now


def attempt(browser, email, password, address=ATTACKER):
    return browser.post("/login", {"email": email, "password": password}, environ_base={"REMOTE_ADDR": address})


def test_the_eleventh_wrong_password_for_one_account_from_one_address_waits(browser, alice, hashes):
    for n in range(login_throttle.PAIR.free):
        response = attempt(browser, "alice@example.com", f"wrong {n}")
        assert response.status_code == 200 and "do not match an account" in response.get_data(as_text=True)
    assert len(hashes) == login_throttle.PAIR.free
    response = attempt(browser, "alice@example.com", "correct horse battery")  # even the right one
    assert response.status_code == 429
    text = response.get_data(as_text=True)
    assert "Too many failed logins" in text and "try again in 2 s" in text
    assert response.headers["Retry-After"] == "2"
    assert len(hashes) == login_throttle.PAIR.free  # no hash for a throttled attempt
    assert browser.get("/campaigns/").status_code == 302  # not logged in


def test_the_21st_wrong_login_within_a_minute_from_one_address_is_slowed_without_a_hash(browser, seed, hashes):
    """20 accounts (known or not) tried once each from one address, then the 21st attempt waits;
    it is answered in less time than one password hash takes."""
    for n in range(20):
        response = attempt(browser, f"user{n}@example.com", "guess")
        assert response.status_code == 200, n
    assert len(hashes) == 20
    started = time.perf_counter()
    one_hash = user_service.check_password_hash(user_service._DUMMY_HASH, "x")  # scrypt at production cost
    hash_time = time.perf_counter() - started
    del hashes[:]
    durations = []
    for n in range(5):
        started = time.perf_counter()
        response = attempt(browser, f"other{n}@example.com", "guess")
        durations.append(time.perf_counter() - started)
        assert response.status_code == 429
        assert "try again in" in response.get_data(as_text=True)
        assert int(response.headers["Retry-After"]) >= 1
    assert hashes == [] and one_hash is False
    assert statistics.median(durations) < hash_time, (durations, hash_time)
    # another address is not slowed by it
    assert attempt(browser, "user0@example.com", "guess", address="192.0.2.99").status_code == 200


def test_waits_grow_and_are_capped(app):
    assert [login_throttle.PAIR.wait(n) for n in (9, 10, 11, 12)] == [0, 2, 4, 8]
    assert login_throttle.PAIR.wait(100) == login_throttle.PAIR.cap
    assert login_throttle.ACCOUNT.wait(10_000) == login_throttle.ACCOUNT.cap <= 60


def test_a_wait_ends(browser, alice, seed, clock):
    for n in range(login_throttle.PAIR.free):
        assert attempt(browser, "alice@example.com", f"wrong {n}").status_code == 200
    assert attempt(browser, "alice@example.com", "correct horse battery").status_code == 429
    clock[0] += 2.1
    response = attempt(browser, "alice@example.com", "correct horse battery")
    assert response.status_code == 302
    # a success resets the pair's count
    rows = seed.query(lambda s: {r.key: r.failures for r in s.scalars(select(LoginThrottle))})
    assert not any(key.startswith("pair:") for key in rows), rows


def test_the_owner_logs_in_from_another_address_while_an_attacker_hammers_the_account(browser, app, alice, hashes):
    for n in range(60):
        attempt(browser, "alice@example.com", f"guess {n}")
    assert attempt(browser, "alice@example.com", "guess").status_code == 429
    # ... and from many addresses, each trying a few times
    for host in range(1, 40):
        for n in range(3):
            attempt(browser, "alice@example.com", f"guess {n}", address=f"192.0.2.{host}")
    hashed = len(hashes)
    assert hashed < 60 + 40 * 2  # the account's own throttle slowed the addresses' later guesses
    owner = type(browser)(app.test_client())
    response = attempt(owner, "alice@example.com", "correct horse battery", address=OWNER_ADDRESS)
    assert response.status_code == 302
    assert owner.get("/campaigns/", environ_base={"REMOTE_ADDR": OWNER_ADDRESS}).status_code == 200


def test_the_owner_who_mistyped_waits_at_most_the_accounts_short_cap(browser, app, alice, clock):
    for host in range(1, 30):
        attempt(browser, "alice@example.com", "guess", address=f"192.0.2.{host}")
    owner = type(browser)(app.test_client())
    assert attempt(owner, "alice@example.com", "typo", address=OWNER_ADDRESS).status_code == 200
    response = attempt(owner, "alice@example.com", "correct horse battery", address=OWNER_ADDRESS)
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) <= login_throttle.ACCOUNT.cap
    for host in range(1, 30):  # the attacker keeps going: it does not extend the owner's wait
        attempt(browser, "alice@example.com", "guess", address=f"192.0.2.{host}")
    clock[0] += login_throttle.ACCOUNT.cap + 0.1
    assert attempt(owner, "alice@example.com", "correct horse battery", address=OWNER_ADDRESS).status_code == 302


def test_old_entries_are_pruned(browser, seed, clock):
    for n in range(5):
        attempt(browser, f"user{n}@example.com", "guess")
    assert seed.query(lambda s: s.scalar(select(func.count()).select_from(LoginThrottle))) > 5
    clock[0] += login_throttle.FORGET_AFTER + 1
    attempt(browser, "late@example.com", "guess", address="192.0.2.200")
    keys = seed.query(lambda s: sorted(s.scalars(select(LoginThrottle.key))))
    assert all("192.0.2.200" in key or "late@example.com" in key for key in keys), keys


def test_the_password_change_form_is_throttled_too(browser, alice, hashes):
    browser.login("alice@example.com")
    for n in range(login_throttle.PAIR.free):
        response = browser.post("/account/password", {"current_password": f"wrong {n}", "new_password": "new password 1",
                                                      "confirm": "new password 1"})
        assert response.status_code == 200
        assert "current password is not right" in response.get_data(as_text=True)
    hashed = len(hashes)
    response = browser.post("/account/password", {"current_password": "correct horse battery",
                                                  "new_password": "new password 1", "confirm": "new password 1"})
    assert response.status_code == 429 and len(hashes) == hashed


def _hammer_logins(database_url: str, count: int, now: float, results) -> None:
    """In a process of its own, like a gunicorn worker: its own app, engine and connections. The
    clock stands still, so no wait ends while the machine is slow."""
    from tests.panel.conftest import Browser, make_app

    login_throttle.time = types.SimpleNamespace(time=lambda: now)
    browser = Browser(make_app(database_url).test_client())
    codes = [attempt(browser, "alice@example.com", f"guess {n}").status_code for n in range(count)]
    results.put(codes)


def test_workers_share_the_counts(database_url, alice):
    """Four processes guessing at once: exactly the pair's free attempts are checked, no more."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    now = time.time()
    workers = [context.Process(target=_hammer_logins, args=(database_url, 8, now, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    codes = [code for _ in workers for code in results.get(timeout=120)]
    for worker in workers:
        worker.join(30)
    assert sorted(codes) == [200] * login_throttle.PAIR.free + [429] * (32 - login_throttle.PAIR.free), codes


def test_a_count_from_a_clock_slightly_ahead_does_not_slow_free_attempts(browser, alice, clock):
    """Another panel host whose clock runs a little ahead wrote the last failure: the attempts
    that are still free are not told to wait."""
    assert attempt(browser, "alice@example.com", "wrong").status_code == 200
    clock[0] -= 0.5
    assert attempt(browser, "alice@example.com", "wrong again").status_code == 200
