"""A server's HELO names and rate limits on its page: forms, checks, another user's server, version bumps."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from panel.models import Server, ServerEvent, ServerIP, ServerRateLimit
from panel.services.server_config import agent_config
from worker_agent import remote_config
from worker_agent.providers import BUILTIN_PROVIDERS, DEFAULT_LIMITS, ProviderTable, default_limits


def ips(seed, server_id):
    return seed.query(lambda s: [(i.id, i.ip, i.helo) for i in s.scalars(
        select(ServerIP).where(ServerIP.server_id == server_id).order_by(ServerIP.id))])


def rules(seed, server_id):
    return seed.query(lambda s: sorted((r.source_ip, r.domain, r.per_minute) for r in s.scalars(
        select(ServerRateLimit).where(ServerRateLimit.server_id == server_id))))


def version(seed, server_id):
    return seed.get(Server, server_id).config_version


@pytest.fixture
def server_id(seed, alice):
    return seed.server(alice, "Frankfurt 1", ips=("192.0.2.10", "192.0.2.11"))


def test_the_page_shows_helo_forms_rate_limits_and_the_settings_version(as_alice, server_id):
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert 'value="mx1.example.net" aria-label="HELO name of 192.0.2.10"' in page
    assert "No rate limits set here" in page
    assert "Settings version 0" in page and "applied on the agent" in page
    assert '<option value="192.0.2.11">192.0.2.11</option>' in page


def test_changing_a_helo_name_bumps_the_version(as_alice, seed, server_id):
    (ip_id, _, _), second = ips(seed, server_id)
    response = as_alice.post(f"/servers/{server_id}/ips/{ip_id}/helo", {"helo": " Mail1.Example.NET. "})
    assert response.status_code == 302
    assert ips(seed, server_id) == [(ip_id, "192.0.2.10", "mail1.example.net"), second]
    assert version(seed, server_id) == 1
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert "192.0.2.10 now greets as mail1.example.net" in page
    assert "waiting to be sent to the agent (it holds version 0)" in page
    # the same name again is no change
    as_alice.post(f"/servers/{server_id}/ips/{ip_id}/helo", {"helo": "mail1.example.net"})
    assert version(seed, server_id) == 1


@pytest.mark.parametrize("helo", ["two words", "evil.example\r\nX: y", "colon:name", "a" * 64 + ".example", "-x.example"])
def test_a_bad_helo_name_is_refused_and_changes_nothing(as_alice, seed, server_id, helo):
    before = ips(seed, server_id)
    ip_id = before[0][0]
    response = as_alice.post(f"/servers/{server_id}/ips/{ip_id}/helo", {"helo": helo})
    assert response.status_code == 400
    assert "is not a host name to greet with (HELO)" in response.get_data(as_text=True)
    assert ips(seed, server_id) == before and version(seed, server_id) == 0


def test_an_empty_helo_name_is_refused(as_alice, seed, server_id):
    ip_id = ips(seed, server_id)[0][0]
    response = as_alice.post(f"/servers/{server_id}/ips/{ip_id}/helo", {"helo": ""})
    assert response.status_code == 400 and "This field is required." in response.get_data(as_text=True)


def test_a_helo_change_without_the_csrf_token_is_refused(as_alice, seed, server_id):
    ip_id = ips(seed, server_id)[0][0]
    response = as_alice.post(f"/servers/{server_id}/ips/{ip_id}/helo", {"helo": "x.example"}, csrf=False)
    assert response.status_code == 400
    assert ips(seed, server_id)[0][2] == "mx1.example.net" and version(seed, server_id) == 0


def test_adding_changing_and_removing_rate_limits(as_alice, seed, server_id):
    url = f"/servers/{server_id}/rate-limits"
    assert as_alice.post(url, {"source_ip": "*", "domain": "Gmail.com", "per_minute": "600"}).status_code == 302
    assert as_alice.post(url, {"source_ip": "192.0.2.11", "domain": "*", "per_minute": "50"}).status_code == 302
    assert rules(seed, server_id) == [("*", "gmail.com", 600), ("192.0.2.11", "*", 50)]
    assert version(seed, server_id) == 2
    # the same pair again changes its rate
    as_alice.post(url, {"source_ip": "*", "domain": "gmail.com", "per_minute": "300"})
    assert rules(seed, server_id) == [("*", "gmail.com", 300), ("192.0.2.11", "*", 50)]
    assert version(seed, server_id) == 3
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert "Rate limit changed: 300 letters a minute from * to gmail.com" in page
    limit_id = seed.query(lambda s: s.scalars(select(ServerRateLimit.id).where(ServerRateLimit.domain == "gmail.com")).one())
    assert as_alice.post(f"/servers/{server_id}/rate-limits/{limit_id}/remove").status_code == 302
    assert rules(seed, server_id) == [("192.0.2.11", "*", 50)]
    assert version(seed, server_id) == 4
    assert as_alice.post(f"/servers/{server_id}/rate-limits/{limit_id}/remove").status_code == 404


@pytest.mark.parametrize(("form", "message"), [
    ({"source_ip": "192.0.2.99", "domain": "*", "per_minute": "5"}, "Not a valid choice"),
    ({"source_ip": "*", "domain": "not a domain", "per_minute": "5"}, "&#39;not a domain&#39; is not a domain name"),
    ({"source_ip": "*", "domain": "a.example", "per_minute": "0"}, "Number must be between 1 and 1000000"),
    ({"source_ip": "*", "domain": "a.example", "per_minute": "fast"}, "Not a valid integer value"),
    ({"source_ip": "*", "domain": "", "per_minute": "5"}, "This field is required."),
])
def test_a_bad_rate_limit_is_refused_and_changes_nothing(as_alice, seed, server_id, form, message):
    response = as_alice.post(f"/servers/{server_id}/rate-limits", form)
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert rules(seed, server_id) == [] and version(seed, server_id) == 0


@pytest.mark.parametrize("path", ["ips/{ip}/helo", "rate-limits", "rate-limits/{limit}/remove"])
def test_another_users_server_is_404_and_unchanged(as_alice, seed, bob, path):
    bob_server = seed.server(bob, "bob's worker")
    ip_id = ips(seed, bob_server)[0][0]
    with seed.app.app_context():
        from panel.extensions import db

        server = db.session.get(Server, bob_server)
        server.rate_limits.append(ServerRateLimit(source_ip="*", domain="x.example", per_minute=5))
        db.session.commit()
        limit_id = server.rate_limits[0].id
    url = f"/servers/{bob_server}/" + path.format(ip=ip_id, limit=limit_id)
    response = as_alice.post(url, {"helo": "hijacked.example", "source_ip": "*", "domain": "*", "per_minute": "1"})
    assert response.status_code == 404
    assert ips(seed, bob_server)[0][2] == "mx1.example.net"
    assert rules(seed, bob_server) == [("*", "x.example", 5)] and version(seed, bob_server) == 0


def test_an_ip_or_limit_of_another_server_is_404(as_alice, seed, alice, server_id):
    other = seed.server(alice, "second", ips=("192.0.2.20",))
    other_ip = ips(seed, other)[0][0]
    assert as_alice.post(f"/servers/{server_id}/ips/{other_ip}/helo", {"helo": "x.example"}).status_code == 404
    assert ips(seed, other)[0][2] == "mx1.example.net"


def test_anonymous_posts_go_to_login(browser, seed, server_id):
    ip_id = ips(seed, server_id)[0][0]
    response = browser.post(f"/servers/{server_id}/ips/{ip_id}/helo", {"helo": "x.example"})
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert version(seed, server_id) == 0


def test_the_agent_config_carries_the_version_helo_names_and_rules(as_alice, app, seed, server_id):
    as_alice.post(f"/servers/{server_id}/rate-limits", {"source_ip": "192.0.2.10", "domain": "yahoo.com",
                                                          "per_minute": "120"})
    with app.app_context():
        from panel.extensions import db

        body = agent_config(db.session.get(Server, server_id))
        assert body == {
            "version": 1,
            "rate_limits": [{"source_ip": "192.0.2.10", "domain": "yahoo.com", "per_minute": 120}],
            "helo": {"192.0.2.10": "mx1.example.net", "192.0.2.11": "mx2.example.net"},
            # no edits in the panel: the built-in provider table and default limits per provider
            "providers": {name: list(suffixes) for name, suffixes in BUILTIN_PROVIDERS.items()},
            "provider_limits": [{k: v for k, v in rule.to_json().items() if v is not None}
                                for rule in DEFAULT_LIMITS.values()],
        }
    # what the agent takes as it is, and reads back as the defaults
    pushed = remote_config.parse(json.loads(json.dumps(body)), ("192.0.2.10", "192.0.2.11"))
    assert remote_config.provider_limits(pushed) == default_limits()
    assert remote_config.provider_table(pushed).to_json() == ProviderTable().to_json()


def test_config_events_show_on_the_page(as_alice, app, seed, server_id):
    with app.app_context():
        from panel.extensions import db

        db.session.add(ServerEvent(server_id=server_id, kind="config",
                                   message="configuration version 3 applied: 1 rate limits, 2 HELO names"))
        db.session.commit()
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert "configuration version 3 applied" in page


# -- the JSON API: GET/PUT /api/v1/servers/<id>/config --------------------------------------

@pytest.fixture
def api_put(client, seed, alice):
    headers = {"Authorization": f"Bearer {seed.token(alice)}"}

    def put(server_id, body, method="PUT"):
        return client.open(f"/api/v1/servers/{server_id}/config", method=method, headers=headers, json=body)

    return put


def test_api_reads_and_replaces_the_settings(api_put, seed, server_id):
    assert api_put(server_id, None, method="GET").get_json() == {
        "config_version": 0, "config_applied": 0, "rate_limits": [],
        "helo": {"192.0.2.10": "mx1.example.net", "192.0.2.11": "mx2.example.net"},
        "ips": {"192.0.2.10": {"weight": 1, "active": True}, "192.0.2.11": {"weight": 1, "active": True}},
        # the provider table and limits (tests/panel/test_provider_limits.py): the built-in ones
        "providers": {name: list(suffixes) for name, suffixes in BUILTIN_PROVIDERS.items()}, "providers_built_in": True,
        "provider_limits": [], "default_provider_limits": [rule.to_json() for rule in DEFAULT_LIMITS.values()]}
    body = {"helo": {"192.0.2.11": "Out2.Example.net"},
            "rate_limits": [{"domain": "gmail.com", "per_minute": 600},
                            {"source_ip": "192.0.2.10", "domain": "*", "per_minute": 60}]}
    reply = api_put(server_id, body)
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["config_version"] == 1
    assert reply.get_json()["helo"] == {"192.0.2.10": "mx1.example.net", "192.0.2.11": "out2.example.net"}
    assert rules(seed, server_id) == [("*", "gmail.com", 600), ("192.0.2.10", "*", 60)]
    assert api_put(server_id, body).get_json()["config_version"] == 1  # the same again: no change
    # rules left out are removed; helo left out keeps the names
    assert api_put(server_id, {"rate_limits": []}).get_json()["config_version"] == 2
    assert rules(seed, server_id) == [] and ips(seed, server_id)[1][2] == "out2.example.net"


@pytest.mark.parametrize(("body", "message"), [
    ({"helo": {"192.0.2.99": "a.example"}}, "helo: 192.0.2.99 is not a source IP of this server"),
    ({"helo": {"192.0.2.10": "bad name"}}, "is not a host name to greet with (HELO)"),
    ({"helo": ["x"]}, "helo must be an object"),
    ({"rate_limits": [{"domain": "a.example", "per_minute": 0}]}, "rate_limits[0]: letters per minute must be"),
    ({"rate_limits": [{"domain": "a.example", "per_minute": 1}, {"domain": "A.example", "per_minute": 2}]},
     "rate_limits[1]: source IP * and domain a.example are given twice"),
    ({"rate_limits": [{"domain": "a.example"}]}, "rate_limits[0] must be"),
    ({"rate_limits": [{"source_ip": "10.1.1.1", "per_minute": 5}]}, "rate_limits[0]: 10.1.1.1 is not a source IP"),
    ({"colour": "red"}, "unknown field(s): colour"),
])
def test_api_refuses_bad_settings_whole(api_put, seed, server_id, body, message):
    api_put(server_id, {"rate_limits": [{"domain": "keep.example", "per_minute": 9}]})
    response = api_put(server_id, {"helo": {"192.0.2.11": "changed.example"}, **body})
    assert response.status_code == 400 and message in response.get_json()["error"], response.get_json()
    assert rules(seed, server_id) == [("*", "keep.example", 9)]
    assert ips(seed, server_id)[1][2] == "mx2.example.net" and version(seed, server_id) == 1


def test_api_another_users_server_is_404(api_put, seed, bob):
    bob_server = seed.server(bob, "bob's worker")
    assert api_put(bob_server, None, method="GET").status_code == 404
    assert api_put(bob_server, {"rate_limits": [{"per_minute": 1}]}).status_code == 404
    assert rules(seed, bob_server) == [] and version(seed, bob_server) == 0
