"""Each source IP's weight and whether it is active, set by the user on the server page and through
the JSON API, and used by the daemon when a server takes letters (issue 9: "IP weights exist but
nothing lets a user change them").

Weight and active are the panel's business (which IP a letter is given to), not the agent's: a
change bumps no config version, and the worker's Exim, agent and DNS records keep every IP, so
letters already handed to an IP made inactive still go out from it, and it can be made active again
at once.
"""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from panel.daemon.loop import DaemonState, run_round
from panel.extensions import db
from panel.models import Campaign, Delivery, Server, ServerIP, User
from panel.services.sending import start_campaign
from panel.services.servers import SourceIP, register_server


def ips(seed, server_id):
    """(ip, weight, active) of each source IP, in id order."""
    return seed.query(lambda s: [(i.ip, i.weight, i.active) for i in s.scalars(
        select(ServerIP).where(ServerIP.server_id == server_id).order_by(ServerIP.id))])


def ip_ids(seed, server_id):
    return seed.query(lambda s: s.scalars(select(ServerIP.id).where(ServerIP.server_id == server_id)
                                          .order_by(ServerIP.id)).all())


def version(seed, server_id):
    return seed.get(Server, server_id).config_version


@pytest.fixture
def server_id(seed, alice):
    return seed.server(alice, "Frankfurt 1", ips=("192.0.2.10", "192.0.2.11"))


def post_ip(as_alice, server_id, ip_id, weight, active=True):
    form = {"weight": str(weight)}
    if active:
        form["active"] = "y"
    return as_alice.post(f"/servers/{server_id}/ips/{ip_id}/weight", form)


# -- the server page --------------------------------------------------------------------------

def test_the_page_has_a_weight_and_active_form_per_ip(as_alice, seed, server_id):
    first, second = ip_ids(seed, server_id)
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    for ip_id, ip in ((first, "192.0.2.10"), (second, "192.0.2.11")):
        assert f'action="/servers/{server_id}/ips/{ip_id}/weight"' in page
        assert f'aria-label="Weight of {ip}"' in page and f'aria-label="{ip} is active"' in page


def test_setting_a_weight_and_making_an_ip_inactive(as_alice, seed, server_id):
    first, second = ip_ids(seed, server_id)
    response = post_ip(as_alice, server_id, first, 3)
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/servers/{server_id}#settings")
    assert ips(seed, server_id) == [("192.0.2.10", 3, True), ("192.0.2.11", 1, True)]
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert "192.0.2.10: weight 1 → 3" in page
    response = post_ip(as_alice, server_id, second, 1, active=False)
    assert response.status_code == 302
    assert ips(seed, server_id) == [("192.0.2.10", 3, True), ("192.0.2.11", 1, False)]
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert "192.0.2.11: made inactive, it gets no new letters" in page
    post_ip(as_alice, server_id, second, 2, active=True)
    assert ips(seed, server_id) == [("192.0.2.10", 3, True), ("192.0.2.11", 2, True)]
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert "192.0.2.11: weight 1 → 2, made active" in page
    # the panel's business only: nothing for the daemon to push to the agent
    assert version(seed, server_id) == 0
    post_ip(as_alice, server_id, second, 2, active=True)
    assert "192.0.2.11: nothing changed" in as_alice.get(f"/servers/{server_id}").get_data(as_text=True)


@pytest.mark.parametrize(("weight", "message"), [
    ("0", "Number must be between 1 and 100"),
    ("101", "Number must be between 1 and 100"),
    ("-3", "Number must be between 1 and 100"),
    ("2.5", "Not a valid integer value"),
    ("heavy", "Not a valid integer value"),
    ("", "This field is required."),
])
def test_a_bad_weight_is_refused_and_changes_nothing(as_alice, seed, server_id, weight, message):
    first = ip_ids(seed, server_id)[0]
    response = as_alice.post(f"/servers/{server_id}/ips/{first}/weight", {"weight": weight})
    assert response.status_code == 400
    assert message in response.get_data(as_text=True)
    assert ips(seed, server_id) == [("192.0.2.10", 1, True), ("192.0.2.11", 1, True)]


def test_the_last_active_ip_cannot_be_made_inactive(as_alice, seed, server_id):
    first, second = ip_ids(seed, server_id)
    post_ip(as_alice, server_id, first, 1, active=False)
    response = post_ip(as_alice, server_id, second, 4, active=False)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert ("192.0.2.11 is the last active IP of this server: a server needs at least one to send from "
            "(make another IP active first)") in page
    assert ips(seed, server_id) == [("192.0.2.10", 1, False), ("192.0.2.11", 1, True)]


