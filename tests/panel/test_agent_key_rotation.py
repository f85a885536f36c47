"""`flask servers rotate-key`: the daemon hands a real agent (gunicorn, TLS, sealed) a new key in
a message sealed with the current one, then talks with the new key only; no round fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.fernet import Fernet
from sqlalchemy import select

from panel.daemon.loop import DaemonState
from panel.extensions import db
from panel.models import Server, ServerEvent, User
from panel.services.agent_keys import open_agent_key
from panel.services.servers import SourceIP, register_server
from tests.panel.conftest import FERNET_KEY
from tests.panel.agents import Agent
from tests.panel.test_panel_daemon_config import round_
from worker_agent import protocol

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8"}  # the agent listens on loopback


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    running = Agent(tmp_path / "agent")
    config = json.loads(running.config.read_text())
    running.config.write_text(json.dumps({**config, "key_grace": 0}))  # old keys retire at once
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def server_id(app, seed, alice, agent: Agent) -> int:
    with app.app_context():
        server = register_server(db.session.get(User, alice), name="local", host="127.0.0.1", port=agent.port,
                                 agent_key=agent.key, fingerprint=agent.fingerprint,
                                 ips=[SourceIP("127.0.0.2", "ip2.worker.test")])
        db.session.commit()
        return server.id


def ping(agent: Agent, key: str) -> int:
    _, body = protocol.seal(key.encode(), "/v1/ping", {})
    return requests.post(f"https://127.0.0.1:{agent.port}/v1/ping", data=body, verify=False, timeout=5).status_code


def test_rotate_key_replaces_the_agent_key_without_a_failed_round(app, seed, runner, agent: Agent,
                                                                  server_id: int) -> None:
    state = DaemonState()
    round_(app, state)
    old = agent.key
    result = runner.invoke(args=["servers", "rotate-key", str(server_id)])
    assert result.exit_code == 0, result.output
    assert "next round" in result.output
    round_(app, state)  # hands the new key over (sealed with the old one) and switches to it
    with app.app_context():
        server = db.session.get(Server, server_id)
        new = open_agent_key(server)
        assert new != old and Fernet(new.encode()) and server.agent_key_next is None
        assert new not in server.agent_key  # sealed like before
    assert (agent.root / "data" / "agent.key").read_bytes().split()[0] == new.encode()
    round_(app, state)  # the next round talks with the new key: the agent retires the old one
    assert ping(agent, new) == 200 and ping(agent, old) == 403
    round_(app, state)
    kinds = seed.query(lambda s: [(e.kind, e.message) for e in s.scalars(
        select(ServerEvent).where(ServerEvent.server_id == server_id).order_by(ServerEvent.id))])
    assert ("key", "agent key replaced") in kinds
    assert not [k for k in kinds if k[0] in ("offline", "error")], kinds
    assert seed.get(Server, server_id).status == "online"


def test_rotate_key_of_an_unknown_server_says_so(runner) -> None:
    result = runner.invoke(args=["servers", "rotate-key", "4242"])
    assert result.exit_code == 1
    assert "no server 4242" in result.output and "Traceback" not in result.output


def test_the_server_page_asks_for_a_new_key_and_only_its_owner_may(app, seed, alice, bob, as_alice) -> None:
    server_id = seed.server(alice)
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert f"/servers/{server_id}/rotate-key" in page
    answer = as_alice.post(f"/servers/{server_id}/rotate-key", follow_redirects=True)
    assert answer.status_code == 200 and "new agent key" in answer.get_data(as_text=True)
    with app.app_context():
        server = db.session.get(Server, server_id)
        assert server.agent_key_next and open_agent_key(server) == FERNET_KEY  # the old key until handed over
    bobs = seed.server(bob, name="bob's")
    assert as_alice.post(f"/servers/{bobs}/rotate-key").status_code == 404
    assert seed.get(Server, bobs).agent_key_next is None
