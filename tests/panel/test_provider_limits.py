"""Limits per (source IP, mailbox provider) and the provider table, set per server on its page and
through the API: checked, stored, shown with the built-in defaults, pushed to the agent."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from panel.models import Server, ServerProviderLimit
from panel.services.server_config import agent_config
from worker_agent import remote_config
from worker_agent.providers import BUILTIN_PROVIDERS, DEFAULT_LIMITS

IPS = ("192.0.2.10", "192.0.2.11")


@pytest.fixture
def server_id(seed, alice):
    return seed.server(alice, "Frankfurt 1", ips=IPS)


def limits(seed, server_id):
    return seed.query(lambda s: sorted(
        (r.source_ip, r.provider, r.per_minute, r.per_hour, r.connections, r.per_connection) for r in s.scalars(
            select(ServerProviderLimit).where(ServerProviderLimit.server_id == server_id))))


def version(seed, server_id):
    return seed.get(Server, server_id).config_version


def pushed(app, server_id):
    """The agent config's provider part, checked by the agent's own parser."""
    with app.app_context():
        from panel.extensions import db

        body = json.loads(json.dumps(agent_config(db.session.get(Server, server_id))))
    config = remote_config.parse(body, IPS)
    return body, config


def form(**fields):
    data = {"source_ip": "*", "provider": "", "per_minute": "", "per_hour": "", "connections": "", "per_connection": ""}
    data.update({k: str(v) for k, v in fields.items()})
    return data


def test_the_page_shows_the_default_limits_and_the_built_in_table(as_alice, server_id):
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert 'id="provider-limits"' in page
    assert "<code>google</code>" in page and ">10000<" in page and "built-in default" in page
    assert "google: google.com, googlemail.com" in page  # the table, editable
    assert 'id="provider-limit-form"' in page


def test_a_limit_set_on_the_page_replaces_the_default_and_is_pushed(as_alice, app, seed, server_id):
    url = f"/servers/{server_id}/provider-limits"
    response = as_alice.post(url, form(provider="Google", per_minute=100, connections=2, per_connection=10))
    assert response.status_code == 302, response.get_data(as_text=True)
    assert limits(seed, server_id) == [("*", "google", 100, None, 2, 10)]
    assert version(seed, server_id) == 1
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert "Provider limit added: from * to google" in page
    body, config = pushed(app, server_id)
    google = [r for r in body["provider_limits"] if r["provider"] == "google"]
    assert google == [{"source_ip": "*", "provider": "google", "per_minute": 100, "connections": 2, "per_connection": 10}]
    others = {r["provider"] for r in body["provider_limits"]}
    assert others == set(DEFAULT_LIMITS)  # the other providers keep their defaults
    assert next(r for r in config.provider_limits if r.provider == "google").connections == 2
    # one for one IP is added beside it; the same pair again changes it
    as_alice.post(url, form(source_ip="192.0.2.11", provider="yahoo", per_hour=500))
    as_alice.post(url, form(provider="google", per_minute=50))
    assert limits(seed, server_id) == [("*", "google", 50, None, None, None), ("192.0.2.11", "yahoo", None, 500, None, None)]
    assert version(seed, server_id) == 3
    # removing it brings the default back
    limit_id = seed.query(lambda s: s.scalars(select(ServerProviderLimit.id).where(
        ServerProviderLimit.provider == "google")).one())
    assert as_alice.post(f"/servers/{server_id}/provider-limits/{limit_id}/remove").status_code == 302
    body, _ = pushed(app, server_id)
    assert [r for r in body["provider_limits"] if r["provider"] == "google"] == [
        {k: v for k, v in DEFAULT_LIMITS["google"].to_json().items() if v is not None}]
    assert as_alice.post(f"/servers/{server_id}/provider-limits/{limit_id}/remove").status_code == 404


@pytest.mark.parametrize(("fields", "message"), [
    ({"provider": "gogle", "per_minute": 5}, "&#39;gogle&#39; is not a provider of this server&#39;s table"),
    ({"provider": "google"}, "give at least one limit"),
    ({"provider": "google", "connections": 0}, "Number must be between 1 and 1000"),
    ({"provider": "google", "per_hour": 60_000_001}, "Number must be between 1 and 60000000"),
    ({"provider": "google", "per_connection": "many"}, "Not a valid integer value"),
    ({"source_ip": "192.0.2.99", "provider": "google", "per_minute": 5}, "Not a valid choice"),
    ({"provider": "", "per_minute": 5}, "This field is required."),
])
def test_a_bad_provider_limit_is_refused_and_changes_nothing(as_alice, seed, server_id, fields, message):
    response = as_alice.post(f"/servers/{server_id}/provider-limits", form(**fields))
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert limits(seed, server_id) == [] and version(seed, server_id) == 0


def test_a_domain_outside_the_table_is_its_own_provider(as_alice, app, seed, server_id):
    assert as_alice.post(f"/servers/{server_id}/provider-limits",
                         form(provider="Shop.Example", connections=1)).status_code == 302
    body, _ = pushed(app, server_id)
    assert {"source_ip": "*", "provider": "shop.example", "connections": 1} in body["provider_limits"]


def test_the_provider_table_is_edited_per_server_and_can_be_reset(as_alice, app, seed, server_id):
    url = f"/servers/{server_id}/providers"
    table = "google: google.com, googlemail.com\nacme: mx.acme.example\n"
    assert as_alice.post(url, {"table": table}).status_code == 302
    assert version(seed, server_id) == 1
    body, config = pushed(app, server_id)
    assert body["providers"] == {"google": ["google.com", "googlemail.com"], "acme": ["mx.acme.example"]}
    # the defaults of providers no longer in the table are not pushed (the agent would refuse them)
    assert {r["provider"] for r in body["provider_limits"]} == {"google"}
    assert as_alice.post(f"/servers/{server_id}/provider-limits", form(provider="acme", per_minute=30)).status_code == 302
    # a provider that a limit names cannot leave the table
    response = as_alice.post(url, {"table": "google: google.com\n"})
    assert response.status_code == 400
    assert "acme is limited on this server: remove its limit first" in response.get_data(as_text=True)
    # nor can a bad table get in
    response = as_alice.post(url, {"table": "google: google.com\nbing: google.com\n"})
    assert response.status_code == 400 and "google.com is listed for both google and bing" in response.get_data(as_text=True)
    response = as_alice.post(url, {"table": "google google.com\n"})
    assert response.status_code == 400 and "line 1" in response.get_data(as_text=True)
    assert version(seed, server_id) == 2
    limit_id = seed.query(lambda s: s.scalars(select(ServerProviderLimit.id)).one())
    as_alice.post(f"/servers/{server_id}/provider-limits/{limit_id}/remove")
    assert as_alice.post(f"/servers/{server_id}/providers/reset").status_code == 302
    body, _ = pushed(app, server_id)
    assert body["providers"] == {name: list(s) for name, s in BUILTIN_PROVIDERS.items()}


# -- the JSON API ------------------------------------------------------------------------------

@pytest.fixture
def api(client, seed, alice):
    headers = {"Authorization": f"Bearer {seed.token(alice)}"}

    def call(server_id, body=None, method="PUT"):
        return client.open(f"/api/v1/servers/{server_id}/config", method=method, headers=headers, json=body)

    return call


def test_api_reads_and_replaces_provider_settings(api, app, seed, server_id):
    got = api(server_id, method="GET").get_json()
    assert got["provider_limits"] == [] and got["providers_built_in"] is True
    assert got["providers"] == {name: list(s) for name, s in BUILTIN_PROVIDERS.items()}
    assert {"source_ip": "*", "provider": "google", "per_minute": 300, "per_hour": 10000, "connections": 5,
            "per_connection": 50} in got["default_provider_limits"]
    body = {"providers": {"google": ["google.com"], "acme": ["mx.acme.example"]},
            "provider_limits": [{"provider": "acme", "connections": 3},
                                {"source_ip": "192.0.2.10", "provider": "google", "per_minute": 60}]}
    reply = api(server_id, body)
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["providers_built_in"] is False
    assert limits(seed, server_id) == [("*", "acme", None, None, 3, None), ("192.0.2.10", "google", 60, None, None, None)]
    assert api(server_id, body).get_json()["config_version"] == 1  # the same again: no change
    assert api(server_id, {"rate_limits": []}).get_json()["config_version"] == 1  # left out: kept
    reply = api(server_id, {"providers": None, "provider_limits": []})
    assert reply.get_json()["providers_built_in"] is True and limits(seed, server_id) == []


@pytest.mark.parametrize(("body", "message"), [
    ({"provider_limits": [{"provider": "nosuch", "per_minute": 1}]}, "provider_limits[0]: 'nosuch' is not a provider"),
    ({"provider_limits": [{"provider": "google", "connections": 1001}]},
     "provider_limits[0]: connections must be a whole number from 1 to 1000"),
    ({"provider_limits": [{"provider": "google", "per_minute": 1.5}]}, "provider_limits[0]: per_minute must be"),
    ({"provider_limits": [{"provider": "google"}]}, "provider_limits[0]: give at least one limit"),
    ({"provider_limits": [{"provider": "google", "per_minute": 1}, {"provider": "Google", "per_hour": 2}]},
     "provider_limits[1]: source IP * and provider google are given twice"),
    ({"provider_limits": [{"provider": "google", "speed": 1}]}, "provider_limits[0]: unknown field(s) speed"),
    ({"provider_limits": {"google": 1}}, "provider_limits must be a list"),
    ({"providers": {"Bad Name": ["x.example"]}}, "is not a provider name"),
    ({"providers": {"acme": ["x.example"]}, "provider_limits": [{"provider": "google", "per_minute": 1}]},
     "provider_limits[0]: 'google' is not a provider"),
])
def test_api_refuses_bad_provider_settings_whole(api, seed, server_id, body, message):
    api(server_id, {"provider_limits": [{"provider": "yahoo", "per_minute": 9}]})
    response = api(server_id, {"rate_limits": [], **body})
    assert response.status_code == 400 and message in response.get_json()["error"], response.get_json()
    assert limits(seed, server_id) == [("*", "yahoo", 9, None, None, None)] and version(seed, server_id) == 1
