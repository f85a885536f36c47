"""Failed logins slowed down, in the database so every gunicorn worker shares the counts.

Three counts of failed attempts, each a row of `login_throttles`:

- the pair (account, client address): the hardest. 10 failures are free; after the n-th more
  the pair waits 2^n s (2, 4, 8 …) up to 15 minutes.
- the client address (over all accounts; IPv6 by its /64): 20 free, then 2^n s up to 15 minutes.
  One address guessing at many accounts is slowed; others are not.
- the account (over all addresses): 20 free, then 2^n s but at most ACCOUNT.cap (30 s), and
  only for an address that has already failed on this account, counted from that pair's own
  last failure. So an attacker spread over many addresses gets one guess an address before the
  account slows them down, and can never lock the owner out: the owner from an address without
  failures on the account logs in at once, and after a typo waits at most 30 s, a wait that
  other addresses' attempts do not extend.

An attempt is checked, and counted as a failure, BEFORE its password is hashed (`reserve`); a
throttled attempt is answered at once without a hash (each hash costs 32 MiB and ~0.1 s of
scrypt), so the form is no lever for a denial of service. A successful login hands its
reservation back and clears its pair. Throttled attempts themselves are not counted. A count
starts again after FORGET_AFTER without failures; older rows are pruned after each attempt.

The address row is changed with a compare-and-set UPDATE (WHERE the values are those read, as
in rate_limit.py), so concurrent attempts from one address cannot all pass one check. The
client address is the connection's (REMOTE_ADDR: gunicorn serves the panel directly; behind a
reverse proxy, let werkzeug's ProxyFix set it from the proxy's header).
"""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass

from sqlalchemy import case, delete, select, update

from ..extensions import db
from ..models import LoginThrottle
from ..models.base import insert_unless_present

FORGET_AFTER = 3600.0  # seconds without a failure after which a count starts again (and rows go)
ATTEMPTS = 20  # compare-and-set rounds before giving up under contention


@dataclass(frozen=True)
class Rule:
    free: int  # failures before any wait
    cap: float  # the longest wait, seconds

    def wait(self, failures: int) -> float:
        """Seconds to wait after `failures` counted failures: 0, then 2, 4, 8 … up to the cap."""
        if failures < self.free:
            return 0.0
        return float(min(self.cap, 2 ** min(failures - self.free + 1, 30)))


PAIR = Rule(free=10, cap=900.0)
ADDRESS = Rule(free=20, cap=900.0)
ACCOUNT = Rule(free=20, cap=30.0)


@dataclass(frozen=True)
class Keys:
    pair: str
    address: str
    account: str


def keys_for(email: str, address: str | None) -> Keys:
    account = (email or "").strip().lower()[:320]
    client = _client(address)
    return Keys(pair=f"pair:{client} {account}", address=f"addr:{client}", account=f"user:{account}")


def _client(address: str | None) -> str:
    """The address as counted: an IPv6 address by its /64 (one host holds a whole /64)."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return (address or "unknown")[:45]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _counted(row: tuple[int, float] | None, now: float) -> tuple[int, float]:
    """(failures, at) still counting at `now`: a row quiet for FORGET_AFTER counts nothing."""
    if row is None or now - row[1] > FORGET_AFTER:
        return 0, now
    return row


def _remaining(rule: Rule, failures: int, since: float, now: float) -> float:
    wait = rule.wait(failures)
    return max(0.0, since + wait - now) if wait else 0.0  # no wait, even if another host's clock runs ahead


def reserve(email: str, address: str | None) -> float:
    """Before checking a password: 0.0 and the attempt counted as a failure (undone by
    `succeeded`), or the seconds this client must still wait, nothing counted."""
    keys = keys_for(email, address)
    now = time.time()
    for key in (keys.pair, keys.address, keys.account):
        db.session.execute(insert_unless_present(db.session, LoginThrottle).values(key=key, failures=0, at=now))
    for _ in range(ATTEMPTS):
        now = time.time()
        rows = {key: (failures, at) for key, failures, at in db.session.execute(
            select(LoginThrottle.key, LoginThrottle.failures, LoginThrottle.at)
            .where(LoginThrottle.key.in_([keys.pair, keys.address, keys.account])))}
        pair = _counted(rows.get(keys.pair), now)
        address_row = rows.get(keys.address)
        address = _counted(address_row, now)
        account = _counted(rows.get(keys.account), now)
        wait = max(
            _remaining(PAIR, pair[0], pair[1], now),
            _remaining(ADDRESS, address[0], address[1], now),
            # the account's wait only for an address that failed on it, from that pair's last failure
            _remaining(ACCOUNT, account[0], pair[1], now) if pair[0] else 0.0,
        )
        if wait > 0:
            return wait
        if address_row is None:  # pruned by a concurrent reservation: make it again
            db.session.execute(insert_unless_present(db.session, LoginThrottle).values(key=keys.address, failures=0, at=now))
            continue
        changed = db.session.execute(
            update(LoginThrottle)
            .where(LoginThrottle.key == keys.address, LoginThrottle.failures == address_row[0],
                   LoginThrottle.at == address_row[1])
            .values(failures=address[0] + 1, at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed == 1:
            _count(keys.pair, now)
            _count(keys.account, now)
            db.session.flush()
            return 0.0
    return 1.0  # much contention on one address: ask it to come back shortly


def prune() -> None:
    """Forget rows quiet for FORGET_AFTER. Run in a transaction of its own after the attempt's: two
    concurrent prunes may deadlock on PostgreSQL, and then one is simply rolled back."""
    db.session.execute(delete(LoginThrottle).where(LoginThrottle.at < time.time() - FORGET_AFTER))
    db.session.flush()


def _count(key: str, now: float) -> None:
    """One failure more on `key` (a fresh count when it was quiet for FORGET_AFTER)."""
    db.session.execute(
        update(LoginThrottle).where(LoginThrottle.key == key)
        .values(failures=case((LoginThrottle.at < now - FORGET_AFTER, 1), else_=LoginThrottle.failures + 1), at=now)
        .execution_options(synchronize_session=False))


def succeeded(email: str, address: str | None) -> None:
    """The password was right: the reservation was no failure; the pair starts afresh."""
    keys = keys_for(email, address)
    db.session.execute(delete(LoginThrottle).where(LoginThrottle.key == keys.pair))
    db.session.execute(
        update(LoginThrottle).where(LoginThrottle.key.in_([keys.address, keys.account]), LoginThrottle.failures > 0)
        .values(failures=LoginThrottle.failures - 1)
        .execution_options(synchronize_session=False))
    db.session.flush()


def retry_after(wait: float) -> int:
    """Whole seconds for a Retry-After header and the message."""
    return max(1, math.ceil(wait))
