"""Exim main-log lines -> events. The lines are what Exim 4.96 wrote with the worker's config
(ansible/roles/exim), plus the default log selector's shapes."""

from __future__ import annotations

import os
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest

from worker_agent.exim_log import EximLogReader, LogFollower, parse_line
from worker_agent.queue import QueueDB

from .conftest import make_campaign, make_recipient

ARRIVAL = ("2026-11-28 00:38:10 1xX6SA-0004im-2N <= bounce+1-tok1@bounces.test H=(agent.test) [127.0.0.1] "
           "I=[127.0.0.1]:40905 P=esmtp S=297 for user1@example.org")
DELIVERED = ("2026-11-28 00:38:10 1xX6SA-0004im-2N => user1@example.org P=<bounce+1-tok1@bounces.test> "
             "R=mailfleet_remote T=smtp_127_0_0_2 S=278 H=127.0.0.1 [127.0.0.1] I=[127.0.0.2] "
             'C="250 2.0.0 OK queued as 1795826290.M773202P18142Q1.vm" QT=0s DT=0s')
DEFERRED = ("2026-11-28 00:38:10 1xX6SA-0004im-2P == user2@example.org R=mailfleet_remote T=smtp_127_0_0_2 "
            "defer (-44) H=127.0.0.1 [127.0.0.1] I=[127.0.0.2] DT=0s: SMTP error from remote mail server after "
            "RCPT TO:<user2@example.org>: 451 4.2.0 <user2@example.org>: mailbox busy, try later")
FAILED = ("2026-11-28 00:38:10 1xX6SA-0004im-2Q ** user3@example.org P=<bounce+3-tok3@bounces.test> "
          "R=mailfleet_remote T=smtp_127_0_0_2 H=127.0.0.1 [127.0.0.1] I=[127.0.0.2]: SMTP error from remote mail "
          "server after RCPT TO:<user3@example.org>: 550 5.1.1 <user3@example.org>: no such user DT=0s")
RETRY_NOT_REACHED = ("2026-11-28 00:38:15 1xX6SA-0004im-2P == user2@example.org routing defer (-52) DT=0s: "
                     "retry time not reached")
DSN_ARRIVAL = ("2026-11-28 00:38:10 1xX6SA-0004iv-2W <= <> R=1xX6SA-0004im-2Q U=Debian-exim P=local S=1736 "
               "for bounce+3-tok3@bounces.test")
DSN_PIPED = ("2026-11-28 00:38:10 1xX6SA-0004iv-2W => 3-tok3 <bounce+3-tok3@bounces.test> P=<> R=mailfleet_bounces "
             "T=mailfleet_bounce_pipe S=1842 QT=0s DT=0s")
REJECTED_AT_DATA = ('2026-11-28 00:38:10 1xX6SA-0004im-2T H=(agent.test) [127.0.0.1] I=[127.0.0.1]:40905 '
                    'F=<bounce+bad-tok@bounces.test> rejected after DATA: 550 5.7.1 X-Mailfleet-Source-IP "10.9.9.9" '
                    'is not a source IP of this node (one of: 127.0.0.2)')
OTHER_LINES = [
    "2026-11-28 00:38:10 exim 4.96 daemon started: pid=18148, -q5s, listening for SMTP on [127.0.0.1]:40905",
    "2026-11-28 00:38:10 Start queue run: pid=18149",
    "2026-11-28 00:38:10 1xX6SA-0004im-2N Completed",
    REJECTED_AT_DATA,
    'garbage line with => and "quotes"',
    "",
]


def test_delivered_line() -> None:
    record = parse_line(DELIVERED)
    assert record is not None
    assert (record.exim_id, record.status, record.address) == ("1xX6SA-0004im-2N", "delivered", "user1@example.org")
    assert (record.code, record.text) == (250, "250 2.0.0 OK queued as 1795826290.M773202P18142Q1.vm")
    assert record.return_path == "bounce+1-tok1@bounces.test"


def test_deferred_line() -> None:
    record = parse_line(DEFERRED)
    assert record is not None and record.status == "deferred"
    assert (record.code, record.text) == (451, "451 4.2.0 <user2@example.org>: mailbox busy, try later")


def test_failed_line_without_the_timing_that_follows() -> None:
    record = parse_line(FAILED)
    assert record is not None and record.status == "failed"
    assert (record.code, record.text) == (550, "550 5.1.1 <user3@example.org>: no such user")


