"""IP warm-up on the agent (issue 9, point 6): letters per (source IP, provider group, day) counted
durably in the queue, a pair whose day is used up held until the next day (never failed), and,
against a real Exim with a "day" compressed to seconds, the cap holding each day through a SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers import wait_for
from worker_agent import remote_config
from worker_agent.queue import QueueDB
from worker_agent.warmup import DEFAULT_DAILY, Warmup, WarmupPlan, default_schedule, parse_schedule, report

from .conftest import make_campaign, make_recipient
from .test_sender_exim import campaign, make_agent  # noqa: F401 (a fixture)
from .test_sender_providers import bind  # noqa: F401 (a fixture)

START = 1_800_000_000.0
IP, OTHER_IP = "127.0.0.2", "127.0.0.3"


def plan(schedule: list[dict], ip: str = IP, day_seconds: int = 86400) -> WarmupPlan:
    return WarmupPlan(ip, START, parse_schedule(schedule), day_seconds)


def send(warmup: Warmup, ip: str, group: str, now: float, n: int) -> int:
    """Letters the warm-up lets go out of ``n`` asked at ``now`` (counted and saved, as the sender does)."""
    went = 0
    for _ in range(n):
        if warmup.wait(ip, group, now) == 0.0:
            warmup.count(ip, group, now)
            went += 1
    warmup.save()
    return went


SCHEDULE = [{"day": 1, "limits": {"*": 5, "google": 3}}, {"day": 2, "limits": {"*": 10, "google": 6}},
            {"day": 4, "limits": {"*": 20}}]


def test_each_pair_gets_its_day_allowance_then_waits_for_the_next_day(queue_db: QueueDB):
    warmup = Warmup(queue_db, {IP: plan(SCHEDULE)})
    noon = START + 12 * 3600
    assert send(warmup, IP, "google", noon, 10) == 3
    assert send(warmup, IP, "microsoft", noon, 10) == 5  # "*": each other group its own allowance
    assert send(warmup, IP, "example.org", noon, 10) == 5
    assert send(warmup, OTHER_IP, "google", noon, 10) == 10  # an IP without a plan: no cap
    assert warmup.wait(IP, "google", noon) == pytest.approx(12 * 3600)  # until day 2 begins
    assert send(warmup, IP, "google", START + 86400, 10) == 6  # day 2
    assert send(warmup, IP, "google", START + 2 * 86400, 10) == 6  # day 3: day 2's step still
    assert send(warmup, IP, "google", START + 3 * 86400, 30) == 20  # day 4: "*" for google too
    assert send(warmup, IP, "google", START + 4 * 86400, 100) == 100  # after the last day: warm


def test_counts_survive_a_restart(tmp_path: Path):
    path = tmp_path / "queue.sqlite3"
    queue = QueueDB(path)
    assert send(Warmup(queue, {IP: plan(SCHEDULE)}), IP, "google", START + 60, 2) == 2
    queue.close()
    queue = QueueDB(path)  # a new sender after a crash: the day's count is read back
    try:
        assert send(Warmup(queue, {IP: plan(SCHEDULE)}), IP, "google", START + 120, 10) == 1
    finally:
        queue.close()


def test_a_new_start_counts_afresh(queue_db: QueueDB):
    send(Warmup(queue_db, {IP: plan(SCHEDULE)}), IP, "google", START + 60, 3)
    restarted = WarmupPlan(IP, START + 3600, parse_schedule(SCHEDULE))
    assert send(Warmup(queue_db, {IP: restarted}), IP, "google", START + 3700, 10) == 3


def test_the_report_says_the_day_and_what_is_left(queue_db: QueueDB):
    plans = {IP: plan(SCHEDULE)}
    send(Warmup(queue_db, plans), IP, "google", START + 60, 2)
    send(Warmup(queue_db, plans), IP, "yandex", START + 60, 7)
    queue_db.queue_batch("b1", make_campaign(), [make_recipient(1), make_recipient(2)])
    with queue_db.write() as conn:  # one letter put back until day 2 begins, as the sender does
        conn.execute("UPDATE letters SET not_before = ? WHERE id = 1", (START + 86400,))
    (item,) = report(queue_db, plans, START + 120)
    assert item["held"] == 1
    assert item["day"] == 1 and item["days"] == 4 and not item["warm"] and item["default"] == 5
    assert item["day_ends"] == START + 86400
    assert item["providers"] == [{"provider": "google", "limit": 3, "sent": 2},
                                 {"provider": "yandex", "limit": 5, "sent": 5}]
    (item,) = report(queue_db, plans, START + 5 * 86400)
    assert item["warm"] and item["day"] == 6 and item["providers"] == []


def test_the_default_schedule_rises_day_by_day():
    steps = parse_schedule(default_schedule())
    daily = [limits["*"] for _, limits in steps]
    assert daily == list(DEFAULT_DAILY) and len(daily) == 30 and daily[0] == 50
    assert all(a < b for a, b in zip(daily, daily[1:]))


@pytest.mark.parametrize(("schedule", "error"), [
    ([], "must be a list of 1 to"),
    ([{"day": 2, "limits": {"*": 5}}], "the first step must be day 1"),
    ([{"day": 1, "limits": {"*": 5}}, {"day": 1, "limits": {"*": 6}}], "give the steps by rising day"),
    ([{"day": 1, "limits": {"*": -1}}], "must be a whole number of letters"),
    ([{"day": 1, "limits": {"nosuch": 5}}], "neither \"*\""),
    ([{"day": 1}], "exactly day and limits"),
])
def test_a_bad_schedule_is_refused_with_what_to_give(schedule, error):
    with pytest.raises(remote_config.RemoteConfigError, match=error):
        remote_config.parse({"version": 1, "warmup": [{"source_ip": IP, "start": START, "schedule": schedule}]},
                            (IP, OTHER_IP))


def test_a_pushed_plan_is_stored_and_read_back():
    pushed = remote_config.parse({"version": 3, "warmup": [
        {"source_ip": IP, "start": START, "day_seconds": 60, "schedule": SCHEDULE}]}, (IP, OTHER_IP))
    back = remote_config.from_json(pushed.to_json())
    assert remote_config.warmup_plans(back) == {IP: plan(SCHEDULE, day_seconds=60)}
    with pytest.raises(remote_config.RemoteConfigError, match="not a source IP of this node"):
        remote_config.parse({"version": 1, "warmup": [{"source_ip": "192.0.2.9", "start": START,
                                                       "schedule": SCHEDULE}]}, (IP,))


def test_a_queue_of_schema_2_gains_the_counts(tmp_path: Path):
    path = tmp_path / "queue.sqlite3"
    QueueDB(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE warmup_sent")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    queue = QueueDB(path)
    try:
        queue.add_warmup_sent([((IP, "google", int(time.time())), 4)])
        assert queue.warmup_sent(IP, int(time.time()) - 1) == {}
    finally:
        queue.close()


# -- with a real Exim ---------------------------------------------------------------------------

DAY_SECONDS = 8


@pytest.mark.skipif(os.geteuid() != 0, reason="a real Exim and named need root")
def test_a_compressed_warm_up_holds_each_day_cap_through_a_crash(make_agent, bind, capture):  # noqa: F811
    """Days of 8 s: 4 letters to Google on day 1, 8 on day 2, then warm; gmail.test and workspace.test
    (Google's MX hosts) share them; plain.test has its own "*" allowance. The sender is SIGKILLed
    after day 1's letters and started again within the day: it sends Google nothing more that day.
    Letters of a used-up day wait (never failed); day 2 sends its 8 and day 3 the rest."""
    config, sender, db = make_agent(rate_limits=[], dns_server=f"{bind.host}:{bind.port}")
    start = time.time()
    pushed = remote_config.parse({"version": 1, "warmup": [
        {"source_ip": IP, "start": start, "day_seconds": DAY_SECONDS,
         "schedule": [{"day": 1, "limits": {"*": 100, "google": 4}}, {"day": 2, "limits": {"google": 8}}]}]},
        config.source_ips)
    remote_config.apply(db, config, pushed)
    google = [make_recipient(i, email=f"user{i}@{'gmail.test' if i % 2 else 'workspace.test'}") for i in range(1, 17)]
    plain = [make_recipient(i, email=f"user{i}@plain.test") for i in range(101, 105)]
    db.queue_batch("b1", campaign(), google + plain)
    sender.start()
    wait_for(lambda: capture.count() >= 8, "day 1's letters", timeout=DAY_SECONDS - 2)
    process = sender.process
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    sender.start()
    wait_for(lambda: sender.output().count("sender started") >= 2, "the sender started again", timeout=5)
    restarted = time.time()
    assert restarted < start + DAY_SECONDS - 1, "the restarted sender was not up within day 1"
    wait_for(lambda: capture.count() == 20, "every letter", timeout=4 * DAY_SECONDS)
    conn = sqlite3.connect(config.queue_db)
    try:
        marked = conn.execute("SELECT email, submitting_at FROM letters WHERE state = 'submitted'").fetchall()
        failed = conn.execute("SELECT count(*) FROM letters WHERE state = 'failed'").fetchone()[0]
    finally:
        conn.close()

    def per_day(suffixes: tuple[str, ...]) -> list[int]:
        return [sum(1 for email, t in marked if email.endswith(suffixes)
                    and start + d * DAY_SECONDS <= t < start + (d + 1) * DAY_SECONDS) for d in range(3)]

    assert per_day(("@gmail.test", "@workspace.test")) == [4, 8, 4], marked
    assert per_day(("@plain.test",)) == [4, 0, 0], marked
    assert failed == 0
    assert capture.count() == 20  # none twice
