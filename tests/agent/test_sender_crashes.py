"""Exactly once through sender crashes (issue 9 point 9, agent side): the real sender process
against a real Exim, SIGKILLed at chosen moments and restarted. Between the two sits a TCP relay
that can slow Exim's answers, hold the end of a letter's DATA (an Exim slow to take it in, which
then logs its "<=" only after the restarted sender has read its log to the end) or hold Exim's
answer to it (the sender dies between DATA and recording Exim's answer). Letters are counted at
the capture by Message-ID."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devserver.exim import Exim
from devserver.mail_capture import CaptureServer
from tests.helpers import wait_for
from worker_agent.config import AgentConfig, load_config
from worker_agent.exim_log import EximLogReader
from worker_agent.queue import QueueDB
from worker_agent.render import Renderer

from .conftest import make_campaign, make_recipient

REPO = Path(__file__).resolve().parents[2]
BOUNCE_DOMAIN = "bounces.test"
END_OF_DATA = b"\r\n.\r\n"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a real Exim with its own config needs root")


def campaign(**changes: Any) -> dict[str, Any]:
    return make_campaign(bounce_domain=BOUNCE_DOMAIN, **changes)


class Relay:
    """sender <-> Exim over loopback. Like Exim itself, it keeps the sender's side of a connection
    open until Exim has answered what it was given, even after the sender died; and it keeps Exim's
    side open until Exim answered the end of a letter's DATA, as a sender dying just after Exim's
    check for a lost connection would (Exim 4.96 drops a letter whose sender is gone at the final
    dot: "SMTP connection lost after final dot")."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.reply_delay = 0.0
        self.hold_dot = False  # hold the next end of DATA before Exim sees it
        self.hold_reply = False  # hold Exim's answer to the next end of DATA
        self.drop_reply = False  # cut the sender's connection instead of passing on that answer
        self.held = threading.Event()
        self.release = threading.Event()
        self._closed = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self.release.set()
        self.server.close()
        for s in self._sockets:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            state = {"after_dot": False, "answered": threading.Event()}
            threading.Thread(target=self._to_exim, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._to_sender, args=(upstream, client, state), daemon=True).start()

    def _hold(self) -> None:
        self.held.set()
        self.release.wait(120)

    def _to_exim(self, client: socket.socket, upstream: socket.socket, state: dict[str, Any]) -> None:
        tail = b""
        try:
            while True:
                chunk = client.recv(65536)
                if not chunk:
                    break
                tail = (tail + chunk)[-len(END_OF_DATA):]
                if tail == END_OF_DATA:
                    if self.hold_dot:
                        self.hold_dot = False
                        self._hold()
                    state["answered"].clear()
                    state["after_dot"] = True
                upstream.sendall(chunk)
        except OSError:
            pass
        if state["after_dot"]:
            state["answered"].wait(30)
        try:
            upstream.shutdown(socket.SHUT_WR)  # Exim reads the end, answers, then closes
        except OSError:
            pass

    def _to_sender(self, upstream: socket.socket, client: socket.socket, state: dict[str, Any]) -> None:
        try:
            while True:
                chunk = upstream.recv(65536)
                if not chunk:
                    break
                if self.reply_delay:
                    time.sleep(self.reply_delay)
                if state["after_dot"]:
                    state["after_dot"] = False
                    state["answered"].set()
                    if self.hold_reply and chunk.startswith(b"250"):
                        self.hold_reply = False
                        self._hold()
                    if self.drop_reply:
                        self.drop_reply = False
                        client.shutdown(socket.SHUT_RDWR)  # the sender sees its connection lost during DATA
                try:
                    client.sendall(chunk)
                except OSError:
                    pass  # the sender is gone; Exim still finishes
        except OSError:
            pass
        for s in (upstream, client):
            s.close()


class Sender:
    """`python -m worker_agent sender`, killed with SIGKILL."""

    def __init__(self, config: AgentConfig, log: Path) -> None:
        self.config, self.log = config, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "worker_agent", "sender", "--config", str(self.config.path)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> int:
        process, self.process = self.process, None
        if process is None:
            return 0
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise AssertionError("the sender did not stop on SIGTERM") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def crash_setup(exim: Exim, tmp_path: Path) -> Iterator[Callable[..., tuple[Relay, Sender, QueueDB]]]:
    made: list[tuple[Relay, Sender, QueueDB]] = []

    def make(**overrides: Any) -> tuple[Relay, Sender, QueueDB]:
        relay = Relay(exim.settings.smtp_port)
        settings = {
            "data_dir": str(tmp_path / "data"), "smtp_port": relay.port, "smtp_connections": 1,
            "exim_mainlog": str(exim.mainlog), "exim_spool": str(exim.spool_directory),
            "bounce_spool": str(exim.bounce_spool), "source_ips": ["127.0.0.2", "127.0.0.3"],
            "hostname": "agent.worker.test",
        }
        settings.update(overrides)
        path = tmp_path / "agent.json"
        path.write_text(json.dumps(settings))
        config = load_config(path)
        made.append((relay, Sender(config, tmp_path / "sender.log"), QueueDB(config.queue_db)))
        return made[-1]

    try:
        yield make
    finally:
        for relay, sender, db in made:
            relay.close()
            code = sender.stop()
            db.close()
            assert code == 0, sender.output()
            assert "Traceback" not in sender.output(), sender.output()