def test_a_change_without_the_csrf_token_is_refused(as_alice, seed, server_id):
    first = ip_ids(seed, server_id)[0]
    response = as_alice.post(f"/servers/{server_id}/ips/{first}/weight", {"weight": "7", "active": "y"}, csrf=False)
    assert response.status_code == 400
    assert ips(seed, server_id)[0] == ("192.0.2.10", 1, True)


def test_another_users_server_or_ip_is_404_and_unchanged(as_alice, seed, alice, bob, server_id):
    bob_server = seed.server(bob, "bob's worker", ips=("192.0.2.50", "192.0.2.51"))
    bob_ip = ip_ids(seed, bob_server)[0]
    assert post_ip(as_alice, bob_server, bob_ip, 9, active=False).status_code == 404
    # Bob's IP through Alice's own server's URL
    assert post_ip(as_alice, server_id, bob_ip, 9, active=False).status_code == 404
    assert ips(seed, bob_server) == [("192.0.2.50", 1, True), ("192.0.2.51", 1, True)]


def test_anonymous_posts_go_to_login(browser, seed, server_id):
    first = ip_ids(seed, server_id)[0]
    response = browser.post(f"/servers/{server_id}/ips/{first}/weight", {"weight": "5"})
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert ips(seed, server_id)[0] == ("192.0.2.10", 1, True)


# -- the JSON API ---------------------------------------------------------------------------------

@pytest.fixture
def api(client, seed, alice):
    headers = {"Authorization": f"Bearer {seed.token(alice)}"}

    def call(method, url, body=None):
        return client.open("/api/v1" + url, method=method, headers=headers, json=body)

    return call


def test_api_shows_and_sets_weights_and_active(api, seed, server_id):
    config = api("GET", f"/servers/{server_id}/config").get_json()
    assert config["ips"] == {"192.0.2.10": {"weight": 1, "active": True}, "192.0.2.11": {"weight": 1, "active": True}}
    reply = api("PUT", f"/servers/{server_id}/config",
                {"ips": {"192.0.2.10": {"weight": 3}, "192.0.2.11": {"weight": 100, "active": False}}})
    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json()["ips"] == {"192.0.2.10": {"weight": 3, "active": True},
                                       "192.0.2.11": {"weight": 100, "active": False}}
    assert ips(seed, server_id) == [("192.0.2.10", 3, True), ("192.0.2.11", 100, False)]
    assert reply.get_json()["config_version"] == 0  # not the agent's business
    listing = api("GET", "/servers").get_json()
    assert listing[0]["ips"] == [{"ip": "192.0.2.10", "helo": "mx1.example.net", "weight": 3, "active": True},
                                 {"ip": "192.0.2.11", "helo": "mx2.example.net", "weight": 100, "active": False}]
    # IPs left out keep theirs; other settings in the same PUT still apply
    reply = api("PUT", f"/servers/{server_id}/config",
                {"ips": {"192.0.2.11": {"active": True}}, "helo": {"192.0.2.10": "out1.example.net"}})
    assert reply.status_code == 200, reply.get_json()
    assert ips(seed, server_id) == [("192.0.2.10", 3, True), ("192.0.2.11", 100, True)]
    assert reply.get_json()["config_version"] == 1  # the HELO name is the agent's


@pytest.mark.parametrize(("ips_body", "message"), [
    ({"192.0.2.10": {"weight": 0}}, "ips[192.0.2.10].weight must be a whole number from 1 to 100"),
    ({"192.0.2.10": {"weight": 101}}, "ips[192.0.2.10].weight must be a whole number from 1 to 100"),
    ({"192.0.2.10": {"weight": 2.5}}, "ips[192.0.2.10].weight must be a whole number from 1 to 100"),
    ({"192.0.2.10": {"weight": "3"}}, "ips[192.0.2.10].weight must be a whole number from 1 to 100"),
    ({"192.0.2.10": {"weight": True}}, "ips[192.0.2.10].weight must be a whole number from 1 to 100"),
    ({"192.0.2.10": {"active": "no"}}, "ips[192.0.2.10].active must be true or false"),
    ({"192.0.2.10": {"active": 0}}, "ips[192.0.2.10].active must be true or false"),
    ({"192.0.2.10": {"colour": "red"}}, "ips[192.0.2.10]: unknown field(s) colour (give weight and/or active)"),
    ({"192.0.2.10": 3}, "ips[192.0.2.10] must be an object"),
    ({"192.0.2.99": {"weight": 2}}, "ips: 192.0.2.99 is not a source IP of this server"),
    ({"not an ip": {"weight": 2}}, "ips: 'not an ip' is not an IP address"),
    ({"192.0.2.10": {"active": False}, "192.0.2.11": {"active": False}},
     "at least one source IP must stay active: a server needs one to send from"),
])
def test_api_refuses_bad_ip_settings_whole(api, seed, server_id, ips_body, message):
    api("PUT", f"/servers/{server_id}/config", {"rate_limits": [{"domain": "keep.example", "per_minute": 9}]})
    reply = api("PUT", f"/servers/{server_id}/config",
                {"helo": {"192.0.2.11": "changed.example"}, "rate_limits": [],
                 "ips": {"192.0.2.11": {"weight": 7}, **ips_body}})
    assert reply.status_code == 400, reply.get_json()
    assert message in reply.get_json()["error"], reply.get_json()
    assert ips(seed, server_id) == [("192.0.2.10", 1, True), ("192.0.2.11", 1, True)]
    config = api("GET", f"/servers/{server_id}/config").get_json()
    assert config["config_version"] == 1 and config["helo"]["192.0.2.11"] == "mx2.example.net"
    assert len(config["rate_limits"]) == 1


