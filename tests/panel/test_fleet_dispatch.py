"""Letters belong to the campaign until a server takes them (issue 9, points 1, 2 and 7).

The daemon's rounds run against fake agents over real HTTPS (tests/panel/agents.py); what is
checked is what the panel's database then holds: which server and IP took which letters.
"""

from __future__ import annotations

import itertools
import re
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from panel.daemon.dispatch import _claim, _take_letters, dispatch_server, fair_shares
from panel.daemon.loop import DaemonState, run_round
from panel.extensions import db
from panel.models import Campaign, Delivery, DispatchBatch, Server, ServerEvent, ServerIP, User
from panel.models.base import utcnow
from panel.services.sending import start_campaign

from tests.panel.agents import RecordingAgent, hand_over

WINDOW, BATCH = 200, 50
_names = itertools.count()


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8", "DISPATCH_WINDOW": WINDOW, "DISPATCH_BATCH_SIZE": BATCH}


def _started(app, seed, user_id: int, letters: int, **fields) -> int:
    list_id = seed.list(user_id, f"readers {next(_names)}", [{"email": f"r{n}@example.org", "name": f"R{n}"} for n in range(letters)])
    campaign_id = seed.campaign(user_id, [list_id], **fields)
    with app.app_context():
        start_campaign(db.session.get(User, user_id), db.session.get(Campaign, campaign_id))
        db.session.commit()
    return campaign_id


def _held(app, campaign_id: int | None = None) -> dict[int | None, int]:
    """Letters per server (None: not taken yet), of one campaign or of all."""
    with app.app_context():
        query = select(Delivery.server_id, func.count()).group_by(Delivery.server_id)
        if campaign_id is not None:
            query = query.where(Delivery.campaign_id == campaign_id)
        return dict(db.session.execute(query).all())


def _round(app, state: DaemonState) -> None:
    with app.app_context():
        run_round(state)


def _sent(agent, app, server_id: int, first_seq: int = 1) -> int:
    """The agent reports every letter it holds as handed to its Exim (its window drains)."""
    with app.app_context():
        ids = db.session.scalars(select(Delivery.id).where(Delivery.server_id == server_id,
                                                           Delivery.status == "queued")).all()
    agent.report(events=[{"seq": first_seq + n, "id": i, "status": "sent"} for n, i in enumerate(ids)])
    return len(ids)


def test_start_fixes_no_server_and_a_server_added_mid_campaign_joins_at_once(app, seed, alice, agents):
    first = agents.start()
    first_id = first.register(app, alice, "first")
    campaign_id = _started(app, seed, alice, 1000)
    assert _held(app, campaign_id) == {None: 1000}
    state = DaemonState()
    _round(app, state)
    assert _held(app, campaign_id) == {None: 800, first_id: WINDOW}
    second_id = agents.start().register(app, alice, "added later")
    _round(app, state)
    assert _held(app, campaign_id) == {None: 600, first_id: WINDOW, second_id: WINDOW}
    with app.app_context():
        queued = db.session.scalar(select(func.count()).where(Delivery.campaign_id == campaign_id,
                                                              Delivery.status == "queued"))
        assert queued == 2 * WINDOW


def test_a_server_whose_letters_leave_faster_takes_more(app, seed, alice, agents):
    fast, slow = agents.start(), agents.start()
    fast_id, slow_id = fast.register(app, alice, "fast"), slow.register(app, alice, "slow")
    campaign_id = _started(app, seed, alice, 1000)
    state = DaemonState()
    _round(app, state)
    assert _held(app, campaign_id) == {None: 600, fast_id: WINDOW, slow_id: WINDOW}
    assert _sent(fast, app, fast_id) == WINDOW
    _round(app, state)  # the fast agent's outcomes come in: its window is empty again
    _round(app, state)
    assert _held(app, campaign_id) == {None: 400, fast_id: 2 * WINDOW, slow_id: WINDOW}


