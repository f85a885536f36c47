"""Outcome acks carry the queue's epoch (issue 9): a queue file made anew (an agent reinstalled)
starts its seqs at 1 again under a new epoch, and an ack the panel kept for the old queue must
not delete its events unread. And each event carries the time Exim logged the outcome."""

from __future__ import annotations

import calendar
import re
import sqlite3
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from worker_agent.api import create_app
from worker_agent.config import AgentConfig
from worker_agent.exim_log import EximLogReader, parse_line
from worker_agent.queue import QueueDB

from .conftest import make_campaign, make_recipient
from .test_api import Panel, batch, snapshot

EPOCH = re.compile(r"^[0-9a-f]{16,64}$")


@pytest.fixture
def panel(agent_config: AgentConfig) -> Panel:
    return Panel(create_app(agent_config).test_client(), agent_config.read_key())


def cancelled_events(panel: Panel, n: int = 3) -> None:
    """Events with seqs 1..n in the agent's queue (cancelled letters report one each)."""
    panel.call("/v1/batches", batch("b", range(1, n + 1)))
    panel.call("/v1/campaigns/state", {"campaign_id": 12, "state": "cancelled"})


# -- the epoch --------------------------------------------------------------------------------------


def test_a_queue_gets_an_epoch_once_and_a_new_queue_another(tmp_path: Path) -> None:
    with closing(QueueDB(tmp_path / "a.sqlite3")) as first:
        epoch = first.epoch
    assert EPOCH.match(epoch), epoch
    with closing(QueueDB(tmp_path / "a.sqlite3")) as again:  # reopened (a restart): the same queue
        assert again.epoch == epoch
    with closing(QueueDB(tmp_path / "b.sqlite3")) as other:  # made anew (a reinstall)
        assert EPOCH.match(other.epoch) and other.epoch != epoch


def test_a_queue_made_before_epochs_gets_one_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    with closing(QueueDB(path)) as queue:
        queue.queue_batch("b", make_campaign(), [make_recipient(1)])
    conn = sqlite3.connect(path)  # as an agent before this change left it: no epoch stored
    with conn:
        conn.execute("DELETE FROM agent_state")
    conn.close()
    with closing(QueueDB(path)) as queue:
        epoch = queue.epoch
        assert EPOCH.match(epoch) and queue.letter_state(1) == "queued"
    with closing(QueueDB(path)) as queue:
        assert queue.epoch == epoch


def test_ping_and_outcomes_answer_with_the_epoch(panel: Panel, agent_config: AgentConfig) -> None:
    epoch = QueueDB(agent_config.queue_db).epoch
    assert panel.call("/v1/ping", {})[1]["epoch"] == epoch
    assert panel.call("/v1/outcomes", {"ack": 0})[1]["epoch"] == epoch


def test_an_ack_for_another_epoch_acknowledges_nothing(panel: Panel, agent_config: AgentConfig) -> None:
    cancelled_events(panel)
    before = snapshot(agent_config.queue_db)["events"]
    assert len(before) == 3
    # the panel's ack for the queue this agent had before it was reinstalled
    status, reply = panel.call("/v1/outcomes", {"ack": 500, "epoch": "0123456789abcdef"})
    assert status == 200
    assert [e["seq"] for e in reply["events"]] == [1, 2, 3]  # all of them, from the start
    assert reply["epoch"] != "0123456789abcdef"
    assert snapshot(agent_config.queue_db)["events"] == before  # nothing deleted
    # the same ack under the agent's own epoch is taken
    status, reply = panel.call("/v1/outcomes", {"ack": 2, "epoch": reply["epoch"]})
    assert [e["seq"] for e in reply["events"]] == [3]
    assert [row[0] for row in snapshot(agent_config.queue_db)["events"]] == [3]


def test_an_ack_without_an_epoch_is_taken_as_before(panel: Panel, agent_config: AgentConfig) -> None:
    """A panel from before epochs sends none: its ack is for the queue it knows."""
    cancelled_events(panel)
    assert [e["seq"] for e in panel.call("/v1/outcomes", {"ack": 2})[1]["events"]] == [3]
    assert [row[0] for row in snapshot(agent_config.queue_db)["events"]] == [3]


