"""The daemon pushes a server's settings to a real agent (gunicorn, TLS, sealed) when the versions differ."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from panel.daemon.loop import DaemonState, run_round
from panel.extensions import db
from panel.models import Server, ServerEvent, ServerIP, User
from panel.services.server_config import RateLimitInput, set_helo, set_rate_limit
from panel.services.servers import SourceIP, register_server
from tests.panel.agents import Agent


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8"}  # the agent listens on loopback


@pytest.fixture
def server_id(app, seed, alice, agent: Agent) -> int:
    with app.app_context():
        server = register_server(
            db.session.get(User, alice), name="local", host="127.0.0.1", port=agent.port, agent_key=agent.key,
            fingerprint=agent.fingerprint, ips=[SourceIP("127.0.0.2", "ip2.worker.test"), SourceIP("127.0.0.3", "ip3.worker.test")])
        db.session.commit()
        return server.id


def round_(app, state: DaemonState) -> None:
    with app.app_context():
        run_round(state)


def events(seed, server_id: int) -> list[tuple[str, str]]:
    return seed.query(lambda s: [(e.kind, e.message) for e in s.scalars(
        select(ServerEvent).where(ServerEvent.server_id == server_id, ServerEvent.kind != "online")
        .order_by(ServerEvent.id))])


def change(app, server_id: int, fn) -> None:
    with app.app_context():
        fn(db.session.get(Server, server_id))
        db.session.commit()


def first_ip(server: Server) -> int:
    return server.ips[0].id


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_a_change_reaches_the_agent_and_a_reinstalled_agent_gets_it_again(app, seed, agent: Agent, server_id: int):
    state = DaemonState()
    round_(app, state)
    assert events(seed, server_id) == []  # nothing set in the panel, nothing pushed
    assert agent.ping()["config_version"] == 0

    change(app, server_id, lambda s: set_helo(s, first_ip(s), "fresh.example.net"))
    change(app, server_id, lambda s: set_rate_limit(s, RateLimitInput("*", "gmail.com", 600)))
    round_(app, state)
    assert agent.ping()["config_version"] == 2
    assert (agent.root / "helo-map").read_text().splitlines()[1:] == [
        '"127.0.0.2": fresh.example.net', '"127.0.0.3": ip3.worker.test']
    assert seed.get(Server, server_id).config_applied == 2
    assert events(seed, server_id) == [("config", "configuration version 2 applied: 1 rate limits, 2 HELO names")]
    round_(app, state)
    assert len(events(seed, server_id)) == 1  # the same version is not pushed again

    # the agent reinstalled: its data is gone, so it holds no config; the next ping shows it
    agent.stop()
    for path in (agent.root / "data").glob("queue.sqlite3*"):
        path.unlink()
    (agent.root / "helo-map").unlink()
    agent.start()
    round_(app, DaemonState())  # a new daemon process: pings first
    assert agent.ping()["config_version"] == 2
    assert "fresh.example.net" in (agent.root / "helo-map").read_text()
    # and its outcome queue is a new one (a new epoch): said once
    assert [kind for kind, _ in events(seed, server_id)] == ["config", "config", "queue_replaced"]


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_a_refused_config_is_recorded_once_and_sending_goes_on(app, seed, agent: Agent, server_id: int):
    # the panel knows an IP the agent's node does not have: the agent refuses the whole config
    def add_ip(server: Server) -> None:
        server.ips.append(ServerIP(ip="127.0.0.9", helo="nine.example.net", weight=1, active=True))
        set_rate_limit(server, RateLimitInput("127.0.0.9", "*", 10))

    change(app, server_id, add_ip)
    state = DaemonState()
    round_(app, state)
    round_(app, state)
    found = events(seed, server_id)
    assert len(found) == 1 and found[0][0] == "error", found
    assert found[0][1].startswith("configuration version 1 was not applied: agent answered HTTP 400: ")
    assert "127.0.0.9 is not a source IP of this node" in found[0][1]
    server = seed.get(Server, server_id)
    assert server.status == "online" and server.config_applied == 0
    assert agent.ping()["config_version"] == 0

    # fixed in the panel: the next round pushes the new version at once
    def drop_ip(server: Server) -> None:
        for rule in list(server.rate_limits):
            server.rate_limits.remove(rule)
        server.ips.remove(next(ip for ip in server.ips if ip.ip == "127.0.0.9"))
        server.config_version += 1

    change(app, server_id, drop_ip)
    round_(app, state)
    assert agent.ping()["config_version"] == 2
    assert events(seed, server_id)[-1] == ("config", "configuration version 2 applied: 0 rate limits, 2 HELO names")