def message_ids(capture: CaptureServer) -> Counter[str]:
    return Counter(m.message["Message-ID"] for m in capture.messages())


def statuses(db: QueueDB) -> dict[int, list[str]]:
    by_id: dict[int, list[str]] = {}
    for e in db.outcomes(0)["events"]:
        by_id.setdefault(e["id"], []).append(e["status"])
    return by_id


@needs_root
@pytest.mark.parametrize("hold", ["end_of_data", "answer"])
def test_a_sender_killed_in_data_sends_each_letter_once(crash_setup: Callable[..., tuple], capture: CaptureServer,
                                                        hold: str) -> None:
    """end_of_data: Exim gets the letter's end, and logs its "<=", only after the killed sender was
    restarted and had read Exim's log to its end. answer: Exim took it, the sender died before
    hearing so."""
    relay, sender, db = crash_setup()
    db.queue_batch("b1", campaign(), [make_recipient(i) for i in range(1, 4)])
    if hold == "end_of_data":
        relay.hold_dot = True
    else:
        relay.hold_reply = True
    sender.start()
    wait_for(relay.held.is_set, "the first letter's DATA to be held")
    sender.kill()
    sender.start()
    wait_for(lambda: "sender started" in sender.output(), "the restarted sender")
    time.sleep(2.0)  # the restarted sender has caught up with the log and sends on
    relay.release.set()
    wait_for(lambda: capture.count() >= 3 and statuses(db).get(1, [None])[-1] == "delivered",
             "three letters at the capture", timeout=60)
    time.sleep(2.0)  # a second copy would come meanwhile
    assert sorted(m.rcpt_to for m in capture.messages()) == [f"user{i}@example.org" for i in range(1, 4)]
    assert set(message_ids(capture).values()) == {1}
    assert statuses(db) == {i: ["sent", "delivered"] for i in range(1, 4)}
    rows = db.conn().execute("SELECT id, state, attempts FROM letters ORDER BY id").fetchall()
    assert rows == [(i, "submitted", 1) for i in range(1, 4)]


@needs_root
def test_a_connection_lost_during_data_is_settled_by_exims_log_not_retried(
        crash_setup: Callable[..., tuple], capture: CaptureServer) -> None:
    """Exim took the letter, the sender's connection broke before its answer came: the letter is
    recorded sent from Exim's log, never submitted again, and uses one attempt."""
    relay, sender, db = crash_setup()
    db.queue_batch("b1", campaign(), [make_recipient(i) for i in range(1, 4)])
    relay.drop_reply = True
    sender.start()
    wait_for(lambda: all(s[-1:] == ["delivered"] for s in statuses(db).values()) and len(statuses(db)) == 3,
             "three letters delivered", timeout=60)
    time.sleep(2.0)
    assert sorted(m.rcpt_to for m in capture.messages()) == [f"user{i}@example.org" for i in range(1, 4)]
    assert statuses(db) == {i: ["sent", "delivered"] for i in range(1, 4)}
    assert db.conn().execute("SELECT id, state, attempts FROM letters ORDER BY id").fetchall() == [
        (i, "submitted", 1) for i in range(1, 4)]
    assert "connection to local Exim lost during DATA" in sender.output()


