"""Outcomes across an agent's reinstall, and the time of each outcome (issue 9).

A real agent (gunicorn, TLS, sealed) gets a campaign's letters from real daemon rounds; what its
sender would record is written into its queue with the agent's own code (QueueDB.finish for
Exim's acceptance, EximLogReader for the lines Exim logs). Reinstalled with a fresh queue, its
seqs start at 1 again under a new epoch: the panel's old ack must not delete them unread."""

from __future__ import annotations

import calendar
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from panel.daemon.loop import DaemonState
from panel.extensions import db
from panel.models import Campaign, Delivery, DeliveryEvent, Server, ServerEvent, User
from panel.services.sending import start_campaign
from panel.services.tokens import delivery_token
from tests.panel.agents import Agent, Agents, daemon_round
from tests.panel.test_outcomes_from_the_right_server import SECRET, dsn
from worker_agent.exim_log import EximLogReader
from worker_agent.queue import QueueDB

pytestmark = pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")

DELIVERED = ('{when} {exim_id} => {email} P=<bounce+{token}@bounces.example.com> R=mailfleet_remote '
             'T=smtp_127_0_0_2 S=278 H=127.0.0.1 [127.0.0.1] I=[127.0.0.2] C="250 2.0.0 OK queued" QT=0s DT=0s')


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8"}  # the agents listen on loopback


def register(app, user_id: int, port: int, key: str, fingerprint: str) -> int:
    from panel.services.servers import SourceIP, register_server

    with app.app_context():
        server = register_server(db.session.get(User, user_id), name="worker", host="127.0.0.1", port=port,
                                 agent_key=key, fingerprint=fingerprint, ips=[SourceIP("127.0.0.2", "ip2.worker.test")])
        db.session.commit()
        return server.id


def started(app, seed, user_id: int, server_id: int, emails: list[str]) -> int:
    list_id = seed.list(user_id, f"list of {emails[0]}", [{"email": e, "name": e[:3]} for e in emails])
    campaign_id = seed.campaign(user_id, [list_id], servers=[server_id])
    with app.app_context():
        start_campaign(db.session.get(User, user_id), db.session.get(Campaign, campaign_id))
        db.session.commit()
    return campaign_id


def letters(seed, campaign_id: int) -> list[tuple[int, str]]:
    return seed.query(lambda s: [tuple(row) for row in s.execute(
        select(Delivery.id, Delivery.status).where(Delivery.campaign_id == campaign_id).order_by(Delivery.id))])


def accepted_by_exim(agent: Agent) -> list[tuple[int, str]]:
    """What the agent's sender records when Exim takes every queued letter: a 'sent' event each.
    Returns (delivery id, Exim id)."""
    with closing(QueueDB(agent.root / "data" / "queue.sqlite3")) as queue:
        claimed = queue.claim(100)
        taken = [(c.id, f"1xX6SA-{c.id:06d}-2N") for c in claimed]
        queue.finish(submitted=[(i, exim_id, 250, f"250 OK id={exim_id}") for i, exim_id in taken])
    return taken


def server_events(seed, server_id: int, kind: str) -> list[str]:
    return seed.query(lambda s: list(s.scalars(
        select(ServerEvent.message).where(ServerEvent.server_id == server_id, ServerEvent.kind == kind))))


def test_a_reinstalled_agent_s_outcomes_are_applied_not_dropped(app, seed, alice, agent: Agent, tmp_path: Path):
    server_id = register(app, alice, agent.port, agent.key, agent.fingerprint)
    first = started(app, seed, alice, server_id, ["ann@example.org", "bea@example.org", "cat@example.org"])
    state = DaemonState()
    daemon_round(app, state)
    assert [status for _, status in letters(seed, first)] == ["queued"] * 3
    accepted_by_exim(agent)
    daemon_round(app, state)
    assert [status for _, status in letters(seed, first)] == ["sent"] * 3
    server = seed.get(Server, server_id)
    old_epoch = agent.ping()["epoch"]
    assert (server.outcome_ack, server.outcome_epoch) == (3, old_epoch)

    # reinstalled: a fresh queue, whose seqs start at 1 again
    agent.stop()
    for path in (agent.root / "data").glob("queue.sqlite3*"):
        path.unlink()
    agent.start()
    new_epoch = agent.ping()["epoch"]
    assert new_epoch != old_epoch
    # Exim's DSN for Ann's letter comes back through the new agent's bounce pipe: seq 1 of its queue
    ann = letters(seed, first)[0][0]
    with closing(QueueDB(agent.root / "data" / "queue.sqlite3")) as queue, queue.write() as conn:
        queue.add_bounce(conn, delivery_token(SECRET, ann), "bounce", dsn("ann@example.org"), "spool-1")
    second = started(app, seed, alice, server_id, ["dan@example.org", "eve@example.org"])
    state = DaemonState()  # a new daemon process too
    daemon_round(app, state)
    assert [status for _, status in letters(seed, second)] == ["queued"] * 2
    assert seed.get(Delivery, ann).bounce == "hard"  # read, not deleted by the old ack of 3
    server = seed.get(Server, server_id)
    assert (server.outcome_ack, server.outcome_epoch) == (1, new_epoch)
    accepted_by_exim(agent)  # seqs 2 and 3, not above the old ack of 3
    daemon_round(app, state)
    assert [status for _, status in letters(seed, second)] == ["sent"] * 2
    server = seed.get(Server, server_id)
    assert (server.outcome_ack, server.outcome_epoch) == (3, new_epoch)
    (said,) = server_events(seed, server_id, "queue_replaced")  # said once
    assert "queue was replaced" in said
    daemon_round(app, state)
    assert len(server_events(seed, server_id, "queue_replaced")) == 1


