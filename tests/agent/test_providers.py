"""Mailbox providers from MX hosts, against a real BIND: grouping, TTL caching, failure fallback;
and the limits per (source IP, provider group) per minute and per hour."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Iterator

import dns.query
import dns.update
import pytest

from devserver.bind import BindServer
from worker_agent.providers import (BUILTIN_PROVIDERS, DEFAULT_LIMITS, ProviderLimit, ProviderResolver, ProviderTable,
                                    ProviderTableError, limit_for)
from worker_agent.rate_limit import RateLimiter

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="named runs as the bind user: needs root")

# Recipient domains of the test zones and the MX hosts they point at (real providers' host names).
MX = {
    "gmail.test": ["gmail-smtp-in.l.google.com.", "alt1.gmail-smtp-in.l.google.com."],
    "workspace.test": ["aspmx.l.google.com.", "alt2.aspmx.l.google.com."],
    "hotmail.test": ["hotmail-com.olc.protection.outlook.com."],
    "aol.test": ["mx-aol.mail.gm0.yahoodns.net."],
    "yahoo.test": ["mta5.am0.yahoodns.net.", "mta6.am0.yahoodns.net."],
    "icloud.test": ["mx01.mail.icloud.com."],
    "mailru.test": ["mxs.mail.ru."],
    "yandex.test": ["mx.yandex.net."],
    "webde.test": ["mx-ha03.web.de."],
    "comcast.test": ["mx1a1.comcast.net."],
    "plain.test": ["mx1.plainhosting.net."],
    "mixed.test": ["mx1.plainhosting.net.", "alt1.aspmx.l.google.com."],  # the preferred MX decides
    "changing.test": ["gmail-smtp-in.l.google.com."],
}
NO_MX = "nomx.test"  # a zone without an MX record


def _set_mx(bind: BindServer, zone: str, hosts: list[str], ttl: int = 300) -> None:
    update = dns.update.UpdateMessage(zone, keyring=bind.keyring)
    update.delete("@", "MX")
    for preference, host in enumerate(hosts):
        update.add("@", ttl, "MX", f"{(preference + 1) * 10} {host}")
    reply = dns.query.tcp(update, bind.host, port=bind.port, timeout=5)
    assert reply.rcode() == 0, reply


@pytest.fixture(scope="module")
def bind() -> Iterator[BindServer]:
    with BindServer([*MX, NO_MX]) as server:
        for zone, hosts in MX.items():
            _set_mx(server, zone, hosts, ttl=2 if zone == "changing.test" else 300)
        yield server


@pytest.fixture
def resolver(bind: BindServer) -> ProviderResolver:
    return ProviderResolver(ProviderTable(), nameserver=bind.host, port=bind.port)


def test_domains_are_grouped_by_the_provider_of_their_mx_hosts(resolver: ProviderResolver) -> None:
    groups = {domain: resolver.provider_of(domain) for domain in MX if domain != "changing.test"}
    assert groups == {
        "gmail.test": "google", "workspace.test": "google", "hotmail.test": "microsoft", "aol.test": "yahoo",
        "yahoo.test": "yahoo", "icloud.test": "apple", "mailru.test": "mailru", "yandex.test": "yandex",
        "webde.test": "gmx", "comcast.test": "comcast",
        "plain.test": "plain.test",  # not in the table: its own group
        "mixed.test": "mixed.test",  # the preferred MX is nobody's
    }
    assert resolver.provider_of(NO_MX) == NO_MX  # no MX: its own group
    assert resolver.provider_of("GMAIL.test.") == "google"  # any case, trailing dot


def test_an_edited_table_replaces_the_built_in_one(bind: BindServer) -> None:
    table = ProviderTable({"acme": ["plainhosting.net"], "google": ["google.com"]})
    resolver = ProviderResolver(table, nameserver=bind.host, port=bind.port)
    assert resolver.provider_of("plain.test") == "acme"
    assert resolver.provider_of("hotmail.test") == "hotmail.test"  # microsoft is not in this table
    assert resolver.provider_of("gmail.test") == "google"
    # the MX answers are kept when the table changes: no new lookup needed
    again = resolver.with_table(ProviderTable())
    assert again.provider_of("plain.test") == "plain.test"
    assert again.provider_of("hotmail.test") == "microsoft"


def test_a_suffix_matches_whole_labels_and_the_longest_wins() -> None:
    table = ProviderTable({"google": ["google.com"], "office365": ["mail.protection.outlook.com"],
                           "microsoft": ["outlook.com"]})
    assert table.match(["x.mail.protection.outlook.com"]) == "office365"
    assert table.match(["hotmail-com.olc.protection.outlook.com"]) == "microsoft"
    assert table.match(["notgoogle.com"]) is None  # a suffix ends at a dot
    assert table.match(["google.com."]) == "google"


@pytest.mark.parametrize("table, error", [
    ([], "must be an object"),
    ({"Google!": ["google.com"]}, "'Google!'"),
    ({"google": "google.com"}, "list of MX host suffixes"),
    ({"google": ["not a host"]}, "'not a host' is not a host name"),
    ({"google": ["google.com"], "other": ["google.com"]}, "google.com is listed for both google and other"),
])
def test_a_bad_table_is_refused_with_a_clear_error(table: object, error: str) -> None:
    with pytest.raises(ProviderTableError, match=re.escape(error)):
        ProviderTable.from_json(table)


def test_the_built_in_table_and_defaults_cover_the_big_providers() -> None:
    for name in ("google", "microsoft", "yahoo", "apple", "mailru", "yandex", "gmx", "comcast"):
        assert BUILTIN_PROVIDERS[name], name
        limit = DEFAULT_LIMITS[name]
        assert limit.per_minute and limit.per_hour and limit.connections and limit.per_connection, name
        assert limit.per_minute * 60 >= limit.per_hour  # the hourly limit is the tighter one over an hour
    assert ProviderTable.from_json(ProviderTable().to_json()).to_json() == ProviderTable().to_json()


def test_an_answer_is_kept_for_its_ttl_and_a_change_seen_after_it(bind: BindServer,
                                                                  resolver: ProviderResolver) -> None:
    _set_mx(bind, "changing.test", ["gmail-smtp-in.l.google.com."], ttl=2)
    assert resolver.provider_of("changing.test") == "google"
    _set_mx(bind, "changing.test", ["mta5.am0.yahoodns.net."], ttl=2)
    assert bind.query("changing.test", "MX") == ["10 mta5.am0.yahoodns.net."]
    assert resolver.provider_of("changing.test") == "google"  # still within the TTL: the cached answer
    assert resolver.provider_now("changing.test") == "google"  # what the limiter asks for each letter
    time.sleep(2.2)
    assert resolver.provider_now("changing.test") == "yahoo"
    assert resolver.provider_of("changing.test") == "yahoo"


def test_a_long_ttl_is_kept_and_the_cache_stays_bounded(bind: BindServer) -> None:
    resolver = ProviderResolver(ProviderTable(), nameserver=bind.host, port=bind.port, max_entries=3)
    for domain in ("gmail.test", "hotmail.test", "aol.test", "icloud.test", "mailru.test"):
        resolver.provider_of(domain)
    assert len(resolver) <= 3
    assert resolver.provider_of("mailru.test") == "mailru"


@pytest.fixture
def silent_dns() -> Iterator[int]:
    """A UDP and TCP port that takes DNS questions and never answers."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", port))
    tcp.listen()
    yield port
    udp.close()
    tcp.close()