def test_a_silent_server_takes_nothing_and_its_letters_never_pushed_go_to_the_others(app, seed, alice, agents):
    live, dying = agents.start(), agents.start()
    live_id, dying_id = live.register(app, alice, "live"), dying.register(app, alice, "dying")
    campaign_id = _started(app, seed, alice, 150)
    with app.app_context():
        # The daemon took two batches for the dying server and stopped before pushing the first;
        # the second's push was tried (the agent may hold it, though nobody heard its answer).
        campaign, server = db.session.get(Campaign, campaign_id), db.session.get(Server, dying_id)
        never = _claim(campaign, server, 30).id
        tried = _claim(db.session.get(Campaign, campaign_id), db.session.get(Server, dying_id), 20).id
        db.session.get(DispatchBatch, tried).attempts = 1
        server = db.session.get(Server, dying_id)
        server.status, server.last_seen_at = "online", utcnow()  # it answered a moment ago
        db.session.commit()
    dying.stop()
    state = DaemonState()
    _round(app, state)  # the dying server stops answering; silent for less than a minute: it keeps them
    assert _held(app, campaign_id) == {live_id: 100, dying_id: 50}
    with app.app_context():
        assert db.session.get(Server, dying_id).status == "offline"
        db.session.execute(update(Server).where(Server.id == dying_id)
                           .values(last_seen_at=utcnow() - timedelta(seconds=61)))
        db.session.commit()
    _round(app, state)  # released, and the live server takes them in the same daemon's next round
    _round(app, state)
    assert _held(app, campaign_id) == {live_id: 130, dying_id: 20}
    with app.app_context():
        assert db.session.get(DispatchBatch, never) is None
        assert db.session.get(DispatchBatch, tried).server_id == dying_id  # may be on the agent: stays
        events = db.session.scalars(select(ServerEvent.message).where(ServerEvent.server_id == dying_id,
                                                                      ServerEvent.kind == "failover")).all()
        assert len(events) == 1 and "30 letters" in events[0]


def test_an_offline_server_and_an_inactive_ip_get_no_letters(app, seed, alice, agents):
    live, down = agents.start(), agents.start()
    live_id, down_id = live.register(app, alice, "live"), down.register(app, alice, "down")
    down.stop()
    with app.app_context():
        server = db.session.get(Server, live_id)
        server.ips.append(ServerIP(ip="127.0.0.3", helo="ip3.worker.test", weight=5, active=False))
        db.session.commit()
    campaign_id = _started(app, seed, alice, 120)
    _round(app, DaemonState())
    assert _held(app, campaign_id) == {live_id: 120}
    with app.app_context():
        ips = db.session.scalars(select(Delivery.source_ip).where(Delivery.campaign_id == campaign_id).distinct()).all()
        assert ips == ["127.0.0.2"]


def test_ip_weights_and_sending_domains_share_the_letters(app, seed, alice):
    server_id = seed.server(alice, ips=("192.0.2.10", "192.0.2.11"))
    with app.app_context():
        db.session.execute(update(ServerIP).where(ServerIP.ip == "192.0.2.10").values(weight=3))
        db.session.execute(update(Server).where(Server.id == server_id).values(status="online"))
        db.session.commit()
    campaign_id = _started(app, seed, alice, 200)
    with app.app_context():
        dispatch_server(RecordingAgent(), db.session.get(Server, server_id))
        split = dict(db.session.execute(select(Delivery.source_ip, func.count()).where(
            Delivery.campaign_id == campaign_id).group_by(Delivery.source_ip)).all())
    assert split == {"192.0.2.10": 150, "192.0.2.11": 50}


def test_a_small_campaign_started_during_a_large_one_goes_out_first(app, seed, alice, agents):
    agent = agents.start()
    server_id = agent.register(app, alice, "worker")
    large = _started(app, seed, alice, 1000)
    state = DaemonState()
    _round(app, state)
    assert _held(app, large) == {None: 800, server_id: WINDOW}
    small = _started(app, seed, alice, 30)
    _round(app, state)
    assert _held(app, small) == {None: 30}  # no room yet
    with app.app_context():
        ids = db.session.scalars(select(Delivery.id).where(Delivery.campaign_id == large,
                                                           Delivery.status == "queued").limit(100)).all()
    agent.report(events=[{"seq": n + 1, "id": i, "status": "sent"} for n, i in enumerate(ids)])
    _round(app, state)
    _round(app, state)
    assert _held(app, small) == {server_id: 30}  # all of it, at once
    assert _held(app, large) == {None: 730, server_id: 270}  # the rest of the room


def test_a_users_campaigns_share_a_server_by_priority(app, seed, alice, agents):
    server_id = agents.start().register(app, alice, "worker")
    high = _started(app, seed, alice, 500)
    low = _started(app, seed, alice, 500)
    with app.app_context():
        db.session.get(Campaign, high).priority = 8
        db.session.get(Campaign, low).priority = 2
        db.session.commit()
    _round(app, DaemonState())
    assert _held(app, high)[server_id] == 160 and _held(app, low)[server_id] == 40