@needs_root
def test_kills_spend_no_attempts_on_letters_never_offered(crash_setup: Callable[..., tuple],
                                                          capture: CaptureServer) -> None:
    """Five SIGKILLs while the sender holds ~100 claimed letters, max_attempts 3: none is failed
    'sender stopped', every letter arrives once, attempts count only what reached Exim."""
    relay, sender, db = crash_setup(smtp_connections=2, max_attempts=3)
    n = 120
    db.queue_batch("b1", campaign(), [make_recipient(i) for i in range(1, n + 1)])
    relay.reply_delay = 0.03  # ~8 letters a second: most letters sit claimed at each kill
    kills = 5
    for _ in range(kills):
        before = len(statuses(db))
        sender.start()
        wait_for(lambda: len(statuses(db)) >= before + 3, "a few more letters sent", timeout=60)
        failed = [i for i, s in statuses(db).items() if "failed" in s]
        assert not failed, f"{len(failed)} letters failed: {db.outcomes(0)['events'][-1]}"
        claimed = db.conn().execute("SELECT count(*) FROM letters WHERE state = 'claimed'").fetchone()[0]
        assert claimed > 20
        sender.kill()
    relay.reply_delay = 0.0
    sender.start()
    wait_for(lambda: capture.count() >= n, f"{n} letters at the capture", timeout=120)
    wait_for(lambda: all(s[-1] == "delivered" for s in statuses(db).values()) and len(statuses(db)) == n,
             "every letter delivered", timeout=60)
    time.sleep(1.0)
    ids = message_ids(capture)
    assert len(ids) == n and set(ids.values()) == {1}
    assert sorted(m.rcpt_to for m in capture.messages()) == sorted(f"user{i}@example.org" for i in range(1, n + 1))
    assert all(s == ["sent", "delivered"] for s in statuses(db).values())
    attempts = [a for (a,) in db.conn().execute("SELECT attempts FROM letters WHERE state = 'submitted'")]
    assert len(attempts) == n
    # a letter in SMTP at a kill (at most 2 per kill) may have had a second try; no other one did
    assert sum(attempts) <= n + kills * 2, Counter(attempts)


@needs_root
def test_a_letter_in_exims_queue_but_not_its_log_is_found_by_message_id(
        exim_factory: Callable[..., Exim], capture: CaptureServer, tmp_path: Path) -> None:
    """The dead sender offered the letter, Exim wrote it to its queue and was killed before logging
    "<=": the restarted sender finds it in the spool by Message-ID and never submits it again."""
    exim = exim_factory(queue_only=True)
    log = tmp_path / "mainlog-without-the-arrival"
    log.write_text("")
    config_path = tmp_path / "agent.json"
    config_path.write_text(json.dumps({
        "data_dir": str(tmp_path / "data"), "smtp_port": exim.settings.smtp_port, "smtp_connections": 1,
        "exim_mainlog": str(log), "exim_spool": str(exim.spool_directory), "bounce_spool": str(exim.bounce_spool),
        "source_ips": ["127.0.0.2", "127.0.0.3"], "hostname": "agent.worker.test"}))
    config = load_config(config_path)
    db = QueueDB(config.queue_db)
    db.queue_batch("b1", campaign(), [make_recipient(1), make_recipient(2)])
    (claimed, _) = db.claim(2)
    letter = Renderer().render(campaign(), claimed.recipient())
    smtp = smtplib.SMTP("127.0.0.1", exim.settings.smtp_port, local_hostname="agent.test")
    assert db.mark_submitting([(claimed.id, smtp.sock.getsockname()[1])]) == {claimed.id}
    assert smtp.sendmail(letter.envelope_from, [letter.recipient], letter.data) == {}
    smtp.close()  # ... and the sender died here
    assert exim.queue_count() == 1
    sender = Sender(config, tmp_path / "sender.log")
    sender.start()
    try:
        wait_for(lambda: db.letter_state(1) == "submitted" and db.letter_state(2) == "submitted", "both recorded")
        time.sleep(1.0)
        assert exim.queue_count() == 2  # letter 2 submitted, letter 1 not again
    finally:
        assert sender.stop() == 0
    (exim_id,) = db.conn().execute("SELECT exim_id FROM letters WHERE id = 1").fetchone()
    assert exim_id and list((exim.spool_directory / "input").rglob(f"{exim_id}-H"))
    assert [(e["id"], e["status"]) for e in db.outcomes(0)["events"] if e["id"] == 1] == [(1, "sent")]
    exim.force_queue_run()
    wait_for(lambda: capture.count() == 2, "two letters at the capture")
    time.sleep(0.5)
    assert sorted(m.rcpt_to for m in capture.messages()) == ["user1@example.org", "user2@example.org"]
    assert "Traceback" not in sender.output()
    db.close()


def test_a_rendered_letter_keeps_its_message_id() -> None:
    """The same delivery rendered again (after a crash) carries the same Message-ID: the spool lookup
    and the capture's count rely on it."""
    renderer = Renderer()
    first = renderer.render(campaign(), make_recipient(7))
    again = Renderer().render(campaign(), make_recipient(7))
    other = renderer.render(campaign(), make_recipient(8))

    def mid(letter: Any) -> bytes:
        return next(line for line in letter.data.split(b"\r\n") if line.startswith(b"Message-ID:"))

    assert mid(first) == mid(again) != mid(other)


# -- the reconciler, with real sockets and a log file: the catch-up read defect -------------------

ARRIVAL = ("2026-11-28 00:38:10 1xX6SA-0004im-2N <= bounce+1-tok1@bounces.test H=(agent.test) [127.0.0.1] "
           "I=[127.0.0.1]:40905 P=esmtp S=297 for user1@example.org\n")