def test_a_lookup_that_fails_falls_back_to_the_domain_and_is_kept_briefly(silent_dns: int) -> None:
    resolver = ProviderResolver(ProviderTable(), nameserver="127.0.0.1", port=silent_dns, timeout=0.5,
                                failure_ttl=1.0)
    started = time.monotonic()
    assert resolver.provider_of("gmail.test") == "gmail.test"
    assert time.monotonic() - started < 2.0
    started = time.monotonic()
    assert resolver.provider_of("gmail.test") == "gmail.test"  # kept: no second wait
    assert time.monotonic() - started < 0.1
    assert resolver.expires_in("gmail.test") <= 1.0


def test_prefetch_resolves_many_domains_at_once_within_its_deadline(silent_dns: int, bind: BindServer) -> None:
    slow = ProviderResolver(ProviderTable(), nameserver="127.0.0.1", port=silent_dns, timeout=2.0)
    started = time.monotonic()
    slow.prefetch([f"d{i}.test" for i in range(50)], deadline=0.5)
    assert time.monotonic() - started < 1.5  # it does not wait for every lookup to time out
    assert slow.provider_of_cached("d1.test") == "d1.test"  # not answered yet: its own group for now
    fast = ProviderResolver(ProviderTable(), nameserver=bind.host, port=bind.port)
    fast.prefetch(list(MX), deadline=5)
    assert fast.provider_of_cached("yandex.test") == "yandex"


def test_limits_go_from_the_most_specific_rule() -> None:
    rules = (ProviderLimit("*", "*", per_minute=1000), ProviderLimit("*", "google", per_minute=100, per_hour=3000),
             ProviderLimit("127.0.0.2", "google", per_minute=10))
    assert limit_for(rules, "127.0.0.2", "google").per_minute == 10
    assert limit_for(rules, "127.0.0.3", "google").per_hour == 3000
    assert limit_for(rules, "127.0.0.3", "plain.test").per_minute == 1000
    assert limit_for((), "127.0.0.3", "plain.test") is None


# -- limits per (source IP, provider group) ------------------------------------------------------

def _send_for(limiter: RateLimiter, recipients: list[tuple[str, str]], seconds: float, step: float = 0.25
              ) -> list[tuple[float, str, str]]:
    """Play the sender's rounds on a virtual clock: every `step`, each waiting letter asks to go."""
    sent: list[tuple[float, str, str]] = []
    due = {i: 0.0 for i in range(len(recipients))}
    now = 0.0
    while now < seconds and due:
        limiter.new_round()
        for i in sorted(i for i, at in due.items() if at <= now):
            ip, domain = recipients[i]
            wait = limiter.wait(ip, domain, now=now)
            if wait > 0:
                due[i] = now + wait
            else:
                sent.append((now, ip, domain))
                del due[i]
        now += step
    return sent