def test_users_share_evenly_and_priorities_weigh_within_a_user():
    campaigns = [Campaign(id=1, user_id=1, priority=5), Campaign(id=2, user_id=1, priority=5),
                 Campaign(id=3, user_id=1, priority=10), Campaign(id=4, user_id=2, priority=1)]
    shares = fair_shares(campaigns)
    assert shares == {1: 0.125, 2: 0.125, 3: 0.25, 4: 0.5}


def test_batch_names_on_the_agent_survive_a_restored_database(app, seed, alice):
    """A panel database restored from a backup hands out the same row ids again; the agent must
    see new names for the batches made after the restore, or it answers 'duplicate' and those
    letters are never sent."""
    server_id = seed.server(alice)
    with app.app_context():
        db.session.execute(update(Server).where(Server.id == server_id).values(status="online"))
        db.session.commit()
    campaign_id = _started(app, seed, alice, 100)
    agent = RecordingAgent()
    with app.app_context():
        dispatch_server(agent, db.session.get(Server, server_id))
        before = [payload["batch_id"] for payload in agent.batches]
        # The restore: the batches and the letters' hand-over never happened.
        db.session.execute(update(Delivery).where(Delivery.campaign_id == campaign_id).values(
            status="pending", batch_id=None, server_id=None, source_ip=None))
        db.session.execute(text("DELETE FROM dispatch_batches"))
        if db.engine.dialect.name == "postgresql":
            db.session.execute(text("ALTER SEQUENCE dispatch_batches_id_seq RESTART WITH 1"))
        db.session.commit()
        dispatch_server(agent, db.session.get(Server, server_id))
        after = [payload["batch_id"] for payload in agent.batches[len(before):]]
    assert len(before) == len(after) == 2
    assert not set(before) & set(after)
    assert all(name.startswith(f"c{campaign_id}-") for name in before + after)


def test_the_window_is_counted_from_the_servers_own_letters(app, seed, alice):
    """The window count reads the index of letters queued on each server, not a campaign's letters."""
    with app.app_context():
        if db.engine.dialect.name != "sqlite":
            pytest.skip("the plan is read on SQLite; PostgreSQL picks by its statistics")
        plan = db.session.execute(text(
            "EXPLAIN QUERY PLAN SELECT campaign_id, count(*) FROM deliveries "
            "WHERE server_id = 1 AND status = 'queued' GROUP BY campaign_id")).all()
    assert any("ix_deliveries_server_queued" in row[-1] for row in plan), plan


def test_a_campaign_is_not_finished_while_exim_retries_a_deferred_letter(app, seed, alice):
    from panel.daemon.outcomes import finish_campaigns

    seed.server(alice)
    campaign_id = _started(app, seed, alice, 2)
    with app.app_context():
        first, second = db.session.scalars(select(Delivery).where(Delivery.campaign_id == campaign_id)).all()
        first.status, second.status = "delivered", "deferred"
        db.session.commit()
        finish_campaigns()
        assert db.session.get(Campaign, campaign_id).status == "running"
        db.session.get(Delivery, second.id).status = "delivered"
        db.session.commit()
        finish_campaigns()
        assert db.session.get(Campaign, campaign_id).status == "finished"


def test_a_server_declared_gone_gives_its_letters_to_the_others_and_says_how_many_may_repeat(
        app, seed, alice, agents, as_alice):
    live, dead = agents.start(), agents.start()
    live_id, dead_id = live.register(app, alice, "live"), dead.register(app, alice, "dead")
    campaign_id = _started(app, seed, alice, 300)
    state = DaemonState()
    _round(app, state)
    assert _held(app, campaign_id) == {live_id: WINDOW, dead_id: 100}
    with app.app_context():
        # Of the dead server's letters, its Exim took ten.
        sent = db.session.scalars(select(Delivery.id).where(Delivery.server_id == dead_id).limit(10)).all()
        db.session.execute(update(Delivery).where(Delivery.id.in_(sent)).values(status="sent"))
        db.session.commit()
    dead.stop()
    _round(app, state)
    page = as_alice.get(f"/servers/{dead_id}").get_data(as_text=True)
    assert "Declare gone" in page and 'data-letters="queued">90<' in page
    response = as_alice.post(f"/servers/{dead_id}/gone")
    page = as_alice.get(response.headers["Location"]).get_data(as_text=True)
    assert "90 letters went back to their campaigns" in page
    assert "90 of them were on its agent and may arrive twice" in page
    assert "10 letters its Exim had taken are marked failed" in page
    with app.app_context():
        assert db.session.get(Server, dead_id).status == "gone"
        failed = db.session.scalar(select(func.count()).where(Delivery.server_id == dead_id, Delivery.status == "failed"))
        assert failed == 10
    _round(app, state)  # the live server's window is full: the letters wait for it; the gone one is not asked
    assert _held(app, campaign_id) == {live_id: WINDOW, None: 90, dead_id: 10}
    response = as_alice.post(f"/servers/{live_id}/gone")
    assert "it is online and answering" in as_alice.get(response.headers["Location"]).get_data(as_text=True)


