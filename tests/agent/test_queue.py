"""The SQLite queue: idempotent batches, claims, crash recovery, outcomes, campaign states."""

from __future__ import annotations

import sqlite3
import stat
import time
from pathlib import Path

import pytest

from worker_agent.queue import SCHEMA_VERSION, Event, QueueDB, QueueError

from .conftest import make_campaign, make_recipient


def recipients(ids: range) -> list[dict]:
    return [make_recipient(i) for i in ids]


def states(db: QueueDB) -> dict[int, str]:
    return dict(db.conn().execute("SELECT id, state FROM letters"))


def test_schema_is_versioned_and_in_wal_mode(queue_db: QueueDB) -> None:
    conn = sqlite3.connect(queue_db.path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert queue_db.conn().execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_the_queue_files_are_private(queue_db: QueueDB) -> None:
    queue_db.queue_batch("b1", make_campaign(), recipients(range(1, 3)))
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(queue_db.path) + suffix)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    QueueDB(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(QueueError, match="newer"):
        QueueDB(path)


def test_a_batch_pushed_twice_is_queued_once(queue_db: QueueDB) -> None:
    assert queue_db.queue_batch("b1", make_campaign(), recipients(range(1, 11))) == (10, 0)
    assert queue_db.queue_batch("b1", make_campaign(), recipients(range(1, 11))) == (0, 10)
    assert queue_db.counts() == (10, 0)


def test_known_delivery_ids_are_duplicates_even_in_a_new_batch(queue_db: QueueDB) -> None:
    queue_db.queue_batch("b1", make_campaign(), recipients(range(1, 6)))
    # ids 4, 5 known; 6 appears twice in the batch itself
    assert queue_db.queue_batch("b2", make_campaign(), recipients(range(4, 8)) + [make_recipient(6)]) == (2, 3)
    assert sorted(states(queue_db)) == [1, 2, 3, 4, 5, 6, 7]


def test_a_batch_is_all_or_nothing(queue_db: QueueDB) -> None:
    bad = recipients(range(1, 4)) + [{"id": 4, "email": None, "fields": {}, "source_ip": "1.2.3.4", "token": "t"}]
    with pytest.raises(sqlite3.IntegrityError):
        queue_db.queue_batch("b1", make_campaign(), bad)
    assert queue_db.counts() == (0, 0)
    assert queue_db.queue_batch("b1", make_campaign(), recipients(range(1, 4))) == (3, 0)


def test_claim_then_finish(queue_db: QueueDB) -> None:
    queue_db.queue_batch("b1", make_campaign(), recipients(range(1, 6)))
    claimed = queue_db.claim(3)
    assert [c.id for c in claimed] == [1, 2, 3]
    assert claimed[0].recipient() == make_recipient(1)
    assert queue_db.counts() == (2, 3)
    queue_db.finish(submitted=[(1, "1tAbCd-000001-AB", 250, "250 OK id=1tAbCd-000001-AB")],
                    failed=[(2, 550, "550 no")], retry=[(3, time.time() + 60, 451, "451 later")])
    assert states(queue_db) == {1: "submitted", 2: "failed", 3: "queued", 4: "queued", 5: "queued"}
    # 3 waits for its retry time; 4 and 5 are due
    assert [c.id for c in queue_db.claim(10)] == [4, 5]
    assert queue_db.letter_by_exim_id("1tAbCd-000001-AB") == (1, "submitted")
    events = queue_db.outcomes(0)["events"]
    assert [(e["id"], e["status"]) for e in events] == [(1, "sent"), (2, "failed")]


def test_retries_are_bounded(queue_db: QueueDB) -> None:
    queue_db.queue_batch("b1", make_campaign(), recipients(range(1, 2)))
    for attempt in range(3):
        (claimed,) = queue_db.claim(1)
        assert claimed.attempts == attempt + 1
        queue_db.finish(retry=[(1, 0, 451, "451 busy")], max_attempts=3)
    assert states(queue_db) == {1: "failed"}
    (event,) = queue_db.outcomes(0)["events"]
    assert event["status"] == "failed" and "gave up after 3 attempts: 451 busy" in event["text"]


def test_a_release_does_not_use_up_an_attempt(queue_db: QueueDB) -> None:
    queue_db.queue_batch("b1", make_campaign(), recipients(range(1, 2)))
    for _ in range(5):
        queue_db.claim(1)
        queue_db.finish(release=[(1, 0)], max_attempts=2)
    (claimed,) = queue_db.claim(1)
    assert claimed.attempts == 1


def test_crash_recovery_requeues_claims_without_using_attempts(tmp_path: Path) -> None:
    """A letter left 'claimed' never reached Exim (it would be 'submitting'): it goes back to the
    queue with its attempt handed back, however many times the sender is killed (issue 9)."""
    path = tmp_path / "q.sqlite3"
    db = QueueDB(path)
    db.queue_batch("b1", make_campaign(), recipients(range(1, 4)))
    db.claim(2)  # then the sender "crashes": no finish
    db.close()

    db = QueueDB(path)  # a new sender process
    assert db.counts() == (1, 2)
    assert db.recover_claims(time.time() - 3600, max_attempts=5) == (0, 0)  # claims newer than the bound stay
    assert db.recover_claims(time.time(), max_attempts=5) == (2, 0)
    assert db.counts() == (3, 0)
    for _ in range(20):  # crash again and again with letter 1
        db.claim(1)
        db.recover_claims(time.time(), max_attempts=5)
    assert states(db) == {1: "queued", 2: "queued", 3: "queued"}
    assert db.conn().execute("SELECT attempts FROM letters WHERE id = 1").fetchone() == (0,)
    assert db.outcomes(0)["events"] == []


def test_a_submitting_letter_is_left_to_the_reconciler(tmp_path: Path) -> None:
    db = QueueDB(tmp_path / "q.sqlite3")
    db.queue_batch("b1", make_campaign(), recipients(range(1, 3)))
    db.claim(2)
    assert db.mark_submitting([(1, 40001)]) == {1}
    assert db.recover_claims(time.time(), max_attempts=5) == (1, 0)
    assert states(db) == {1: "submitting", 2: "queued"}
    assert [c.id for c in db.claim(10)] == [2]  # never claimable until settled
    assert db.counts() == (0, 2)
    db.settle_submitting(requeue=[(1, 0.0, "Exim never took it")])
    assert [c.id for c in db.claim(10)] == [1]
    assert db.conn().execute("SELECT attempts FROM letters WHERE id = 1").fetchone() == (2,)


def test_a_queue_of_schema_1_is_migrated_and_its_claims_are_reconciled(tmp_path: Path) -> None:
    """An older sender claimed and submitted in one go: its claims may be in Exim."""
    import sqlite3 as sqlite

    from worker_agent.queue import _SCHEMA, _statements

    path = tmp_path / "q.sqlite3"
    old = _SCHEMA.replace("'claimed', 'submitting', 'submitted'", "'claimed', 'submitted'").replace(
        "    last_error TEXT,\n    submitting_at REAL,                 -- when its SMTP transaction with Exim started\n"
        "    submit_port INTEGER                 -- the sender's local port of that connection (reconcile.py)\n",
        "    last_error TEXT\n").replace(
        "CREATE INDEX letters_submitting ON letters (id) WHERE state = 'submitting';\n", "")
    assert "submitting" not in old
    conn = sqlite.connect(path, isolation_level=None)
    for statement in _statements(old):
        conn.execute(statement)
    conn.execute("INSERT INTO campaigns (id, json, updated_at) VALUES (1, '{}', 0)")
    conn.executemany("INSERT INTO letters (id, campaign_id, email, fields, source_ip, token, state, attempts, "
                     "claimed_at) VALUES (?, 1, 'a@example.org', '{}', '127.0.0.2', ?, ?, ?, ?)",
                     [(1, "t1", "claimed", 1, 123.0), (2, "t2", "queued", 0, None), (3, "t3", "submitted", 1, None)])
    conn.execute("PRAGMA user_version = 1")
    conn.close()
    db = QueueDB(path)
    assert states(db) == {1: "submitting", 2: "queued", 3: "submitted"}
    assert db.submitting() == [(1, "t1", 123.0, None, 1)]
    assert db.conn().execute("PRAGMA user_version").fetchone()[0] >= 2
    assert {r[0] for r in db.conn().execute("SELECT name FROM sqlite_master WHERE type = 'index'")} >= {
        "letters_queued", "letters_claimed", "letters_submitting", "letters_exim_id", "letters_token"}


def test_outcomes_share_one_sequence_and_acked_ones_are_forgotten(queue_db: QueueDB) -> None:
    queue_db.queue_batch("b1", make_campaign(), recipients(range(1, 4)))
    with queue_db.write() as conn:
        queue_db.add_events(conn, [Event(1, "sent"), Event(2, "sent")])
        queue_db.add_bounce(conn, "3-tok", "bounce", "raw bounce", "spool-a")
        queue_db.add_events(conn, [Event(1, "delivered", 250, "250 OK", at=1796379245.5)])  # Exim's log time
    first = queue_db.outcomes(0)
    seqs = [e["seq"] for e in first["events"]] + [b["seq"] for b in first["bounces"]]
    assert sorted(seqs) == [1, 2, 3, 4]
    assert first["bounces"] == [{"seq": 3, "token": "3-tok", "kind": "bounce", "raw": "raw bounce"}]
    assert first["events"][2] == {"seq": 4, "id": 1, "status": "delivered", "code": 250, "text": "250 OK",
                                  "at": 1796379245.5}
    assert first["more"] is False
    second = queue_db.outcomes(3)
    assert [e["seq"] for e in second["events"]] == [4] and second["bounces"] == []
    assert queue_db.conn().execute("SELECT count(*) FROM events").fetchone()[0] == 1
    with queue_db.write() as conn:
        queue_db.add_events(conn, [Event(2, "delivered")])
    assert [e["seq"] for e in queue_db.outcomes(4)["events"]] == [5]  # a seq is never reused


def test_outcomes_come_in_pages_without_gaps(queue_db: QueueDB) -> None:
    with queue_db.write() as conn:
        queue_db.add_events(conn, [Event(i, "sent") for i in range(1, 8)])
        queue_db.add_bounce(conn, "t", "bounce", "x" * 100, "s1")
        queue_db.add_events(conn, [Event(i, "delivered") for i in range(1, 3)])
    page = queue_db.outcomes(0, max_events=5)
    assert [e["seq"] for e in page["events"]] == [1, 2, 3, 4, 5] and page["more"] and page["bounces"] == []
    page = queue_db.outcomes(5, max_events=5)
    assert [e["seq"] for e in page["events"]] == [6, 7, 9, 10] and [b["seq"] for b in page["bounces"]] == [8]
    assert not page["more"]


def test_a_large_bounce_backlog_is_paged_by_size(queue_db: QueueDB) -> None:
    with queue_db.write() as conn:
        for i in range(3):
            queue_db.add_bounce(conn, f"t{i}", "bounce", "x" * 1000, f"s{i}")
        queue_db.add_events(conn, [Event(1, "sent")])
    page = queue_db.outcomes(0, max_bounce_bytes=1500)
    assert [b["seq"] for b in page["bounces"]] == [1] and page["events"] == [] and page["more"]
    page = queue_db.outcomes(1, max_bounce_bytes=1500)
    assert [b["seq"] for b in page["bounces"]] == [2] and page["more"]


def test_paused_letters_are_not_claimed_and_resume_later(queue_db: QueueDB) -> None:
    queue_db.queue_batch("b1", make_campaign(id=1), recipients(range(1, 4)))
    queue_db.queue_batch("b2", make_campaign(id=2), recipients(range(11, 14)))
    assert queue_db.set_campaign_state(1, "paused") == 3
    assert {c.campaign_id for c in queue_db.claim(10)} == {2}
    assert queue_db.set_campaign_state(1, "running") == 3
    assert {c.id for c in queue_db.claim(10)} == {1, 2, 3}


def test_claims_are_shared_among_running_campaigns(queue_db: QueueDB) -> None:
    queue_db.queue_batch("b1", make_campaign(id=1), recipients(range(1, 101)))
    queue_db.queue_batch("b2", make_campaign(id=2), recipients(range(1001, 1101)))
    claimed = queue_db.claim(20)
    assert sum(c.campaign_id == 1 for c in claimed) == 10 and sum(c.campaign_id == 2 for c in claimed) == 10


def test_cancel_removes_queued_letters_and_reports_each(queue_db: QueueDB) -> None:
    queue_db.queue_batch("b1", make_campaign(id=1), recipients(range(1, 6)))
    queue_db.claim(1)  # letter 1 is in flight: it finishes normally
    assert queue_db.set_campaign_state(1, "cancelled") == 4
    assert states(queue_db) == {1: "claimed"}
    events = queue_db.outcomes(0)["events"]
    assert sorted((e["id"], e["status"]) for e in events) == [(i, "cancelled") for i in range(2, 6)]
    # a retry of the in-flight letter after the cancel removes it too
    queue_db.finish(retry=[(1, 0, 451, "451 later")])
    assert states(queue_db) == {}
    # later pushes for the cancelled campaign queue nothing and are reported cancelled
    assert queue_db.queue_batch("b2", make_campaign(id=1), recipients(range(6, 8))) == (0, 0)
    statuses = [(e["id"], e["status"]) for e in queue_db.outcomes(0)["events"]]
    assert statuses[-3:] == [(1, "cancelled"), (6, "cancelled"), (7, "cancelled")]


def test_state_set_before_the_first_batch_is_kept(queue_db: QueueDB) -> None:
    assert queue_db.set_campaign_state(5, "paused") == 0
    queue_db.queue_batch("b1", make_campaign(id=5), recipients(range(1, 3)))
    assert queue_db.claim(10) == []
    with pytest.raises(QueueError):
        queue_db.set_campaign_state(5, "deleted")


def test_nonces_are_remembered_until_they_expire(queue_db: QueueDB) -> None:
    now = time.time()
    assert queue_db.remember_nonce("n1", now + 120)
    assert not queue_db.remember_nonce("n1", now + 120)
    assert queue_db.remember_nonce("old", now - 1)
    assert queue_db.remember_nonce("n2", now + 120)  # prunes "old"
    assert queue_db.remember_nonce("old", now + 120)


def test_tokens_are_found_whatever_their_letter_case(queue_db: QueueDB) -> None:
    queue_db.queue_batch("b1", make_campaign(), [make_recipient(1, token="1-AbCdEf")])
    assert queue_db.letter_by_token("1-abcdef") == (1, "queued", "1-AbCdEf")
