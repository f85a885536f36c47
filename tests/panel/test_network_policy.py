"""Where the panel connects for a tenant (issue 12 point 4): SSH hosts and DNS servers in loopback,
link-local or the panel's own networks, and DNS servers off port 53, are refused before any
connection unless the admin allows their network (ALLOWED_HOST_NETWORKS); refused input stores nothing."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from flask import Flask

from panel.extensions import db
from panel.models import Domain, ProvisionJob, Server, User
from panel.services import domains as domain_service
from panel.services import network_policy
from panel.services.provisioning import add_server, parse_ip_lines, scan_host_key
from panel.services.servers import ServerError

TSIG_SECRET = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0MTI="
INTERNAL = ["127.0.0.1", "169.254.169.254", "::1", "0.0.0.0", "224.0.0.1", "localhost"]


def _own_address() -> str:
    """A non-loopback address of one of this machine's interfaces (the panel's own network)."""
    for network in network_policy.own_networks():
        if not network.network_address.is_loopback and not network.network_address.is_link_local:
            return str(next(iter(network.hosts()), network.network_address))
    pytest.skip("this machine has no non-loopback interface address")


def _domain_body(host: str, port: int) -> dict[str, Any]:
    return {"name": "example.test", "dns_host": host, "dns_port": port, "tsig_key_name": "mailfleet",
            "tsig_algorithm": "hmac-sha256", "tsig_secret": TSIG_SECRET, "dkim_selector": "mf1"}


class Listener:
    """A TCP port on loopback that records whether anyone connected."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(5)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]

    def connected(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return False
        conn.close()
        return True


@pytest.fixture
def listener():
    item = Listener()
    yield item
    item.sock.close()


def test_the_api_refuses_a_dns_server_on_a_loopback_database_port(alice, seed, client, listener) -> None:
    response = client.post("/api/v1/domains", json=_domain_body("127.0.0.1", 5432),
                           headers={"Authorization": f"Bearer {seed.token(alice)}"})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert "127.0.0.1" in error and "does not probe" in error and "ask the admin" in error
    assert seed.query(lambda s: s.query(Domain).count()) == 0
    # Nothing was sent there either (a listener on loopback: no connection).
    refused = client.post("/api/v1/domains", json=_domain_body("127.0.0.1", listener.port),
                          headers={"Authorization": f"Bearer {seed.token(alice)}"})
    assert refused.status_code == 400 and not listener.connected()
    assert seed.query(lambda s: s.query(Domain).count()) == 0


@pytest.mark.parametrize("host", INTERNAL)
def test_internal_dns_servers_are_refused(app: Flask, alice, host) -> None:
    with app.app_context(), pytest.raises(domain_service.DomainError, match="does not probe"):
        domain_service.add_domain(db.session.get(User, alice), domain_service.DomainInput(
            name="example.test", dns_host=host, tsig_name="k", tsig_secret=TSIG_SECRET))


def test_a_dns_server_off_port_53_is_refused_and_on_53_taken(app: Flask, alice) -> None:
    with app.app_context():
        with pytest.raises(domain_service.DomainError, match="port 53"):
            domain_service._check_input(db.session.get(User, alice), domain_service.DomainInput(
                name="example.test", dns_host="203.0.113.53", dns_port=5432, tsig_name="k", tsig_secret=TSIG_SECRET))
        values = domain_service._check_input(db.session.get(User, alice), domain_service.DomainInput(
            name="example.test", dns_host="203.0.113.53", dns_port=53, tsig_name="k", tsig_secret=TSIG_SECRET))
        assert values["dns_host"] == "203.0.113.53"


@pytest.mark.parametrize("host", INTERNAL + ["169.254.1.1"])
def test_internal_ssh_hosts_are_refused_and_nothing_is_stored(app: Flask, alice, host) -> None:
    with app.app_context():
        with pytest.raises(ServerError, match="does not probe"):
            add_server(db.session.get(User, alice), name="w", host=host, ssh_port=22, ips=parse_ip_lines("192.0.2.9"))
        db.session.rollback()
        assert db.session.query(Server).count() == 0 and db.session.query(ProvisionJob).count() == 0


def test_a_host_in_the_panels_own_network_is_refused(app: Flask, alice) -> None:
    own = _own_address()
    with app.app_context(), pytest.raises(ServerError, match="panel's own"):
        add_server(db.session.get(User, alice), name="w", host=own, ssh_port=22, ips=parse_ip_lines("192.0.2.9"))


def test_ssh_keyscan_is_not_run_against_a_refused_host(app: Flask, listener) -> None:
    """The daemon's scan (first contact, retries) checks again: a row stored before the rule, or a
    name that now resolves elsewhere, gets no connection."""
    with app.app_context(), pytest.raises(ServerError, match="does not probe"):
        scan_host_key("127.0.0.1", listener.port, timeout=2)
    assert not listener.connected()


def test_the_admin_allows_a_network(app: Flask, alice, listener) -> None:
    app.config["ALLOWED_HOST_NETWORKS"] = "127.0.0.0/8, 169.254.0.0/16"
    with app.app_context():
        server, _ = add_server(db.session.get(User, alice), name="w", host="127.0.0.1", ssh_port=2222,
                               ips=parse_ip_lines("192.0.2.9"))
        assert server.host == "127.0.0.1"
        values = domain_service._check_input(db.session.get(User, alice), domain_service.DomainInput(
            name="example.test", dns_host="127.0.0.1", dns_port=5353, tsig_name="k", tsig_secret=TSIG_SECRET))
        assert (values["dns_host"], values["dns_port"]) == ("127.0.0.1", 5353)
        # Still refused: what the list does not hold.
        with pytest.raises(ServerError, match="does not probe"):
            add_server(db.session.get(User, alice), name="w", host="::1", ssh_port=22, ips=parse_ip_lines("192.0.2.9"))
        # The scan answers what failed, never what the port said.
        with pytest.raises(ServerError) as caught:
            scan_host_key("127.0.0.1", listener.port, timeout=2)
        assert str(caught.value).startswith(f"no SSH server answered on 127.0.0.1 port {listener.port}")


def test_a_name_is_checked_by_every_address_it_resolves_to() -> None:
    assert network_policy.check("203.0.113.7", 22, allowed="") == "203.0.113.7"
    with pytest.raises(network_policy.HostRefused, match="localhost .*loopback"):
        network_policy.check("localhost", 22, allowed="")
    assert ipaddress.ip_address(network_policy.check("localhost", 22, allowed="127.0.0.0/8, ::1/128")).is_loopback
    with pytest.raises(network_policy.HostRefused, match="does not resolve"):
        network_policy.check("no-such-host.invalid", 22, allowed="")
    with pytest.raises(ValueError, match="not a network"):
        network_policy.check("203.0.113.7", 22, allowed="nonsense")


def test_publishing_a_stored_domain_checks_again_and_connects_nowhere(app: Flask, alice, listener) -> None:
    """The daemon's retries (publish_stale) and the Domains page's checks ask the rule too: a domain
    stored before it, now on a refused address, fails with the reason and no connection is made."""
    with app.app_context():
        domain = Domain(user_id=alice, name="example.test", kind="sending", zone="example.test",
                        dns_host="127.0.0.1", dns_port=listener.port, tsig_name="k", tsig_algorithm="hmac-sha256",
                        tsig_secret=domain_service.secret_box.seal(TSIG_SECRET), dkim_selector="mf1",
                        dmarc_policy="none", dmarc_rua="alice@example.com")
        db.session.add(domain)
        db.session.flush()
        assert domain_service.publish(domain) is False
        assert domain.dns_state == "failed" and "does not probe" in domain.dns_error
        checks = domain_service.check_records(domain)
        assert checks and all(c.state == "unknown" and "does not probe" in c.detail for c in checks)
        db.session.rollback()
    assert not listener.connected()