def test_the_api_declares_a_server_gone_and_shows_its_letters(app, seed, alice, bob, client):
    server_id = seed.server(alice)
    campaign_id = _started(app, seed, alice, 20)
    with app.app_context():
        _claim(db.session.get(Campaign, campaign_id), db.session.get(Server, server_id), 20)
        db.session.execute(update(Delivery).where(Delivery.campaign_id == campaign_id).values(status="queued"))
        db.session.execute(update(Server).where(Server.id == server_id).values(status="offline"))
        db.session.commit()
    headers = {"Authorization": f"Bearer {seed.token(alice)}"}
    assert client.get(f"/api/v1/servers/{server_id}", headers=headers).get_json()["letters"] == {"queued": 20}
    other = {"Authorization": f"Bearer {seed.token(bob)}"}
    assert client.post(f"/api/v1/servers/{server_id}/gone", headers=other).status_code == 404
    reply = client.post(f"/api/v1/servers/{server_id}/gone", headers=headers)
    assert reply.status_code == 200 and reply.get_json() == {"resent": 20, "may_repeat": 20, "unknown": 0}
    assert client.get(f"/api/v1/servers/{server_id}", headers=headers).get_json()["letters"] == {}
    again = client.post(f"/api/v1/servers/{server_id}/gone", headers=headers)
    assert again.status_code == 409 and "already declared gone" in again.get_json()["error"]
    with app.app_context():
        assert db.session.scalar(select(func.count()).where(Delivery.campaign_id == campaign_id,
                                                            Delivery.server_id.is_(None),
                                                            Delivery.status == "pending")) == 20


def test_a_server_back_after_a_long_silence_gives_its_waiting_letters_back(app, seed, alice):
    from panel.daemon.recall import recall_after_silence, silent_too_long

    server_id = seed.server(alice)
    campaign_id = _started(app, seed, alice, 120)
    with app.app_context():
        agent = hand_over(server_id)
        assert _held(app, campaign_id) == {server_id: 120}
        agent.sending = set(sorted(agent.held)[:20])  # its sender holds these: they stay its own
        server = db.session.get(Server, server_id)
        server.status, server.last_seen_at = "offline", utcnow() - timedelta(seconds=30)
        db.session.commit()
        assert not silent_too_long(db.session.get(Server, server_id), 60)
        db.session.get(Server, server_id).last_seen_at = utcnow() - timedelta(seconds=61)
        db.session.commit()
        assert silent_too_long(db.session.get(Server, server_id), 60)
        assert recall_after_silence(agent, db.session.get(Server, server_id)) == 100
        event = db.session.scalar(select(ServerEvent.message).where(ServerEvent.kind == "recalled"))
        assert "100 letters waiting on its agent went back" in event and "20 it was already sending" in event
    assert _held(app, campaign_id) == {server_id: 20, None: 100}
    with app.app_context():
        free = db.session.scalars(select(Delivery).where(Delivery.server_id.is_(None))).all()
        assert {(d.status, d.batch_id, d.source_ip) for d in free} == {("pending", None, None)}