def test_arrival_line_names_the_verp_sender() -> None:
    record = parse_line(ARRIVAL)
    assert record is not None and (record.flag, record.address) == ("<=", "bounce+1-tok1@bounces.test")


@pytest.mark.parametrize("line, status, code, text", [
    # the default log selector: no P=, no I=, no timings
    ('2024-05-01 12:00:01 1s2AbC-000123-Xy => ann@example.org R=dnslookup T=remote_smtp H=mx.example.org '
     '[192.0.2.1] X=TLS1.3:TLS_AES_256_GCM_SHA384:256 CV=yes C="250 2.0.0 Ok: queued as 4Vb \\"x\\""',
     "delivered", 250, '250 2.0.0 Ok: queued as 4Vb \\"x\\"'),
    ("2024-05-01 12:00:01 1s2AbC-000123-Xy -> bob@example.org R=dnslookup T=remote_smtp H=mx.example.org "
     '[192.0.2.1] C="250 OK"', "delivered", 250, "250 OK"),
    ("2024-05-01 12:00:01 1s2AbC-000123-Xy ** carl@nowhere.invalid: Unrouteable address",
     "failed", None, "Unrouteable address"),
    ("2024-05-01 12:00:01 1s2AbC-000123-Xy == dan@example.org R=dnslookup T=remote_smtp defer (111): "
     "Connection refused", "deferred", None, "Connection refused"),
    ("2024-05-01 12:00:01 1s2AbC-000123-Xy ** eve@example.org R=dnslookup T=remote_smtp H=mx.example.org "
     "[2001:db8::1]:25: SMTP error from remote mail server after end of data: 554 5.7.1 Message rejected: spam",
     "failed", 554, "554 5.7.1 Message rejected: spam"),
    ("2024-05-01 12:00:01 1s2AbC-000123-Xy ** fay@example.org R=dnslookup T=remote_smtp: retry timeout exceeded",
     "failed", None, "retry timeout exceeded"),
    # log_selector +pid, and Exim 4.97's longer ids
    ("2024-05-01 12:00:01 [4242] 1s2AbC-000123-Xy => gus@example.org R=r T=t C=\"250 ok\"", "delivered", 250, "250 ok"),
    ("2024-05-01 12:00:01.123 1rZPq7-00000000Gk2-3ROq => hal@example.org R=r T=t C=\"250 fine\"",
     "delivered", 250, "250 fine"),
])
def test_other_shapes_of_lines(line: str, status: str, code: int | None, text: str) -> None:
    record = parse_line(line)
    assert record is not None
    assert (record.status, record.code, record.text) == (status, code, text)


@pytest.mark.parametrize("line", OTHER_LINES + [RETRY_NOT_REACHED])
def test_lines_without_news_are_ignored(line: str) -> None:
    assert parse_line(line) is None


# -- the reader, with a queue ----------------------------------------------------------------------


@pytest.fixture
def db(queue_db: QueueDB) -> QueueDB:
    queue_db.queue_batch("b", make_campaign(), [make_recipient(i, token=f"{i}-tok{i}") for i in (1, 2, 3)])
    queue_db.claim(3)
    queue_db.finish(submitted=[(1, "1xX6SA-0004im-2N", 250, "250 OK id=1xX6SA-0004im-2N"),
                               (2, "1xX6SA-0004im-2P", 250, "250 OK id=1xX6SA-0004im-2P"),
                               (3, "1xX6SA-0004im-2Q", 250, "250 OK id=1xX6SA-0004im-2Q")])
    queue_db.outcomes(3)  # the panel has the three 'sent' events
    return queue_db


def append(path: Path, *lines: str) -> None:
    with open(path, "a") as f:
        f.write("".join(line + "\n" for line in lines))


def drain(reader: EximLogReader) -> None:
    """Poll until two rounds in a row bring nothing (a file switch takes one empty round)."""
    while reader.poll() or reader.poll():
        pass


def read_all(db: QueueDB, log: Path, **kwargs: float) -> None:
    with closing(EximLogReader(db, log, **kwargs)) as reader:
        drain(reader)


def events(db: QueueDB) -> list[tuple]:
    return [(e["id"], e["status"], e.get("code")) for e in db.outcomes(0)["events"]]