def _most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_two_domains_of_one_provider_share_its_limit_and_others_are_not_held_up(resolver: ProviderResolver) -> None:
    rules = (ProviderLimit("*", "google", per_minute=60, per_hour=600),)
    limiter = RateLimiter(lambda ip, domain: None, resolver=resolver, provider_limits=rules)
    recipients = [("127.0.0.2", "gmail.test"), ("127.0.0.2", "workspace.test")] * 400
    recipients += [("127.0.0.3", "gmail.test")] * 100  # another source IP: its own allowance
    recipients += [("127.0.0.2", "hotmail.test")] * 300 + [("127.0.0.2", "plain.test")] * 300
    sent = _send_for(limiter, recipients, seconds=7200)
    google_ip2 = [at for at, ip, domain in sent if ip == "127.0.0.2" and domain in ("gmail.test", "workspace.test")]
    # one second's worth at once, then the pace: never more than the limit plus that second in any minute
    assert _most_in_any_window(google_ip2, 60) <= 61
    assert _most_in_any_window(google_ip2, 3600) <= 600
    assert len(google_ip2) >= 600  # the hour's allowance is used, and the next hour's begins
    assert {domain for _, ip, domain in sent if ip == "127.0.0.2"} >= {"gmail.test", "workspace.test"}
    # another IP: its own allowance (one a second up to the hour's first 10, then 590 spread over the hour)
    ip3 = [at for at, ip, _ in sent if ip == "127.0.0.3"]
    assert ip3[0] == 0.0 and len([at for at in ip3 if at < 10]) >= 9 and len([at for at in ip3 if at < 60]) >= 17
    others = [at for at, ip, domain in sent if domain in ("hotmail.test", "plain.test")]
    assert len(others) == 600 and max(others) == 0.0  # no limit on them: all at once


def test_a_per_domain_limit_still_holds_within_its_provider(resolver: ProviderResolver) -> None:
    rules = (ProviderLimit("*", "google", per_minute=600),)
    limiter = RateLimiter(lambda ip, domain: 60.0 if domain == "gmail.test" else None, resolver=resolver,
                          provider_limits=rules)
    sent = _send_for(limiter, [("127.0.0.2", "gmail.test")] * 200 + [("127.0.0.2", "workspace.test")] * 200,
                     seconds=60)
    gmail = [at for at, _, domain in sent if domain == "gmail.test"]
    workspace = [at for at, _, domain in sent if domain == "workspace.test"]
    assert _most_in_any_window(gmail, 60) <= 61  # its own limit
    assert len(workspace) == 200  # not held back by gmail.test's limit, only by google's 600 a minute


def test_an_hourly_limit_alone_spreads_the_hour(resolver: ProviderResolver) -> None:
    limiter = RateLimiter(lambda ip, domain: None, resolver=resolver,
                          provider_limits=(ProviderLimit("*", "yahoo", per_hour=120),))
    sent = _send_for(limiter, [("127.0.0.2", "yahoo.test")] * 500, seconds=3 * 3600, step=1.0)
    times = [at for at, _, _ in sent]
    assert _most_in_any_window(times, 3600) <= 120
    assert len(times) >= 3 * 120 - 5


def test_the_agent_config_names_the_dns_server_of_the_mx_lookups(write_config) -> None:
    from worker_agent.config import ConfigError

    assert (write_config().dns_server, write_config().dns_port) == (None, 53)  # the system's resolver
    for given, wanted in (("192.0.2.53", ("192.0.2.53", 53)), ("127.0.0.1:5353", ("127.0.0.1", 5353)),
                          ("[::1]:5300", ("::1", 5300)), ("2001:db8::53", ("2001:db8::53", 53))):
        config = write_config(dns_server=given)
        assert (config.dns_server, config.dns_port) == wanted, given
    for bad in ("dns.example", "127.0.0.1:0", "127.0.0.1:x", 53, ""):
        with pytest.raises(ConfigError, match="dns_server\" must be an IP address with an optional port"):
            write_config(dns_server=bad)


def test_a_dead_resolver_costs_one_wait_not_one_per_round(silent_dns: int) -> None:
    resolver = ProviderResolver(ProviderTable(), nameserver="127.0.0.1", port=silent_dns, timeout=0.3)
    resolver.prefetch([f"a{i}.test" for i in range(200)], deadline=1.0)
    assert resolver.pending() <= 64  # lookups in flight are bounded: a stop never waits on hundreds
    time.sleep(1.5)  # the first lookups time out and are counted
    started = time.monotonic()
    resolver.prefetch([f"b{i}.test" for i in range(200)], deadline=1.0)
    assert time.monotonic() - started < 0.3  # the resolver is known to be down: no more waiting per round
    assert resolver.provider_now("b7.test") == "b7.test"  # its own group meanwhile, at once
    assert time.monotonic() - started < 0.5
