"""Where the daemon connects to an agent (issue 12 point 4): a server registered without provisioning
names any host and port, and the daemon calls it every round, so registering checks the address
(network_policy) and stores nothing when it is refused, and the daemon checks it again when it makes
the server's client: a refused host is never contacted and is reported once, not every round."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from panel.daemon.loop import DaemonState
from panel.extensions import db
from panel.models import Server, ServerEvent, ServerIP, User
from panel.services.agent_keys import seal_agent_key
from panel.services.servers import ServerError, SourceIP, register_server
from tests.panel.agents import daemon_round
from tests.panel.test_network_policy import Listener, _own_address

REFUSED = [("127.0.0.1", "loopback"), ("169.254.1.1", "link-local"), ("localhost", "loopback")]


@pytest.fixture
def listener() -> Iterator[Listener]:
    item = Listener()
    yield item
    item.sock.close()


def _register(app, alice: int, host: str, port: int = 5432) -> Server:
    with app.app_context():
        return register_server(db.session.get(User, alice), name="w", host=host, port=port,
                               agent_key=Fernet.generate_key().decode(), fingerprint="ab" * 32,
                               ips=[SourceIP("192.0.2.9")])


@pytest.mark.parametrize("host,why", REFUSED)
def test_registering_an_agent_on_an_internal_address_is_refused(app, alice, seed, host, why) -> None:
    with pytest.raises(ServerError, match=f"is a {why} address.*does not probe.*ALLOWED_HOST_NETWORKS"):
        _register(app, alice, host)
    assert seed.query(lambda s: s.query(Server).count()) == 0


def test_registering_an_agent_in_the_panels_own_network_is_refused(app, alice, seed) -> None:
    own = _own_address()
    with pytest.raises(ServerError, match="panel's own"):
        _register(app, alice, own)
    assert seed.query(lambda s: s.query(Server).count()) == 0


@pytest.mark.parametrize("host,why", REFUSED)
def test_the_cli_refuses_an_internal_agent_address(runner, seed, alice, tmp_path: Path, host, why) -> None:
    key_file = tmp_path / "agent.key"
    key_file.write_bytes(Fernet.generate_key())
    result = runner.invoke(args=["servers", "add", "--user", "alice@example.com", "--name", "w", "--host", host,
                                 "--port", "5432", "--key-file", str(key_file), "--fingerprint", "ab" * 32,
                                 "--ip", "192.0.2.1"])
    assert result.exit_code != 0
    assert f"is a {why} address" in result.stderr and "ALLOWED_HOST_NETWORKS" in result.stderr
    assert "Traceback" not in result.output
    assert seed.query(lambda s: s.query(Server).count()) == 0


def test_the_admin_allows_loopback_agents(app, alice) -> None:
    app.config["ALLOWED_HOST_NETWORKS"] = "127.0.0.0/8"
    assert _register(app, alice, "127.0.0.1").api_port == 5432


def test_the_daemon_never_contacts_a_stored_agent_on_a_refused_address(app, alice, seed, listener) -> None:
    """A row stored before the rule (or before the admin narrowed ALLOWED_HOST_NETWORKS): no
    connection in any round, one event and last_error saying why, not one a round."""
    with app.app_context():
        server = Server(user_id=alice, name="old", host="127.0.0.1", api_port=listener.port, status="online",
                        agent_key=seal_agent_key(Fernet.generate_key().decode()), cert_fingerprint="ab" * 32,
                        outcome_ack=0)
        server.ips = [ServerIP(ip="192.0.2.9", helo="w.example.net", weight=1, active=True)]
        db.session.add(server)
        db.session.commit()
        server_id = server.id
    state = DaemonState()
    for _ in range(3):
        daemon_round(app, state)
    assert not listener.connected()
    stored = seed.get(Server, server_id)
    assert stored.last_error.startswith("not contacted: 127.0.0.1 is a loopback address")
    events = seed.query(lambda s: [(e.kind, e.message) for e in s.scalars(
        select(ServerEvent).where(ServerEvent.server_id == server_id))])
    assert len(events) == 1 and "127.0.0.1 is a loopback address" in events[0][1]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_with_loopback_allowed_the_daemon_talks_to_the_agent(app, alice, seed, agents, host) -> None:
    """A name is resolved and checked, then the daemon connects to the checked address; the pinned
    certificate is still what is trusted."""
    app.config["ALLOWED_HOST_NETWORKS"] = "127.0.0.0/8,::1/128"
    server_id = agents.start("honest").register(app, alice, "honest")
    with app.app_context():
        db.session.get(Server, server_id).host = host
        db.session.commit()
    daemon_round(app)
    server = seed.get(Server, server_id)
    assert (server.status, server.last_error) == ("online", None)