class FakeExim:
    """A listening socket and one accepted connection: what /proc/net/tcp shows of Exim's side."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.client = socket.create_connection(("127.0.0.1", self.port))
        self.client_port = self.client.getsockname()[1]
        self.conn, _ = self.server.accept()

    def close(self) -> None:
        for s in (self.client, self.conn, self.server):
            s.close()


@pytest.fixture
def reconcile_setup(queue_db: QueueDB, tmp_path: Path) -> Iterator[tuple[QueueDB, FakeExim, Path, Any]]:
    from worker_agent.reconcile import Reconciler

    fake = FakeExim()
    queue_db.queue_batch("b", make_campaign(), [make_recipient(1, token="1-tok1")])
    queue_db.claim(1)
    assert queue_db.mark_submitting([(1, fake.client_port)]) == {1}
    fake.client.close()  # the sender died; "Exim" still holds its side of the connection
    log = tmp_path / "mainlog"
    log.write_text("")
    spool = tmp_path / "spool"
    (spool / "input").mkdir(parents=True)
    reader = EximLogReader(queue_db, log, claim_wait=0.1)
    reconciler = Reconciler(queue_db, reader, spool, fake.port, max_attempts=5)
    try:
        yield queue_db, fake, log, reconciler
    finally:
        reader.close()
        fake.close()


def _catch_up(reconciler: Any) -> None:
    while reconciler.reader.poll():
        pass


def test_an_arrival_logged_after_the_catch_up_read_is_not_sent_twice(reconcile_setup: tuple) -> None:
    db, fake, log, reconciler = reconcile_setup
    _catch_up(reconciler)  # the restarted sender read the log to its end: nothing yet
    for _ in range(3):
        reconciler.step()
        assert db.letter_state(1) == "submitting"  # Exim may still be taking it in: never claimable
        assert db.claim(10) == []
    with open(log, "a") as f:  # Exim logs its "<=" only now, then closes the connection
        f.write(ARRIVAL)
    fake.conn.close()
    reconciler.step()
    _catch_up(reconciler)
    reconciler.step()
    _catch_up(reconciler)
    reconciler.step()
    assert db.conn().execute("SELECT state, exim_id, attempts FROM letters").fetchall() == [
        ("submitted", "1xX6SA-0004im-2N", 1)]
    assert [(e["id"], e["status"]) for e in db.outcomes(0)["events"]] == [(1, "sent")]
    assert reconciler.pending() == 0


def test_a_letter_exim_never_took_goes_back_to_the_queue_once_exim_is_done(reconcile_setup: tuple) -> None:
    db, fake, log, reconciler = reconcile_setup
    _catch_up(reconciler)
    reconciler.step()
    assert db.letter_state(1) == "submitting"
    fake.conn.close()  # Exim closed the connection without taking the letter
    for _ in range(3):  # seen closed; log read to its end, queue searched; log read to its end again
        reconciler.step()
        _catch_up(reconciler)
    reconciler.step()
    assert db.letter_state(1) == "queued"
    (claimed,) = db.claim(1)
    assert claimed.attempts == 2  # the offer that reached Exim counted; the claim again
    assert db.outcomes(0)["events"] == []


def test_the_log_counts_as_read_to_its_end_only_when_it_was(queue_db: QueueDB, tmp_path: Path) -> None:
    """A read that reached the end of the file says so even with lines in it (a busy log seldom
    gives an empty read); a part line, or a file rotated away meanwhile, does not."""
    log = tmp_path / "mainlog"
    log.write_text("2026-11-28 00:38:10 Start queue run: pid=1\n" * 3)
    reader = EximLogReader(queue_db, log)
    before = time.time()
    assert reader.poll() == 3
    assert reader.caught_up >= before
    seen = reader.caught_up
    with open(log, "a") as f:
        f.write("2026-11-28 00:38:11 End queue")  # Exim half way through a line
    assert reader.poll() == 0 and reader.caught_up == seen
    with open(log, "a") as f:
        f.write(" run: pid=1\n")
    assert reader.poll() == 1 and reader.caught_up > seen
    seen = reader.caught_up
    os.rename(log, tmp_path / "mainlog.1")
    log.write_text("2026-11-28 00:38:12 Start queue run: pid=2\n")
    with open(tmp_path / "mainlog.1", "a") as f:
        f.write("2026-11-28 00:38:12 End queue run: pid=1\n")
    assert reader.poll() == 1 and reader.caught_up == seen  # the old file's end is not the log's
    assert reader.poll() == 0 and reader.caught_up == seen  # switched to the new file: not read yet
    assert reader.poll() == 1 and reader.caught_up > seen
    reader.close()
