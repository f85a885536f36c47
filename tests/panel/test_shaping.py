"""The agents' automatic backoff on the panel (issue 9, point 5): a real agent's ping carries the
states its sender wrote (worker_agent/backoff.py, on a virtual clock here); the daemon keeps
them, the server page and the API show them, and each change of a pair's state is one event."""

from __future__ import annotations

from contextlib import closing

import pytest
from sqlalchemy import select

from panel.daemon.loop import DaemonState
from panel.models import ServerEvent
from tests.panel.agents import Agent, daemon_round
from tests.panel.test_outcome_epoch import register
from worker_agent.backoff import Backoff
from worker_agent.queue import QueueDB

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

GMAIL_421 = "421 4.7.28 [127.0.0.2] Our system has detected an unusual rate of mail. rate limited"


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8"}  # the agent listens on loopback


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def write_states(agent: Agent, backoff: Backoff) -> None:
    """What the sender does each second (Sender._write_shaping)."""
    with closing(QueueDB(agent.root / "data" / "queue.sqlite3")) as queue, queue.write() as conn:
        queue.set_state(conn, "shaping", backoff.states())


def shaping_events(seed, server_id: int) -> list[str]:
    return seed.query(lambda s: list(s.scalars(select(ServerEvent.message).where(
        ServerEvent.server_id == server_id, ServerEvent.kind == "shaping").order_by(ServerEvent.id))))


def test_the_states_an_agent_reports_show_and_each_change_is_one_event(app, seed, alice, agent, as_alice, client):
    server_id = register(app, alice, agent.port, agent.key, agent.fingerprint)
    clock = Clock()
    backoff = Backoff(cooling=60.0, step=0.5, step_every=60.0, clock=clock)
    backoff.observe("127.0.0.2", "google", "deferred", 421, GMAIL_421)
    write_states(agent, backoff)
    daemon_round(app, DaemonState())
    daemon_round(app, DaemonState())  # the same report again: no second event
    (said,) = shaping_events(seed, server_id)
    assert "127.0.0.2 to google: suspended, 50 % of its limit" in said and "4.7.28" in said

    headers = {"Authorization": f"Bearer {seed.token(alice)}"}
    (pair,) = client.get(f"/api/v1/servers/{server_id}", headers=headers).get_json()["shaping"]
    assert (pair["source_ip"], pair["provider"], pair["state"], pair["factor"]) == ("127.0.0.2", "google",
                                                                                     "suspended", 0.5)
    assert pair["why"] == GMAIL_421 and pair["since"] == Clock.now
    page = as_alice.get(f"/servers/{server_id}").get_data(as_text=True)
    assert 'id="shaping"' in page and "google" in page and "suspended" in page and "50 %" in page

    clock.now += 60.0  # cooled: backing off
    write_states(agent, backoff)
    daemon_round(app, DaemonState())
    clock.now += 60.0
    backoff.observe("127.0.0.2", "google", "delivered", 250, "250 ok")  # a minute of deliveries: back to normal
    write_states(agent, backoff)
    daemon_round(app, DaemonState())
    daemon_round(app, DaemonState())
    events = shaping_events(seed, server_id)
    assert len(events) == 3 and "backing off" in events[1] and "normal, 100 %" in events[2]
    (pair,) = client.get(f"/api/v1/servers/{server_id}", headers=headers).get_json()["shaping"]
    assert (pair["state"], pair["factor"]) == ("normal", 1.0)


def test_a_bad_report_is_left_out_and_breaks_nothing(app, seed, alice, agent, client):
    server_id = register(app, alice, agent.port, agent.key, agent.fingerprint)
    with closing(QueueDB(agent.root / "data" / "queue.sqlite3")) as queue, queue.write() as conn:
        queue.set_state(conn, "shaping", [{"source_ip": "127.0.0.2", "provider": "google", "state": "asleep",
                                           "factor": 0.5}, "x", {"source_ip": "127.0.0.2", "provider": "yahoo",
                                                                 "state": "suspended", "factor": float("1e400")},
                                          {"source_ip": "127.0.0.3", "provider": "yahoo", "state": "suspended",
                                           "factor": 0.25, "why": "421 TSS04", "since": 1, "until": 61}])
    daemon_round(app, DaemonState())
    headers = {"Authorization": f"Bearer {seed.token(alice)}"}
    body = client.get(f"/api/v1/servers/{server_id}", headers=headers).get_json()
    assert body["status"] == "online"
    assert [(p["source_ip"], p["provider"]) for p in body["shaping"]] == [("127.0.0.3", "yahoo")]
    assert len(shaping_events(seed, server_id)) == 1