def test_reader_turns_our_lines_into_events_and_ignores_the_rest(db: QueueDB, tmp_path: Path) -> None:
    log = tmp_path / "mainlog"
    append(log, *OTHER_LINES, ARRIVAL, DEFERRED, FAILED, DSN_ARRIVAL, DELIVERED, DSN_PIPED, RETRY_NOT_REACHED,
           "2026-11-28 00:39:00 1xZZZZ-0000zz-ZZ => stranger@example.org R=r T=t C=\"250 ok\"")
    with closing(EximLogReader(db, log)) as reader:
        assert reader.poll() == len(OTHER_LINES) + 8
        assert events(db) == [(2, "deferred", 451), (3, "failed", 550), (1, "delivered", 250)]
        assert reader.poll() == 0


def test_reading_goes_on_where_it_stopped(db: QueueDB, tmp_path: Path) -> None:
    log = tmp_path / "mainlog"
    append(log, DEFERRED)
    read_all(db, log)
    append(log, DELIVERED)
    read_all(db, log)  # a new process: nothing twice, nothing missed
    assert events(db) == [(2, "deferred", 451), (1, "delivered", 250)]


def test_a_half_written_line_waits_for_its_end(db: QueueDB, tmp_path: Path) -> None:
    log = tmp_path / "mainlog"
    with open(log, "w") as f:
        f.write(DELIVERED[:50])
    with closing(EximLogReader(db, log)) as reader:
        assert reader.poll() == 0
        with open(log, "a") as f:
            f.write(DELIVERED[50:] + "\n")
        assert reader.poll() == 1
    assert events(db) == [(1, "delivered", 250)]


def test_rotation_while_running_and_while_stopped(db: QueueDB, tmp_path: Path) -> None:
    log = tmp_path / "mainlog"
    append(log, DEFERRED)
    with closing(EximLogReader(db, log)) as reader:
        reader.poll()
        # rotated while we run: the rest of the old file, then the new one
        append(log, FAILED)
        os.rename(log, tmp_path / "mainlog.1")
        append(log, DELIVERED)
        drain(reader)
    assert events(db) == [(2, "deferred", 451), (3, "failed", 550), (1, "delivered", 250)]
    # rotated while stopped: the saved file is found as mainlog.1 and finished first
    append(log, DEFERRED.replace("00:38:10", "00:40:00"))
    os.rename(tmp_path / "mainlog.1", tmp_path / "mainlog.2")
    os.rename(log, tmp_path / "mainlog.1")
    append(log, FAILED.replace("00:38:10", "00:41:00"))
    read_all(db, log)
    assert events(db)[3:] == [(2, "deferred", 451), (3, "failed", 550)]


def test_truncation_starts_over(db: QueueDB, tmp_path: Path) -> None:
    log = tmp_path / "mainlog"
    append(log, DEFERRED, DEFERRED)
    with closing(EximLogReader(db, log)) as reader:
        reader.poll()
        log.write_text("")
        append(log, DELIVERED)
        drain(reader)
    assert events(db) == [(2, "deferred", 451), (2, "deferred", 451), (1, "delivered", 250)]


def test_an_arrival_before_the_sender_recorded_it_waits_for_the_sender(queue_db: QueueDB, tmp_path: Path) -> None:
    """Exim logs "<=" before its 250 reaches the sender: 'sent' must still come before 'delivered'."""
    queue_db.queue_batch("b", make_campaign(), [make_recipient(1, token="1-tok1")])
    queue_db.claim(1)
    log = tmp_path / "mainlog"
    append(log, ARRIVAL, DELIVERED)
    recorder = threading.Timer(0.3, lambda: queue_db.finish(
        submitted=[(1, "1xX6SA-0004im-2N", 250, "250 OK id=1xX6SA-0004im-2N")]))
    recorder.start()
    read_all(queue_db, log, claim_wait=10)
    recorder.join()
    assert events(queue_db) == [(1, "sent", 250), (1, "delivered", 250)]


def test_a_letter_exim_took_although_the_sender_lost_the_reply(queue_db: QueueDB, tmp_path: Path) -> None:
    """The connection broke after DATA; the sender put the letter back. Exim's log shows it
    arrived, so it is recorded as sent and never submitted again."""
    queue_db.queue_batch("b", make_campaign(), [make_recipient(1, token="1-tok1")])
    queue_db.claim(1)
    queue_db.finish(retry=[(1, time.time() + 60, None, "connection to local Exim lost")])
    log = tmp_path / "mainlog"
    append(log, ARRIVAL.replace("bounce+1-tok1", "bounce+1-TOK1"), DELIVERED)  # any letter case
    read_all(queue_db, log, claim_wait=0.1)
    assert [(e[0], e[1]) for e in events(queue_db)] == [(1, "sent"), (1, "delivered")]
    assert queue_db.letter_by_exim_id("1xX6SA-0004im-2N") == (1, "submitted")
    assert queue_db.claim(10, now=time.time() + 3600) == []