@pytest.mark.parametrize("epoch", [17, "", "x" * 65, ["abc"], "abc def", None])
def test_a_malformed_epoch_is_a_400_and_deletes_nothing(panel: Panel, agent_config: AgentConfig, epoch) -> None:
    cancelled_events(panel)
    before = snapshot(agent_config.queue_db)["events"]
    status, reply = panel.call("/v1/outcomes", {"ack": 3, "epoch": epoch})
    assert status == 400 and "epoch" in reply["error"], reply
    assert snapshot(agent_config.queue_db)["events"] == before


# -- Exim's time -------------------------------------------------------------------------------------

DELIVERED = ('{when} 1xX6SA-0004im-2N => user1@example.org P=<bounce+1-tok1@bounces.test> R=mailfleet_remote '
             'T=smtp_127_0_0_2 S=278 H=127.0.0.1 [127.0.0.1] I=[127.0.0.2] C="250 2.0.0 OK queued" QT=0s DT=0s')
DEFERRED = ("{when} 1xX6SA-0004im-2P == user2@example.org R=mailfleet_remote T=smtp_127_0_0_2 defer (-44) "
            "H=127.0.0.1 [127.0.0.1] I=[127.0.0.2] DT=0s: SMTP error from remote mail server after "
            "RCPT TO:<user2@example.org>: 451 4.2.0 mailbox busy, try later")


@pytest.fixture
def oslo_time(monkeypatch: pytest.MonkeyPatch):
    """This process in Europe/Oslo's local time (UTC+1, +2 in summer), as Exim on such a host logs."""
    monkeypatch.setenv("TZ", "Europe/Oslo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("when, expected", [
    # log_timezone = true (the role's config): the offset is on the line
    ("2026-11-28 00:38:10 +0000", calendar.timegm((2026, 11, 28, 0, 38, 10))),
    ("2026-11-28 00:38:10 +0530", calendar.timegm((2026, 11, 27, 19, 8, 10))),
    ("2026-07-01 12:00:00 -0400", calendar.timegm((2026, 7, 1, 16, 0, 0))),
    # +millisec
    ("2026-11-28 00:38:10.250 +0000", calendar.timegm((2026, 11, 28, 0, 38, 10)) + 0.25),
    # no zone: the host's local time (winter and summer in Oslo)
    ("2026-11-28 00:38:10", calendar.timegm((2026, 11, 27, 23, 38, 10))),
    ("2026-07-01 12:00:00", calendar.timegm((2026, 7, 1, 10, 0, 0))),
])
def test_a_line_carries_the_time_exim_logged_it(oslo_time, when: str, expected: float) -> None:
    for shape in (DELIVERED, DEFERRED):
        record = parse_line(shape.format(when=when))
        assert record is not None and record.at == pytest.approx(expected, abs=1e-6), (when, record)


def test_local_time_agrees_with_the_zone_database(oslo_time) -> None:
    local = datetime(2026, 3, 29, 3, 30, 0, tzinfo=ZoneInfo("Europe/Oslo"))  # just after the switch to summer time
    record = parse_line(DELIVERED.format(when="2026-03-29 03:30:00"))
    assert record is not None and record.at == local.timestamp()


def test_each_event_carries_the_time_of_its_line(queue_db: QueueDB, tmp_path: Path) -> None:
    queue_db.queue_batch("b", make_campaign(), [make_recipient(i, token=f"{i}-tok{i}") for i in (1, 2)])
    queue_db.claim(2)
    before = time.time()
    queue_db.finish(submitted=[(1, "1xX6SA-0004im-2N", 250, "250 OK"), (2, "1xX6SA-0004im-2P", 250, "250 OK")])
    sent = queue_db.outcomes(0)["events"]
    assert [e["status"] for e in sent] == ["sent", "sent"]
    assert all(before <= e["at"] <= time.time() for e in sent)  # the sender's own time: when Exim took it
    log = tmp_path / "mainlog"
    log.write_text(DEFERRED.format(when="2026-11-28 00:38:10 +0000") + "\n"
                   + DELIVERED.format(when="2026-11-28 01:02:03 +0100") + "\n")
    with closing(EximLogReader(queue_db, log)) as reader:
        reader.poll()
    events = queue_db.outcomes(sent[-1]["seq"])["events"]
    assert [(e["id"], e["status"], e["at"]) for e in events] == [
        (2, "deferred", calendar.timegm((2026, 11, 28, 0, 38, 10))),
        (1, "delivered", calendar.timegm((2026, 11, 28, 0, 2, 3))),
    ]