def test_an_event_keeps_the_time_exim_logged_it(app, seed, alice, agent: Agent, tmp_path: Path):
    server_id = register(app, alice, agent.port, agent.key, agent.fingerprint)
    campaign = started(app, seed, alice, server_id, ["ann@example.org", "bea@example.org"])
    daemon_round(app, DaemonState())
    before = datetime.now(timezone.utc).replace(tzinfo=None)
    (ann, ann_exim), (bea, bea_exim) = accepted_by_exim(agent)
    # Exim delivered Ann's letter an hour ago (as its log says, in a zone of its own), Bea's two hours ago
    logged = {ann: int(time.time()) - 3600, bea: int(time.time()) - 7200}
    tokens = dict(agent_tokens(agent))
    lines = [DELIVERED.format(when=time.strftime("%Y-%m-%d %H:%M:%S +0000", time.gmtime(logged[bea])),
                              exim_id=bea_exim, email="bea@example.org", token=tokens[bea]),
             DELIVERED.format(when=time.strftime("%Y-%m-%d %H:%M:%S +0200", time.gmtime(logged[ann] + 7200)),
                              exim_id=ann_exim, email="ann@example.org", token=tokens[ann])]
    mainlog = tmp_path / "mainlog"
    mainlog.write_text("".join(line + "\n" for line in lines))
    with closing(QueueDB(agent.root / "data" / "queue.sqlite3")) as queue, \
            closing(EximLogReader(queue, mainlog)) as reader:
        reader.poll()
    daemon_round(app, DaemonState())
    after = datetime.now(timezone.utc).replace(tzinfo=None)
    assert [status for _, status in letters(seed, campaign)] == ["delivered", "delivered"]
    history = seed.query(lambda s: [tuple(row) for row in s.execute(
        select(DeliveryEvent.delivery_id, DeliveryEvent.status, DeliveryEvent.created_at).order_by(DeliveryEvent.id))])
    for delivery_id in (ann, bea):
        (at,) = [at for i, status, at in history if (i, status) == (delivery_id, "delivered")]
        assert calendar.timegm(at.timetuple()) == logged[delivery_id], (delivery_id, at)
        (sent_at,) = [at for i, status, at in history if (i, status) == (delivery_id, "sent")]
        assert before.replace(microsecond=0) <= sent_at <= after  # when the sender heard Exim take it


def agent_tokens(agent: Agent) -> list[tuple[int, str]]:
    with closing(QueueDB(agent.root / "data" / "queue.sqlite3")) as queue:
        return queue.conn().execute("SELECT id, token FROM letters ORDER BY id").fetchall()


@pytest.mark.parametrize("at", [2**70, -1, 0, "2026-11-28 00:38:10", True, None, [1], "+inf"])
def test_a_time_out_of_bounds_or_no_number_is_the_panel_s_own(app, seed, alice, agents: Agents, at):
    fake = agents.start()
    server_id = fake.register(app, alice, "fake")
    campaign = started(app, seed, alice, server_id, ["ann@example.org", "bea@example.org"])
    state = DaemonState()
    daemon_round(app, state)
    (ann, _), (bea, _) = letters(seed, campaign)
    future = time.time() + 86400 * 30  # a month ahead: an agent's clock gone wrong
    fake.report(events=[{"seq": 1, "id": ann, "status": "sent", "at": at},
                        {"seq": 2, "id": bea, "status": "sent", "at": future if at is None else at}])
    before = datetime.now(timezone.utc).replace(tzinfo=None)
    daemon_round(app, state)
    after = datetime.now(timezone.utc).replace(tzinfo=None)
    assert [status for _, status in letters(seed, campaign)] == ["sent", "sent"]  # applied all the same
    times = seed.query(lambda s: list(s.scalars(select(DeliveryEvent.created_at).order_by(DeliveryEvent.id))))
    assert len(times) == 2 and all(before <= t <= after for t in times), (before, times, after)


def test_letters_lost_with_a_replaced_queue_go_back_and_reach_the_new_one(app, seed, alice, agent: Agent):
    server_id = register(app, alice, agent.port, agent.key, agent.fingerprint)
    campaign = started(app, seed, alice, server_id, ["ann@example.org", "bea@example.org", "cat@example.org"])
    state = DaemonState()
    daemon_round(app, state)
    daemon_round(app, state)  # the epoch heard once
    assert [status for _, status in letters(seed, campaign)] == ["queued"] * 3
    agent.stop()  # reinstalled before its sender took any of them: they are gone with the old queue
    for path in (agent.root / "data").glob("queue.sqlite3*"):
        path.unlink()
    agent.start()
    daemon_round(app, state)
    assert [status for _, status in letters(seed, campaign)] == ["queued"] * 3  # pushed again, to the new queue
    with closing(QueueDB(agent.root / "data" / "queue.sqlite3")) as queue:
        assert sorted(c.id for c in queue.claim(100)) == [i for i, _ in letters(seed, campaign)]
    (said,) = server_events(seed, server_id, "queue_replaced")
    assert "3 letters the old queue held and had not reported on went back to their campaigns" in said