def test_a_cancel_leaves_letters_the_agent_may_hold_to_its_answer(app, seed, alice):
    """Cancelling while a batch's push was tried but not answered: its letters are not marked
    cancelled blindly (the agent may send them); told of the cancel and pushed the batch again, the
    agent answers for each, and the rest of the campaign is cancelled at once."""
    from panel.services.sending import set_campaign_state

    server_id = seed.server(alice)
    campaign_id = _started(app, seed, alice, 100)
    with app.app_context():
        db.session.execute(update(Server).where(Server.id == server_id).values(status="online"))
        tried = _claim(db.session.get(Campaign, campaign_id), db.session.get(Server, server_id), 30).id
        db.session.get(DispatchBatch, tried).attempts = 1
        db.session.commit()
        set_campaign_state(db.session.get(User, alice), db.session.get(Campaign, campaign_id), "cancel")
        db.session.commit()
        counts = dict(db.session.execute(select(Delivery.status, func.count()).where(
            Delivery.campaign_id == campaign_id).group_by(Delivery.status)).all())
        assert counts == {"pending": 30, "cancelled": 70}
        agent = RecordingAgent()
        dispatch_server(agent, db.session.get(Server, server_id))
        assert [len(batch["recipients"]) for batch in agent.batches] == [30]  # pushed again for its answer
        assert db.session.get(DispatchBatch, tried).status == "pushed"


def test_the_campaign_page_shows_each_servers_letters_by_state(app, seed, alice, agents, as_alice):
    first_id = agents.start().register(app, alice, "alpha worker")
    second_id = agents.start().register(app, alice, "beta worker")
    campaign_id = _started(app, seed, alice, 500)
    _round(app, DaemonState())
    with app.app_context():
        done = db.session.scalars(select(Delivery.id).where(Delivery.server_id == second_id).limit(30)).all()
        db.session.execute(update(Delivery).where(Delivery.id.in_(done)).values(status="delivered"))
        db.session.commit()
    page = as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    rows = re.findall(r'<tr data-server="([^"]+)">(.*?)</tr>', page, re.S)
    shown = {server: dict(re.findall(r'data-letters="(\w+)">[^<]*?([\d,]+)</span>', cells)) for server, cells in rows}
    assert shown == {str(first_id): {"queued": "200"}, str(second_id): {"queued": "170", "delivered": "30"},
                     "none": {"pending": "100"}}
    assert "alpha worker" in page and "not taken by a server yet" in page


def test_servers_taking_letters_at_once_never_take_the_same_one(app, seed, alice):
    """Each server is served in its own thread (on SQLite one at a time, under a lock of the process).
    Here another claim — another process's, which no lock of this one holds off — runs and commits
    right after this one read the free letters (on SQLite nothing locks them while it reads): the
    letters it took must not be taken again, and each batch holds exactly the letters it counts."""
    import threading

    from sqlalchemy import event

    first, second = seed.server(alice, name="first"), seed.server(alice, name="second", ips=("192.0.2.20",))
    campaign_id = _started(app, seed, alice, 100)
    other: list[int | None] = []

    def claim_by_second() -> None:
        try:
            with app.app_context():
                batch = _take_letters(db.session.get(Campaign, campaign_id), db.session.get(Server, second), 60)
                other.append(batch.id if batch else None)
        except BaseException as exc:  # noqa: BLE001 (the test says it)
            other.append(exc)

    def after_read(_conn, _cursor, statement, *_args) -> None:
        if not other and statement.lstrip().upper().startswith("SELECT DELIVERIES.ID"):
            other.append(None)  # once: the second server's own read comes through here too
            thread = threading.Thread(target=claim_by_second)
            thread.start()
            thread.join(60)
            other.pop(0)

    with app.app_context():
        engine = db.engine
        event.listen(engine, "after_cursor_execute", after_read)
        try:
            mine = _claim(db.session.get(Campaign, campaign_id), db.session.get(Server, first), 80)
        finally:
            event.remove(engine, "after_cursor_execute", after_read)
        assert other and isinstance(other[0], int), other
        sizes = dict(db.session.execute(select(DispatchBatch.id, DispatchBatch.size)).all())
        held = dict(db.session.execute(select(Delivery.batch_id, func.count()).where(
            Delivery.campaign_id == campaign_id, Delivery.batch_id.is_not(None)).group_by(Delivery.batch_id)).all())
        assert held == sizes  # no letter in two batches, none counted in a batch it is not in
        # SQLite: the other took 60 of the 80 this claim had read, which takes the 20 still free of
        # them; PostgreSQL: this claim's read locked its 80 (SKIP LOCKED), the other took the 20 left.
        expected = (20, 60) if db.engine.dialect.name == "sqlite" else (80, 20)
        assert mine is not None and (sizes[mine.id], sizes[other[0]]) == expected
        mismatched = db.session.scalar(select(func.count()).select_from(Delivery).join(
            DispatchBatch, DispatchBatch.id == Delivery.batch_id).where(DispatchBatch.server_id != Delivery.server_id))
        assert mismatched == 0
