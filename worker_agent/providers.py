"""Mailbox providers: recipient domains grouped by the provider of their MX hosts, and the default
limits per (source IP, provider).

A domain's group is the provider whose MX host suffix matches its most preferred MX host; any
other domain (no MX, an MX nobody in the table runs, a lookup that failed) is its own group,
keyed by the domain itself. Provider names hold no dot, so they never collide with a domain.
MX answers are cached for their TTL (bounded, oldest dropped first); a failed lookup is kept
briefly and never holds a letter back: the domain is then its own group.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.resolver

# Suffixes of the providers' MX host names (a suffix matches whole labels: "google.com" matches
# "alt1.aspmx.l.google.com", not "notgoogle.com"). Checked against real MX records:
BUILTIN_PROVIDERS: dict[str, tuple[str, ...]] = {
    # gmail-smtp-in.l.google.com (Gmail), aspmx.l.google.com (Workspace), smtp.google.com;
    # Gmail and Workspace share their inbound servers, so they share limits.
    "google": ("google.com", "googlemail.com"),
    # Outlook.com/Hotmail/Live: hotmail-com.olc.protection.outlook.com (older mx1.hotmail.com).
    "microsoft": ("olc.protection.outlook.com", "hotmail.com"),
    # Microsoft 365 tenants: <tenant>.mail.protection.outlook.com, and <tenant>.mx.microsoft
    # with DANE: another edge server group than the consumer one.
    "office365": ("mail.protection.outlook.com", "mx.microsoft"),
    # Yahoo and AOL: mta5.am0.yahoodns.net, mx-aol.mail.gm0.yahoodns.net.
    "yahoo": ("yahoodns.net",),
    # iCloud, me.com, mac.com: mx01.mail.icloud.com.
    "apple": ("icloud.com",),
    # mail.ru, bk.ru, list.ru, inbox.ru: mxs.mail.ru.
    "mailru": ("mail.ru",),
    # yandex.ru/com and Yandex 360 domains: mx.yandex.ru, mx.yandex.net.
    "yandex": ("yandex.ru", "yandex.net"),
    # GMX, Web.de, mail.com (one company's inbound servers): mx00.gmx.net, mx-ha03.web.de, mx00.mail.com.
    "gmx": ("gmx.net", "web.de", "gmx.com", "mail.com"),
    # 1&1 IONOS hosting mailboxes: mx00.ionos.de, mx00.kundenserver.de.
    "ionos": ("ionos.de", "ionos.com", "kundenserver.de"),
    # Comcast/Xfinity: mx1a1.comcast.net.
    "comcast": ("comcast.net",),
    # Zoho Mail: mx.zoho.com, mx.zoho.eu.
    "zoho": ("zoho.com", "zoho.eu", "zoho.in"),
    # Proton Mail: mail.protonmail.ch, mailsec.protonmail.ch.
    "proton": ("protonmail.ch",),
    # Fastmail: in1-smtp.messagingengine.com.
    "fastmail": ("messagingengine.com",),
    # Deutsche Telekom: mx00.t-online.de.
    "t-online": ("t-online.de",),
}


@dataclass(frozen=True)
class ProviderLimit:
    """Limits per (source IP, provider group); "*" matches any. None: no limit of that kind.

    ``connections`` is enforced by the sender (connection_limit.py), ``per_connection`` by Exim's
    transport of that class (the agent names it in a header)."""

    source_ip: str
    provider: str
    per_minute: float | None = None
    per_hour: float | None = None
    connections: int | None = None
    per_connection: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"source_ip": self.source_ip, "provider": self.provider, "per_minute": self.per_minute,
                "per_hour": self.per_hour, "connections": self.connections, "per_connection": self.per_connection}


# Defaults per source IP for the big providers: conservative starting points for an IP with some
# reputation, below what the providers tolerate from an established sender (a new IP should
# follow a warm-up schedule on top). The per-hour figure keeps a full minute's pace from lasting
# the hour. Connections and letters per connection follow the providers' published guidance
# where there is some (Yahoo: 20 letters a connection; Apple: a few letters a connection).
DEFAULT_LIMITS: dict[str, ProviderLimit] = {
    "google": ProviderLimit("*", "google", per_minute=300, per_hour=10_000, connections=5, per_connection=50),
    "microsoft": ProviderLimit("*", "microsoft", per_minute=200, per_hour=6_000, connections=5, per_connection=50),
    "office365": ProviderLimit("*", "office365", per_minute=300, per_hour=12_000, connections=5, per_connection=50),
    "yahoo": ProviderLimit("*", "yahoo", per_minute=150, per_hour=5_000, connections=5, per_connection=20),
    "apple": ProviderLimit("*", "apple", per_minute=100, per_hour=3_000, connections=5, per_connection=5),
    "mailru": ProviderLimit("*", "mailru", per_minute=100, per_hour=3_000, connections=5, per_connection=50),
    "yandex": ProviderLimit("*", "yandex", per_minute=100, per_hour=3_000, connections=5, per_connection=50),
    "gmx": ProviderLimit("*", "gmx", per_minute=100, per_hour=3_000, connections=5, per_connection=100),
    "ionos": ProviderLimit("*", "ionos", per_minute=100, per_hour=3_000, connections=5, per_connection=100),
    "comcast": ProviderLimit("*", "comcast", per_minute=100, per_hour=3_000, connections=5, per_connection=100),
    "zoho": ProviderLimit("*", "zoho", per_minute=60, per_hour=2_000, connections=3, per_connection=50),
    "proton": ProviderLimit("*", "proton", per_minute=60, per_hour=2_000, connections=3, per_connection=50),
    "fastmail": ProviderLimit("*", "fastmail", per_minute=60, per_hour=2_000, connections=3, per_connection=50),
    "t-online": ProviderLimit("*", "t-online", per_minute=100, per_hour=3_000, connections=5, per_connection=50),
}

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")  # no dot: a provider never looks like a domain
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOST_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
MAX_PROVIDERS = 200
MAX_SUFFIXES = 50

MIN_TTL = 1.0  # s: an MX answer with TTL 0 is still not looked up for every letter
MAX_TTL = 86_400.0
NEGATIVE_TTL = 300.0  # s: a domain without MX (or that does not exist)
FAILURE_TTL = 30.0  # s: a lookup that timed out or failed; tried again soon
LOOKUP_TIMEOUT = 2.0  # s for one lookup, all tries included
MAX_ENTRIES = 100_000
PREFETCH_DEADLINE = 1.0  # s the sender waits for a round's lookups; the rest finish in the background
MAX_PENDING = 64  # lookups in flight at once: a stop waits on few, a dead resolver is not flooded
DOWN_AFTER = 8  # failed lookups in a row after which the resolver counts as down: nobody waits on it


class ProviderTableError(ValueError):
    """A provider table that cannot be used; the message names the item."""


class ProviderTable:
    """Provider name -> MX host suffixes; the built-in table unless another is given."""

    def __init__(self, providers: Mapping[str, Iterable[str]] | None = None) -> None:
        self.providers = {name: tuple(s.lower().rstrip(".") for s in suffixes)
                          for name, suffixes in (BUILTIN_PROVIDERS if providers is None else providers).items()}
        self._by_suffix = {suffix: name for name, suffixes in self.providers.items() for suffix in suffixes}

    @classmethod
    def from_json(cls, data: Any) -> ProviderTable:
        """``{"google": ["google.com", "googlemail.com"], …}``, checked whole."""
        if not isinstance(data, dict) or len(data) > MAX_PROVIDERS:
            raise ProviderTableError(f"providers must be an object of at most {MAX_PROVIDERS} "
                                     "{\"<provider>\": [\"<MX host suffix>\", …]}")
        owner: dict[str, str] = {}
        table: dict[str, tuple[str, ...]] = {}
        for name, suffixes in data.items():
            if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                raise ProviderTableError(f"providers: {name!r} is not a provider name (lower-case letters, digits, "
                                         "- and _, no dot)")
            if (not isinstance(suffixes, list) or not suffixes or len(suffixes) > MAX_SUFFIXES):
                raise ProviderTableError(f"providers[{name!r}] must be a list of MX host suffixes "
                                         f"(1 to {MAX_SUFFIXES}, e.g. [\"google.com\"])")
            clean = []
            for suffix in suffixes:
                host = suffix.rstrip(".").lower() if isinstance(suffix, str) else None
                if host is None or not HOST_RE.fullmatch(host):
                    raise ProviderTableError(f"providers[{name!r}]: {suffix!r} is not a host name suffix")
                if owner.get(host, name) != name:
                    raise ProviderTableError(f"providers: {host} is listed for both {owner[host]} and {name}")
                owner[host] = name
                clean.append(host)
            table[name] = tuple(clean)
        return cls(table)

    def to_json(self) -> dict[str, list[str]]:
        return {name: list(suffixes) for name, suffixes in self.providers.items()}

    def match(self, hosts: Iterable[str]) -> str | None:
        """The provider of the first host (the most preferred MX), or None: nobody in the table."""
        for host in hosts:
            labels = host.lower().rstrip(".").split(".")
            for i in range(len(labels)):  # the longest suffix first
                name = self._by_suffix.get(".".join(labels[i:]))
                if name is not None:
                    return name
            return None
        return None


def limit_for(rules: Iterable[ProviderLimit], source_ip: str, group: str) -> ProviderLimit | None:
    """The most specific rule for this pair: IP and provider, then provider, then IP, then */*."""
    best: tuple[int, ProviderLimit] | None = None
    for rule in rules:
        if rule.source_ip not in ("*", source_ip) or rule.provider not in ("*", group):
            continue
        rank = (rule.provider != "*") * 2 + (rule.source_ip != "*")
        if best is None or rank > best[0]:
            best = (rank, rule)
    return None if best is None else best[1]


def default_limits() -> tuple[ProviderLimit, ...]:
    return tuple(DEFAULT_LIMITS.values())


class _MxCache:
    """domain -> (MX hosts by preference, expiry); shared by the resolvers of successive tables."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self.entries: OrderedDict[str, tuple[tuple[str, ...], float]] = OrderedDict()
        self.lock = threading.Lock()
        self.pending: set[str] = set()
        self.failures = 0  # lookups in a row that timed out or failed


class ProviderResolver:
    """The provider group of a recipient domain, from its MX hosts (dnspython)."""

    def __init__(self, table: ProviderTable, *, nameserver: str | None = None, port: int = 53,
                 timeout: float = LOOKUP_TIMEOUT, failure_ttl: float = FAILURE_TTL, max_entries: int = MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic, _cache: _MxCache | None = None,
                 _pool: ThreadPoolExecutor | None = None) -> None:
        self.table = table
        self.nameserver, self.port, self.timeout = nameserver, port, timeout
        self.failure_ttl = failure_ttl
        self.clock = clock
        self._cache = _cache or _MxCache(max_entries)
        self._memo: dict[str, tuple[str, float]] = {}  # domain as asked -> (group, expiry) under this table
        self._pool = _pool
        self._resolver: dns.resolver.Resolver | None
        try:
            if nameserver is None:
                self._resolver = dns.resolver.Resolver()  # the system's (/etc/resolv.conf)
            else:
                self._resolver = dns.resolver.Resolver(configure=False)
                self._resolver.nameservers = [nameserver]
                self._resolver.port = port
        except (dns.exception.DNSException, OSError, ValueError):
            self._resolver = None  # no resolver configured: every domain is its own group
        if self._resolver is not None:
            self._resolver.lifetime = timeout
            self._resolver.timeout = min(timeout, 1.0)
            self._resolver.cache = None  # ours keeps the TTLs (and is bounded)

    def with_table(self, table: ProviderTable) -> ProviderResolver:
        """The same resolver and cached MX answers, matched against another table."""
        return ProviderResolver(table, nameserver=self.nameserver, port=self.port, timeout=self.timeout,
                                failure_ttl=self.failure_ttl, clock=self.clock, _cache=self._cache, _pool=self._pool)

    def __len__(self) -> int:
        return len(self._cache.entries)

    def provider_of(self, domain: str) -> str:
        """The domain's group, looking its MX up when not cached (at most ``timeout`` s)."""
        domain = _normal(domain)
        hosts = self._cached(domain)
        if hosts is None:
            hosts = self._lookup(domain)
        return self._group(domain, hosts)

    def provider_of_cached(self, domain: str) -> str:
        """The domain's group from the cache only: a domain not (yet) looked up is its own group."""
        domain = _normal(domain)
        return self._group(domain, self._cached(domain) or ())

    def provider_now(self, domain: str) -> str:
        """The domain's group without waiting on a lookup ``prefetch`` left running (its own group
        until that answers); a domain nobody looked up yet is looked up now. Asked for every
        letter, so a group found is remembered until its answer expires."""
        hit = self._memo.get(domain)
        if hit is not None and hit[1] > self.clock():
            return hit[0]
        name = _normal(domain)
        if name in self._cache.pending or (self.down and self._cached(name) is None):
            return self.provider_of_cached(name)
        group = self.provider_of(name)
        entry = self._cache.entries.get(name)
        if entry is not None:
            if len(self._memo) >= self._cache.max_entries:
                self._memo.clear()
            self._memo[domain] = (group, entry[1])
        return group

    @property
    def down(self) -> bool:
        """The last lookups all failed: a domain not cached is its own group without waiting."""
        return self._cache.failures >= DOWN_AFTER

    def pending(self) -> int:
        return len(self._cache.pending)

    def expires_in(self, domain: str) -> float:
        entry = self._cache.entries.get(_normal(domain))
        return 0.0 if entry is None else entry[1] - self.clock()

    def prefetch(self, domains: Iterable[str], deadline: float = PREFETCH_DEADLINE) -> None:
        """Look up the domains not cached, in parallel, waiting at most ``deadline`` s; lookups
        still running then go on in the background and fill the cache for later rounds."""
        cache = self._cache
        todo = []
        with cache.lock:
            for domain in {_normal(d) for d in domains}:
                if len(cache.pending) >= MAX_PENDING:
                    break  # the rest are looked up in a later round
                if domain in cache.pending or self._fresh(domain):
                    continue
                cache.pending.add(domain)
                todo.append(domain)
        if not todo:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="mx-lookup")
        futures = [self._pool.submit(self._lookup, domain) for domain in todo]
        wait(futures, timeout=0 if self.down else deadline)

    # -- inside ------------------------------------------------------------------------------

    def _group(self, domain: str, hosts: tuple[str, ...]) -> str:
        return self.table.match(hosts) or domain

    def _fresh(self, domain: str) -> bool:
        entry = self._cache.entries.get(domain)
        return entry is not None and entry[1] > self.clock()

    def _cached(self, domain: str) -> tuple[str, ...] | None:
        entry = self._cache.entries.get(domain)
        if entry is None or entry[1] <= self.clock():
            return None
        return entry[0]

    def _lookup(self, domain: str) -> tuple[str, ...]:
        try:
            hosts, ttl, failed = self._query(domain)
        finally:
            with self._cache.lock:
                self._cache.pending.discard(domain)
        with self._cache.lock:
            self._cache.failures = self._cache.failures + 1 if failed else 0
        self._store(domain, hosts, ttl)
        return hosts

    def _query(self, domain: str) -> tuple[tuple[str, ...], float, bool]:
        """(MX hosts by preference, seconds to keep them, whether the lookup failed)."""
        if self._resolver is None:
            return (), self.failure_ttl, True
        try:
            answer = self._resolver.resolve(domain, "MX", search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return (), NEGATIVE_TTL, False
        except (dns.exception.DNSException, OSError, ValueError):  # timeout, SERVFAIL, refused, unreachable
            return (), self.failure_ttl, True
        if answer.rrset is None:
            return (), NEGATIVE_TTL, False
        records = sorted(answer.rrset, key=lambda mx: (mx.preference, mx.exchange.to_text()))
        hosts = tuple(mx.exchange.to_text().rstrip(".").lower() for mx in records)
        return hosts, min(max(float(answer.rrset.ttl), MIN_TTL), MAX_TTL), False

    def _store(self, domain: str, hosts: tuple[str, ...], ttl: float) -> None:
        cache = self._cache
        with cache.lock:
            cache.entries[domain] = (hosts, self.clock() + ttl)
            cache.entries.move_to_end(domain)
            while len(cache.entries) > cache.max_entries:
                cache.entries.popitem(last=False)


def _normal(domain: str) -> str:
    return domain.strip().rstrip(".").lower()

