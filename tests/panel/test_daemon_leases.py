"""More than one daemon (issue 9, point 8): daemons share the servers through leases in the database,
a killed daemon's servers are taken over, nothing is pushed twice, a slow agent delays no other,
and SQLite runs one daemon.

Each daemon is a real `python -m panel.daemon` process; the agents are fake ones over real HTTPS
(tests/panel/fake_agent.py) that record every request they get. Leases are short here (4 s) so the
takeover is quick; the default (15 s, renewed every 3 s) gives a takeover within 20 s.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from panel.extensions import db
from panel.daemon.password_channel import ChannelError, send_password, socket_path
from panel.models import Campaign, Delivery, DispatchBatch, ProvisionJob, User
from panel.models.base import utcnow
from panel.services.sending import start_campaign

REPO = Path(__file__).resolve().parents[2]
SECRETS_KEY = "Yl2b9mqCBc6pWqB0Lq0T3bq3vWfQ8hM8yJk1xQ9oVvA="
LEASE = 4.0
_names = itertools.count()


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8", "SECRETS_KEY": SECRETS_KEY}


class Daemons:
    """`python -m panel.daemon` processes on the test's database, each killed at teardown."""

    def __init__(self, app, root: Path) -> None:
        self.app, self.root, self.started = app, root, []

    def start(self, instance: Path | None = None, **settings: str) -> subprocess.Popen:
        n = len(self.started)
        instance = instance or self.root / f"daemon{n}"
        instance.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.app.config
        env = dict(os.environ, MAILFLEET_INSTANCE_PATH=str(instance), DATABASE_URL=config["SQLALCHEMY_DATABASE_URI"],
                   MAILFLEET_SECRET_KEY=config["SECRET_KEY"], MAILFLEET_SECRETS_KEY=SECRETS_KEY,
                   MAILFLEET_PUBLIC_URL=config["PUBLIC_URL"], MAILFLEET_BOUNCE_DOMAIN=config["BOUNCE_DOMAIN"],
                   MAILFLEET_ALLOWED_HOST_NETWORKS="127.0.0.0/8", MAILFLEET_DAEMON_INTERVAL="0.2",
                   MAILFLEET_DAEMON_LEASE_SECONDS=str(LEASE), MAILFLEET_DISPATCH_BATCH_SIZE="10")
        env.update({f"MAILFLEET_{name}": value for name, value in settings.items()})
        log = self.root / f"daemon{n}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "panel.daemon"], cwd=REPO, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        process.log = log
        self.started.append(process)
        return process

    def stop(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait()


@pytest.fixture
def daemons(app, tmp_path: Path):
    started = Daemons(app, tmp_path / "daemons")
    yield started
    started.stop()


def _requests(agent) -> list[dict]:
    path = Path(agent.config["record_file"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _batches(agent) -> list[dict]:
    return [entry for entry in _requests(agent) if entry["path"] == "/v1/batches"]


def _wait(predicate, what: str, timeout: float, daemons: Daemons | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    logs = "".join(f"\n--- {p.log.name}\n{p.log.read_text(errors='replace')[-3000:]}"
                   for p in (daemons.started if daemons else []))
    raise AssertionError(f"{what}: not within {timeout} s{logs}")


def _campaign(app, seed, user_id: int, server_id: int, letters: int) -> int:
    """A running campaign of `letters` letters that only `server_id` may take."""
    n = next(_names)
    readers = [{"email": f"r{n}.{i}@example.org", "name": f"R{i}"} for i in range(letters)]
    list_id = seed.list(user_id, f"readers {n}", readers)
    campaign_id = seed.campaign(user_id, [list_id], servers=[server_id])
    with app.app_context():
        start_campaign(db.session.get(User, user_id), db.session.get(Campaign, campaign_id))
        db.session.commit()
    return campaign_id


def _server_holders(seed) -> dict[int, str]:
    """server id -> the daemon holding its lease now."""
    rows = seed.query(lambda s: s.execute(text(
        "SELECT name, holder FROM daemon_leases WHERE name LIKE 'server:%' AND expires_at > :now"),
        {"now": utcnow()}).all())
    return {int(name.split(":")[1]): holder for name, holder in rows}


def _pid(holder: str) -> int:
    return int(holder.split(":")[1])  # host:pid:random


def _all_pushed(app) -> bool:
    with app.app_context():
        return not db.session.scalar(
            select(func.count()).select_from(DispatchBatch).where(DispatchBatch.status != "pushed"))


def _no_batch_twice(app, started) -> None:
    pushed = [entry["batch_id"] for agent in started for entry in _batches(agent)]
    assert len(pushed) == len(set(pushed)), f"batches pushed more than once: {sorted(pushed)}"
    with app.app_context():
        batches = db.session.scalar(
            select(func.count()).select_from(DispatchBatch).where(DispatchBatch.status == "pushed"))
        queued = db.session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == "queued"))
        pending = db.session.scalar(select(func.count()).select_from(Delivery).where(Delivery.status == "pending"))
    assert len(set(pushed)) == batches and pending == 0 and queued > 0


def test_two_daemons_share_the_servers_and_one_killed_is_taken_over(app, seed, alice, agents, daemons, db_backend):
    if db_backend != "postgresql":
        pytest.skip("several daemons run on PostgreSQL only")
    started = [agents.start(record_file=str(agents.root / f"record{n}.jsonl")) for n in range(4)]
    server_ids = [agent.register(app, alice, f"worker {n}") for n, agent in enumerate(started)]
    agent_of = dict(zip(server_ids, started))
    for server_id in server_ids:
        _campaign(app, seed, alice, server_id, 25)
    first, second = daemons.start(), daemons.start()

    def split():
        holders = _server_holders(seed)
        by_pid: dict[int, list[int]] = {}
        for server_id, holder in holders.items():
            by_pid.setdefault(_pid(holder), []).append(server_id)
        return by_pid if len(holders) == 4 and sorted(map(len, by_pid.values())) == [2, 2] else None

    by_pid = _wait(split, "the four servers shared two and two between the daemons", 30, daemons)
    assert set(by_pid) == {first.pid, second.pid}
    _wait(lambda: all(len(_batches(agent)) == 3 for agent in started), "every server's 25 letters pushed", 20, daemons)

    # The daemon killed mid-work: its servers are the other's within 30 s, new work included.
    orphaned = by_pid[first.pid]
    first.send_signal(signal.SIGKILL)
    first.wait()
    killed_at = time.monotonic()
    for server_id in orphaned:
        _campaign(app, seed, alice, server_id, 5)
    _wait(lambda: all(len(_batches(agent_of[s])) == 4 for s in orphaned), "the killed daemon's servers served", 30,
          daemons)
    assert time.monotonic() - killed_at < 30
    assert set(map(_pid, _server_holders(seed).values())) == {second.pid}
    # Served by one daemon at a time: no batch reached an agent twice, every letter pushed once.
    _wait(lambda: _all_pushed(app), "every push answered", 10, daemons)
    _no_batch_twice(app, started)
    assert second.poll() is None

    # Two more daemons started: the one holding all four lets some go, and each new one gets work.
    third, fourth = daemons.start(), daemons.start()

    def shared_by_three():
        counts = {}
        for holder in _server_holders(seed).values():
            counts[_pid(holder)] = counts.get(_pid(holder), 0) + 1
        return sum(counts.values()) == 4 and set(counts) == {second.pid, third.pid, fourth.pid}

    _wait(shared_by_three, "the servers shared by the three live daemons", 30, daemons)
    _no_batch_twice(app, started)


def _lease_holder(seed, name: str) -> str | None:
    return seed.query(lambda s: s.execute(
        text("SELECT holder FROM daemon_leases WHERE name = :name AND expires_at > :now"),
        {"name": name, "now": utcnow()}).scalar())


def _channel_answers(instance: Path) -> bool:
    """A daemon listens on the instance's password channel (asked about a job that does not exist)."""
    try:
        send_password(socket_path(instance), 999999, "not a password", timeout=5)
    except ChannelError as exc:
        return "there is no provisioning job 999999" in str(exc)
    return False


def test_provisioning_runs_in_one_daemon_and_moves_when_it_dies(app, seed, alice, daemons, db_backend, tmp_path):
    if db_backend != "postgresql":
        pytest.skip("several daemons run on PostgreSQL only")
    instance = tmp_path / "instance"  # two daemons of one machine: one instance folder, one password channel
    server_id = seed.server(alice)
    first = daemons.start(instance)
    _wait(lambda: _lease_holder(seed, "provision"), "a daemon provisioning", 20, daemons)
    assert _pid(_lease_holder(seed, "provision")) == first.pid
    with app.app_context():  # a playbook the first daemon is running
        job = ProvisionJob(server_id=server_id, kind="reconfigure", status="running", started_at=utcnow())
        db.session.add(job)
        db.session.commit()
        job_id = job.id

    second = daemons.start(instance)
    alive = lambda: seed.query(lambda s: s.execute(text(  # noqa: E731
        "SELECT holder FROM daemon_leases WHERE name LIKE 'daemon:%'")).scalars().all())
    _wait(lambda: any(_pid(h) == second.pid for h in alive()), "the second daemon alive", 20, daemons)
    time.sleep(LEASE / 2)  # its first rounds of leases are done
    assert seed.get(ProvisionJob, job_id).status == "running", "a second daemon failed the first one's running job"
    assert _pid(_lease_holder(seed, "provision")) == first.pid and _channel_answers(instance)

    # The provisioning daemon dies: the other takes provisioning over, fails the job it left running
    # and listens on the password channel.
    first.send_signal(signal.SIGKILL)
    first.wait()
    _wait(lambda: seed.get(ProvisionJob, job_id).status == "failed", "the orphaned job failed", 30, daemons)
    assert "stopped while this job ran" in seed.get(ProvisionJob, job_id).error
    assert _pid(_lease_holder(seed, "provision")) == second.pid
    _wait(lambda: _channel_answers(instance), "the password channel answered by the other daemon", 10, daemons)


def test_a_slow_agent_does_not_delay_the_others(app, seed, alice, agents, daemons):
    # Registered first: the lowest id, the first a daemon serving in turn would wait for.
    slow = agents.start("slow", delay="4", record_file=str(agents.root / "slow.jsonl"))
    fast = [agents.start(record_file=str(agents.root / f"fast{n}.jsonl")) for n in range(2)]
    ids = [agent.register(app, alice, f"worker {n}") for n, agent in enumerate([slow, *fast])]
    for server_id in ids:
        _campaign(app, seed, alice, server_id, 10)
    daemons.start()
    _wait(lambda: all(_batches(agent) for agent in fast) and _requests(slow), "the fast agents' pushes", 30, daemons)
    contacted = _requests(slow)[0]["t"]
    for agent in fast:
        # Served in turn, a fast agent would wait for the slow one's ping, config and push (4 s each).
        assert _batches(agent)[0]["t"] - contacted < 3.0, "a fast agent waited for the slow one"
    _wait(lambda: _batches(slow) and _all_pushed(app), "the slow agent's push answered", 40, daemons)
    _no_batch_twice(app, [slow, *fast])


def test_servers_served_at_once_never_take_the_same_letter(app, seed, alice, agents, daemons):
    """One campaign for the whole fleet: its letters go to whichever server has room, and the servers'
    threads claim them at the same time; each letter is pushed to one agent, once."""
    started = [agents.start(record_file=str(agents.root / f"record{n}.jsonl")) for n in range(4)]
    for n, agent in enumerate(started):
        agent.register(app, alice, f"worker {n}")
    n = next(_names)
    list_id = seed.list(alice, f"readers {n}", [{"email": f"r{n}.{i}@example.org", "name": "R"} for i in range(400)])
    campaign_id = seed.campaign(alice, [list_id])
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        db.session.commit()
    daemons.start(DISPATCH_BATCH_SIZE="5")
    _wait(lambda: _all_pushed(app) and sum(len(e["ids"]) for a in started for e in _batches(a)) >= 400,
          "the 400 letters pushed", 60, daemons)
    pushed = [i for agent in started for entry in _batches(agent) for i in entry["ids"]]
    assert len(pushed) == 400 and len(set(pushed)) == 400, f"{len(pushed) - len(set(pushed))} letters pushed twice"
    assert sum(1 for agent in started if _batches(agent)) > 1  # the servers did share the campaign
    _no_batch_twice(app, started)


def test_sqlite_runs_one_daemon(app, seed, alice, agents, daemons, db_backend):
    if db_backend != "sqlite":
        pytest.skip("SQLite only: PostgreSQL runs several")
    agent = agents.start(record_file=str(agents.root / "record.jsonl"))
    server_id = agent.register(app, alice, "worker")
    first = daemons.start()
    _wait(lambda: _server_holders(seed).get(server_id), "the first daemon serving", 20, daemons)

    second = daemons.start()
    assert second.wait(timeout=20) != 0
    said = second.log.read_text()
    assert f"another daemon ({os.uname().nodename}, pid {first.pid}) is running on this SQLite database" in said, said
    assert "SQLite runs one daemon" in said and "use PostgreSQL to run several" in said
    assert "Traceback" not in said
    assert first.poll() is None

    # A daemon killed with SIGKILL leaves its lease; the next one starts at once all the same.
    first.send_signal(signal.SIGKILL)
    first.wait()
    third = daemons.start()
    _campaign(app, seed, alice, server_id, 5)
    _wait(lambda: _batches(agent), "the next daemon serving", 3 * LEASE, daemons)
    assert third.poll() is None
    assert _pid(_server_holders(seed)[server_id]) == third.pid

    # Stopped as a service manager stops it: it gives every lease back, so the next one need not wait.
    third.send_signal(signal.SIGTERM)
    assert third.wait(timeout=20) == 0
    assert seed.query(lambda s: s.execute(text("SELECT name FROM daemon_leases WHERE holder LIKE :me"),
                                          {"me": f"%:{third.pid}:%"}).all()) == []
