"""POST /v1/config: rate limits and HELO names pushed by the panel, checked whole, stored, reported by ping."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from worker_agent import remote_config
from worker_agent.api import create_app
from worker_agent.config import AgentConfig
from worker_agent.queue import QueueDB
from worker_agent.setup_node import init_node

from .test_api import Panel, snapshot

SOURCE_IPS = ["127.0.0.2", "127.0.0.3", "2001:db8::25"]


@pytest.fixture
def node(write_config: Callable[..., AgentConfig]) -> AgentConfig:
    config = write_config(source_ips=SOURCE_IPS, rate_limits=[{"domain": "file.example", "per_minute": 60}])
    init_node(config)
    return config


@pytest.fixture
def panel(node: AgentConfig) -> Panel:
    return Panel(create_app(node).test_client(), node.read_key())


def good(version: int = 1, **changes: Any) -> dict[str, Any]:
    config = {
        "version": version,
        "rate_limits": [{"source_ip": "*", "domain": "gmail.com", "per_minute": 600},
                        {"source_ip": "127.0.0.2", "domain": "*", "per_minute": 1200.5}],
        "helo": {"127.0.0.2": "mail2.example.net", "2001:DB8::25": "Six.Example.net"},
    }
    config.update(changes)
    return config


def test_a_new_agent_reports_config_version_0(panel: Panel) -> None:
    assert panel.call("/v1/ping", {})[1]["config_version"] == 0


def test_a_config_is_applied_reported_by_ping_and_written_for_exim(panel: Panel, node: AgentConfig) -> None:
    assert panel.call("/v1/config", good(7)) == (200, {"config_version": 7, "rate_limits": 2, "helo": 2})
    assert panel.call("/v1/ping", {})[1]["config_version"] == 7
    # Exim's lsearch lines, IPs in the node's own spelling (quoted: IPv6 holds colons), names lower-cased
    lines = node.helo_map.read_text().splitlines()
    assert lines[1:] == ['"127.0.0.2": mail2.example.net', '"2001:db8::25": six.example.net']
    assert node.helo_map.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in node.helo_map.parent.iterdir() if p.name.endswith(".tmp")] == []
    stored = remote_config.stored(QueueDB(node.queue_db))
    assert stored is not None and stored.version == 7
    assert remote_config.rate_limits(node, stored) == stored.rate_limits  # the file's rules are replaced


def test_the_file_rules_apply_until_a_config_is_pushed(node: AgentConfig) -> None:
    assert remote_config.rate_limits(node, None) == node.rate_limits
    assert node.rate_for("127.0.0.2", "file.example") == 60


def test_a_later_push_replaces_the_whole_config(panel: Panel, node: AgentConfig) -> None:
    panel.call("/v1/config", good(1))
    assert panel.call("/v1/config", {"version": 2, "rate_limits": [], "helo": {}})[0] == 200
    assert node.helo_map.read_text().splitlines()[1:] == []  # every IP greets with Exim's own name again
    stored = remote_config.stored(QueueDB(node.queue_db))
    assert stored is not None and stored.rate_limits == () and stored.helo == {}


def test_the_config_survives_a_restart_of_the_agent(panel: Panel, node: AgentConfig) -> None:
    panel.call("/v1/config", good(3))
    again = Panel(create_app(node).test_client(), node.read_key())  # a new process on the same data
    assert again.call("/v1/ping", {})[1]["config_version"] == 3


@pytest.mark.parametrize(("change", "message"), [
    ({"version": 0}, "version must be a whole number of 1 or more"),
    ({"version": "3"}, "version must be a whole number"),
    ({"version": True}, "version must be a whole number"),
    ({"extra": 1}, "unknown key(s): extra"),
    ({"rate_limits": {"domain": "x"}}, "rate_limits must be a list"),
    ({"rate_limits": [{"source_ip": "*", "domain": "a.example"}]}, "rate_limits[0] must be an object with exactly"),
    ({"rate_limits": [{"source_ip": "*", "domain": "ok.example", "per_minute": 5},
                      {"source_ip": "10.0.0.9", "domain": "*", "per_minute": 5}]},
     "rate_limits[1].source_ip: 10.0.0.9 is not a source IP of this node (its source IPs: 127.0.0.2, 127.0.0.3"),
    ({"rate_limits": [{"source_ip": "nope", "domain": "*", "per_minute": 5}]},
     "rate_limits[0].source_ip: 'nope' is not an IP address"),
    ({"rate_limits": [{"source_ip": "*", "domain": "bad domain", "per_minute": 5}]},
     "rate_limits[0].domain: 'bad domain' is neither \"*\" nor a domain name"),
    ({"rate_limits": [{"source_ip": "*", "domain": "a.example", "per_minute": 0}]},
     "rate_limits[0].per_minute must be a number above 0"),
    ({"rate_limits": [{"source_ip": "*", "domain": "a.example", "per_minute": "10"}]},
     "rate_limits[0].per_minute must be a number"),
    ({"rate_limits": [{"source_ip": "*", "domain": "a.example", "per_minute": 1},
                      {"source_ip": "*", "domain": "A.example", "per_minute": 2}]},
     "rate_limits[1]: source_ip * and domain a.example are already limited by rate_limits[0]"),
    ({"helo": ["127.0.0.2"]}, "helo must be an object"),
    ({"helo": {"192.0.2.1": "a.example"}}, "helo['192.0.2.1']: 192.0.2.1 is not a source IP of this node"),
    ({"helo": {"127.0.0.2": "evil.example\n\"127.0.0.3\": other"}}, "is not a host name"),
    ({"helo": {"127.0.0.2": "two words"}}, "helo['127.0.0.2']: 'two words' is not a host name"),
    ({"helo": {"127.0.0.2": "colon:name"}}, "is not a host name"),
    ({"helo": {"127.0.0.2": ""}}, "is not a host name"),
    ({"helo": {"127.0.0.2": "a" * 64 + ".example"}}, "is not a host name"),
    ({"helo": {"127.0.0.2": "ok.example", "127.0.0.3": 5}}, "helo['127.0.0.3']: 5 is not a host name"),
    ({"helo": {"2001:db8::25": "a.example", "2001:DB8::25": "b.example"}}, "2001:db8::25 is given twice"),
])
def test_a_wrong_config_is_refused_whole_and_changes_nothing(panel: Panel, node: AgentConfig,
                                                             change: dict[str, Any], message: str) -> None:
    panel.call("/v1/config", good(1))
    before_map = node.helo_map.read_bytes()
    before = snapshot(node.queue_db)
    status, reply = panel.call("/v1/config", {**good(2), **change})
    assert status == 400 and message in reply["error"], reply
    after = snapshot(node.queue_db)
    after.pop("nonces"), before.pop("nonces")  # the refused request's nonce is remembered, nothing else
    assert after == before
    assert node.helo_map.read_bytes() == before_map
    assert panel.call("/v1/ping", {})[1]["config_version"] == 1


def test_a_body_that_is_not_an_object_is_refused(panel: Panel) -> None:
    status, reply = panel.call("/v1/config", [1, 2])
    assert status == 400 and "must be a JSON object" in reply["error"]


def test_an_unwritable_helo_map_applies_nothing(write_config: Callable[..., AgentConfig], tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the map's directory should be")
    config = write_config(source_ips=SOURCE_IPS, helo_map=str(blocked / "helo-map"))
    init_node(config)
    panel = Panel(create_app(config).test_client(), config.read_key())
    status, reply = panel.call("/v1/config", good(1))
    assert status == 400 and f"cannot write the HELO map {blocked / 'helo-map'}" in reply["error"]
    assert panel.call("/v1/ping", {})[1]["config_version"] == 0


def test_held_letters_are_released_but_retries_keep_their_time(queue_db: QueueDB) -> None:
    from .conftest import make_campaign, make_recipient

    queue_db.queue_batch("b1", make_campaign(), [make_recipient(i) for i in (1, 2, 3)])
    claimed = queue_db.claim(3, now=1000.0)
    queue_db.finish(release=[(claimed[0].id, 5000.0)],  # held by a rate limit
                    retry=[(claimed[1].id, 5000.0, 451, "451 try later")],  # a remote refusal: keeps its time
                    submitted=[(claimed[2].id, "x", 250, "250 OK")])
    assert queue_db.release_rate_holds(2000.0) == 1
    due = dict(queue_db.conn().execute("SELECT id, not_before FROM letters WHERE state = 'queued'").fetchall())
    assert due == {1: 2000.0, 2: 5000.0}


# -- mailbox providers and the limits per (source IP, provider) -----------------------------------

PROVIDER_LIMITS = [
    {"source_ip": "*", "provider": "google", "per_minute": 120, "per_hour": 3000, "connections": 4,
     "per_connection": 40},
    {"source_ip": "127.0.0.2", "provider": "acme", "per_hour": 500},
    {"source_ip": "2001:DB8::25", "provider": "small.example", "per_minute": 6.5},
    {"source_ip": "*", "provider": "*", "per_minute": 1000, "per_hour": None},
]


def test_a_provider_table_and_limits_are_checked_stored_and_read_back(panel: Panel, node: AgentConfig) -> None:
    table = {"google": ["google.com", "GoogleMail.com."], "acme": ["mx.acme.net"]}
    status, _ = panel.call("/v1/config", good(4, providers=table, provider_limits=PROVIDER_LIMITS))
    assert status == 200
    stored = remote_config.stored(QueueDB(node.queue_db))
    assert stored is not None
    assert remote_config.provider_table(stored).to_json() == {"google": ["google.com", "googlemail.com"],
                                                              "acme": ["mx.acme.net"]}
    limits = remote_config.provider_limits(stored)
    assert [rule.to_json() for rule in limits] == [
        {"source_ip": "*", "provider": "google", "per_minute": 120.0, "per_hour": 3000.0, "connections": 4,
         "per_connection": 40},
        {"source_ip": "127.0.0.2", "provider": "acme", "per_minute": None, "per_hour": 500.0, "connections": None,
         "per_connection": None},
        {"source_ip": "2001:db8::25", "provider": "small.example", "per_minute": 6.5, "per_hour": None,
         "connections": None, "per_connection": None},
        {"source_ip": "*", "provider": "*", "per_minute": 1000.0, "per_hour": None, "connections": None,
         "per_connection": None},
    ]


def test_without_a_table_or_limits_the_built_in_ones_apply(panel: Panel, node: AgentConfig) -> None:
    from worker_agent.providers import BUILTIN_PROVIDERS, default_limits

    assert remote_config.provider_table(None).to_json() == {k: list(v) for k, v in BUILTIN_PROVIDERS.items()}
    assert remote_config.provider_limits(None) == default_limits()  # an agent never configured
    panel.call("/v1/config", good(1))  # a panel that sends neither
    stored = remote_config.stored(QueueDB(node.queue_db))
    assert remote_config.provider_limits(stored) == default_limits()
    assert remote_config.provider_table(stored).to_json() == remote_config.provider_table(None).to_json()
    panel.call("/v1/config", good(2, provider_limits=[]))  # an empty list: no provider limits at all
    assert remote_config.provider_limits(remote_config.stored(QueueDB(node.queue_db))) == ()


@pytest.mark.parametrize(("change", "message"), [
    ({"providers": ["google"]}, "providers must be an object"),
    ({"providers": {"Big Mail": ["big.example"]}}, "providers: 'Big Mail' is not a provider name"),
    ({"providers": {"big": []}}, "providers['big'] must be a list of MX host suffixes"),
    ({"providers": {"big": ["a b"]}}, "providers['big']: 'a b' is not a host name suffix"),
    ({"providers": {"big": ["mx.example"], "other": ["MX.example"]}},
     "providers: mx.example is listed for both big and other"),
    ({"provider_limits": {"google": 5}}, "provider_limits must be a list"),
    ({"provider_limits": [{"source_ip": "*", "provider": "google", "per_day": 5}]},
     "provider_limits[0] has unknown key(s): per_day"),
    ({"provider_limits": [{"source_ip": "*", "per_minute": 5}]}, "provider_limits[0] needs source_ip and provider"),
    ({"provider_limits": [{"source_ip": "*", "provider": "google"}]},
     "provider_limits[0] sets no limit: give per_minute, per_hour, connections or per_connection"),
    ({"provider_limits": [{"source_ip": "*", "provider": "gogle!", "per_minute": 5}]},
     "provider_limits[0].provider: 'gogle!' is neither \"*\", a provider of the table (apple, comcast"),
    ({"providers": {"big": ["big.example"]}, "provider_limits": [{"source_ip": "*", "provider": "google",
                                                                  "per_minute": 5}]},
     "provider_limits[0].provider: 'google' is neither \"*\", a provider of the table (big)"),
    ({"provider_limits": [{"source_ip": "10.0.0.9", "provider": "google", "per_minute": 5}]},
     "provider_limits[0].source_ip: 10.0.0.9 is not a source IP of this node"),
    ({"provider_limits": [{"source_ip": "*", "provider": "google", "per_minute": 0}]},
     "provider_limits[0].per_minute must be a number above 0 and at most 1000000"),
    ({"provider_limits": [{"source_ip": "*", "provider": "google", "per_hour": "100"}]},
     "provider_limits[0].per_hour must be a number above 0 and at most 60000000"),
    ({"provider_limits": [{"source_ip": "*", "provider": "google", "connections": 2.5}]},
     "provider_limits[0].connections must be a whole number from 1 to 1000"),
    ({"provider_limits": [{"source_ip": "*", "provider": "google", "per_connection": True}]},
     "provider_limits[0].per_connection must be a whole number from 1 to 100000"),
    ({"provider_limits": [{"source_ip": "*", "provider": "google", "per_minute": 5},
                          {"source_ip": "*", "provider": "Google", "per_hour": 5}]},
     "provider_limits[1]: source_ip * and provider google are already limited by provider_limits[0]"),
    ({"provider_limits": [{"source_ip": "*", "provider": {"a": 1}, "per_minute": 5}]},
     "provider_limits[0].provider: {'a': 1} is neither"),
    ({"provider_limits": [{"source_ip": ["*"], "provider": "google", "per_minute": 5}]},
     "provider_limits[0].source_ip: ['*'] is not an IP address"),
    ({"provider_limits": [["*", "google", 5]]}, "provider_limits[0] must be an object"),
    ({"providers": {"big": [5]}}, "providers['big']: 5 is not a host name suffix"),
])
def test_a_wrong_provider_setting_is_refused_whole(panel: Panel, node: AgentConfig, change: dict[str, Any],
                                                   message: str) -> None:
    panel.call("/v1/config", good(1))
    before = snapshot(node.queue_db)
    status, reply = panel.call("/v1/config", {**good(2), **change})
    assert status == 400 and message in reply["error"], reply
    after = snapshot(node.queue_db)
    after.pop("nonces"), before.pop("nonces")
    assert after == before