def test_the_reader_thread_stops_promptly(db: QueueDB, tmp_path: Path) -> None:
    stop = threading.Event()
    reader = EximLogReader(db, tmp_path / "not-yet")
    thread = threading.Thread(target=reader.run, args=(stop,))
    thread.start()
    append(tmp_path / "not-yet", DELIVERED)
    deadline = time.monotonic() + 5
    while not events(db) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=2)
    assert not thread.is_alive()
    assert events(db) == [(1, "delivered", 250)]


def test_follower_returns_offsets_after_each_line(tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_bytes(b"a\nbb\nccc")
    with closing(LogFollower(log)) as follower:
        assert follower.read_lines() == [(b"a", 2), (b"bb", 5)]
        assert follower.offset == 5


def test_a_delivery_only_exims_journal_holds_is_read_from_completed(db: QueueDB, tmp_path: Path) -> None:
    """Exim killed after the remote server took a letter but before its delivery process logged `=>`: the
    spool's -J journal holds the delivery, and the restarted Exim logs only `Completed` (seen in the chaos
    run, bench/chaos.py: 25 of 5,000 letters left 'sent' for good). The letter was delivered."""
    log = tmp_path / "mainlog"
    append(log, ARRIVAL, "2026-11-28 00:38:11 1xX6SA-0004im-2N Failed writing transport result to pipe "
                         "(-1 of 11 bytes): Broken pipe",
           "2026-11-28 00:38:20 exim 4.96 daemon started: pid=18150, -q5s, listening for SMTP on [127.0.0.1]:40905",
           "2026-11-28 00:38:21 1xX6SA-0004im-2N Completed")
    read_all(db, log)
    assert events(db) == [(1, "delivered", None)]


def test_completed_after_a_logged_outcome_says_nothing_more(db: QueueDB, tmp_path: Path) -> None:
    log = tmp_path / "mainlog"
    arrival3 = ARRIVAL.replace("1xX6SA-0004im-2N", "1xX6SA-0004im-2Q").replace("bounce+1-tok1", "bounce+3-tok3")
    arrival2 = ARRIVAL.replace("1xX6SA-0004im-2N", "1xX6SA-0004im-2P").replace("bounce+1-tok1", "bounce+2-tok2")
    append(log, ARRIVAL, arrival2, arrival3, DELIVERED, FAILED, DEFERRED, "2026-11-28 00:38:10 1xX6SA-0004im-2N Completed",
           "2026-11-28 00:38:10 1xX6SA-0004im-2Q Completed")
    read_all(db, log)
    # a deferred letter is still Exim's: nothing until its own `=>` or `**`
    assert events(db) == [(1, "delivered", 250), (3, "failed", 550), (2, "deferred", 451)]


def test_a_journal_delivery_across_a_restart_of_the_reader(db: QueueDB, tmp_path: Path) -> None:
    """The whole worker killed: the sender (and its reader) read the arrival, then Exim and the sender died;
    the new reader goes on after the arrival and sees only `Completed` (chaos run: 2 of 5,000 letters left
    'sent'). A letter whose `=>` the new reader did read says nothing more at its `Completed`."""
    log = tmp_path / "mainlog"
    arrival2 = ARRIVAL.replace("1xX6SA-0004im-2N", "1xX6SA-0004im-2P").replace("bounce+1-tok1", "bounce+2-tok2")
    append(log, ARRIVAL, arrival2)
    read_all(db, log)
    append(log, "2026-11-28 00:38:20 exim 4.96 daemon started: pid=18150, -q5s, listening for SMTP on [127.0.0.1]:40905",
           DELIVERED.replace("1xX6SA-0004im-2N", "1xX6SA-0004im-2P").replace("user1", "user2"),
           "2026-11-28 00:38:21 1xX6SA-0004im-2P Completed",
           "2026-11-28 00:38:21 1xX6SA-0004im-2N Completed")
    read_all(db, log)
    assert events(db) == [(2, "delivered", 250), (1, "delivered", None)]