def test_api_refuses_ips_that_is_not_an_object(api, seed, server_id):
    reply = api("PUT", f"/servers/{server_id}/config", {"ips": [["192.0.2.10", 3]]})
    assert reply.status_code == 400
    assert 'ips must be an object {"<source IP>": {"weight": 1-100, "active": true or false}}' in reply.get_json()["error"]


def test_api_another_users_server_is_404(api, seed, bob):
    bob_server = seed.server(bob, "bob's worker", ips=("192.0.2.50", "192.0.2.51"))
    reply = api("PUT", f"/servers/{bob_server}/config", {"ips": {"192.0.2.50": {"weight": 9, "active": False}}})
    assert reply.status_code == 404
    assert ips(seed, bob_server) == [("192.0.2.50", 1, True), ("192.0.2.51", 1, True)]


# -- what an inactive IP keeps ------------------------------------------------------------------

def test_an_inactive_ip_stays_in_the_workers_exim_and_dns(as_alice, app, seed, alice, server_id):
    """Exim, the agent and the SPF records keep every IP: letters already given to an IP made
    inactive still go out from it, and making it active again needs no re-provisioning."""
    from panel.daemon.provision import _inventory
    from panel.services.domains import user_ips

    second = ip_ids(seed, server_id)[1]
    assert post_ip(as_alice, server_id, second, 1, active=False).status_code == 302
    assert ips(seed, server_id)[1] == ("192.0.2.11", 1, False)
    with app.app_context():
        server = db.session.get(Server, server_id)
        hosts = _inventory(server, "192.0.2.1", None, "ssh-ed25519 AAAA", [], {})["mailfleet_workers"]["hosts"]
        exim = next(iter(hosts.values()))["exim_source_ips"]
        assert [item["ip"] for item in exim] == ["192.0.2.10", "192.0.2.11"]
        assert user_ips(alice) == ["192.0.2.10", "192.0.2.11"]


# -- the daemon uses what the user set -----------------------------------------------------------

@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8", "DISPATCH_WINDOW": 1000, "DISPATCH_BATCH_SIZE": 1000}


def test_the_weights_set_in_the_panel_split_a_campaign(app, seed, alice, agents, as_alice):
    agent = agents.start()
    with app.app_context():
        server = register_server(db.session.get(User, alice), name="two IPs", host="127.0.0.1", port=agent.port,
                                 agent_key=agent.key, fingerprint=agent.fingerprint,
                                 ips=[SourceIP("127.0.0.2", "ip2.worker.test"), SourceIP("127.0.0.3", "ip3.worker.test")])
        db.session.commit()
        server_id = server.id
    first, second = ip_ids(seed, server_id)
    assert post_ip(as_alice, server_id, first, 3).status_code == 302
    assert post_ip(as_alice, server_id, second, 1).status_code == 302
    list_id = seed.list(alice, "readers", [{"email": f"r{n}@example.org", "name": f"R{n}"} for n in range(400)])
    campaign_id = seed.campaign(alice, [list_id])
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        db.session.commit()
        run_round(DaemonState())
    split = seed.query(lambda s: dict(s.execute(
        select(Delivery.source_ip, func.count()).where(Delivery.campaign_id == campaign_id,
                                                       Delivery.server_id == server_id)
        .group_by(Delivery.source_ip)).all()))
    assert split == {"127.0.0.2": 300, "127.0.0.3": 100}

    # made inactive in the panel: the next letters all go out from the other IP
    assert post_ip(as_alice, server_id, first, 3, active=False).status_code == 302
    more = seed.list(alice, "more readers", [{"email": f"m{n}@example.org", "name": f"M{n}"} for n in range(40)])
    later = seed.campaign(alice, [more])
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, later))
        db.session.commit()
        run_round(DaemonState())
    split = seed.query(lambda s: dict(s.execute(
        select(Delivery.source_ip, func.count()).where(Delivery.campaign_id == later).group_by(Delivery.source_ip)).all()))
    assert split == {"127.0.0.3": 40}
