"""POST /v1/recall: the agent gives back letters not yet submitted to Exim, and says exactly which.

The queue and the API first (answer shapes, what a recall leaves behind, refusals that change
nothing), then the real sender with a real Exim delivering to the capture: recalled letters never
arrive and never produce an outcome, a letter the sender holds is not given back, and a recalled
letter pushed again in a later batch is sent once.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from devserver.exim import Exim
from devserver.mail_capture import CaptureServer
from tests.helpers import wait_for
from worker_agent.api import create_app
from worker_agent.config import AgentConfig
from worker_agent.queue import QueueDB
from worker_agent.setup_node import init_node

from .conftest import make_campaign, make_recipient
from .test_api import Panel, panel, snapshot  # noqa: F401  (the fixture)
from .test_sender_exim import campaign, make_agent, statuses  # noqa: F401  (the fixture)


def queue(db: QueueDB, batch_id: str, ids: range | list[int], campaign_id: int = 12, **recipient: Any) -> None:
    db.queue_batch(batch_id, make_campaign(id=campaign_id), [make_recipient(i, **recipient) for i in ids])


def states(db: QueueDB) -> dict[int, str]:
    return dict(db.conn().execute("SELECT id, state FROM letters ORDER BY id"))


def nothing_back(**buckets: list[int]) -> dict[str, list[int]]:
    return {"sending": [], "submitted": [], "finished": [], "unknown": [], **buckets}


# -- the queue --------------------------------------------------------------------------------------------


def test_recall_by_ids_answers_every_id_in_exactly_one_bucket(queue_db: QueueDB) -> None:
    queue(queue_db, "b1", range(1, 7))
    assert [c.id for c in queue_db.claim(3)] == [1, 2, 3]
    queue_db.finish(submitted=[(2, "1xX6SA-0004im-2N", 250, "250 OK id=1xX6SA-0004im-2N")],
                    failed=[(3, 550, "550 refused")])
    # 1 claimed, 2 submitted, 3 failed, 4-6 queued; 99 never pushed; 5 asked twice
    reply = queue_db.recall(ids=[1, 2, 3, 4, 5, 99, 5])
    assert reply == {"recalled": [4, 5],
                     "not_recalled": nothing_back(sending=[1], submitted=[2], finished=[3], unknown=[99])}
    assert states(queue_db) == {1: "claimed", 2: "submitted", 3: "failed", 6: "queued"}  # 4 and 5 are gone
    assert queue_db.counts() == (1, 1)
    # asked again (the reply was lost): nothing more is given back, and 4 and 5 are no longer the agent's
    assert queue_db.recall(ids=[4, 5]) == {"recalled": [], "not_recalled": nothing_back(unknown=[4, 5])}
    # the sender never sees them and no outcome is ever reported for them
    assert [c.id for c in queue_db.claim(10)] == [6]
    assert {e["id"] for e in queue_db.outcomes(0)["events"]} == {2, 3}


def test_a_letter_the_sender_holds_or_has_tried_is_not_recalled(queue_db: QueueDB) -> None:
    """A letter waiting for a retry after the connection to Exim was lost (perhaps after DATA: Exim
    may hold it, its log will say) stays the agent's, like one the sender holds; a letter held back
    by a rate limit never went to Exim and is given back."""
    queue(queue_db, "b1", range(1, 5))
    assert [c.id for c in queue_db.claim(10)] == [1, 2, 3, 4]
    queue_db.finish(retry=[(3, time.time() + 30, None, "connection to local Exim lost")],
                    release=[(4, time.time() + 30)])
    assert states(queue_db) == {1: "claimed", 2: "claimed", 3: "queued", 4: "queued"}
    assert queue_db.recall(ids=[1, 2, 3, 4]) == {"recalled": [4], "not_recalled": nothing_back(sending=[1, 2, 3])}
    assert queue_db.recall(campaign_id=12) == {"recalled": [], "not_recalled": {"sending": [1, 2, 3]}, "more": False}
    assert states(queue_db) == {1: "claimed", 2: "claimed", 3: "queued"}


def test_recalls_racing_the_senders_claims_never_share_a_letter(tmp_path: Any) -> None:
    """A sender claiming from one connection while recalls arrive on another: every letter ends
    either claimed or given back, never both, and each recall's answer says which."""
    db = QueueDB(tmp_path / "queue.sqlite3")
    for b in range(4):
        queue(db, f"b{b}", range(b * 500 + 1, b * 500 + 501))
    claimed: list[int] = []
    done = threading.Event()

    def sender() -> None:
        other = QueueDB(db.path)
        while not done.is_set():
            claimed.extend(c.id for c in other.claim(3))
            time.sleep(0.002)  # slower than the recalls, which come down from the top to meet it
        other.close()

    thread = threading.Thread(target=sender)
    thread.start()
    recalled: list[int] = []
    sending: list[int] = []
    try:
        wait_for(lambda: claimed, "the sender's first claim", interval=0.001)
        for first in range(1951, 0, -50):  # from the top while the sender claims from the bottom: they meet
            reply = db.recall(ids=list(range(first, first + 50)))
            recalled += reply["recalled"]
            sending += reply["not_recalled"]["sending"]
            assert reply["not_recalled"]["unknown"] == reply["not_recalled"]["submitted"] == []
    finally:
        done.set()
        thread.join()
    assert recalled and claimed, "the race did not happen: both sides must take letters"
    assert not set(recalled) & set(claimed)
    assert sorted(recalled + claimed) == list(range(1, 2001))
    assert sending and set(sending) <= set(claimed)  # the recalls met letters the sender held
    assert states(db) == {i: "claimed" for i in claimed}
    db.close()


def test_a_letter_released_unstarted_is_recalled(queue_db: QueueDB) -> None:
    queue(queue_db, "b1", range(1, 3))
    queue_db.claim(2)
    queue_db.finish(release=[(1, time.time() + 60), (2, 0.0)])  # a rate-limit hold; a stopping sender
    assert queue_db.recall(ids=[1, 2])["recalled"] == [1, 2]
    assert states(queue_db) == {}


def test_a_recalled_id_is_queued_again_by_a_later_batch_not_by_the_old_one(queue_db: QueueDB) -> None:
    queue(queue_db, "b1", range(1, 4))
    assert queue_db.recall(ids=[1, 2])["recalled"] == [1, 2]
    queue(queue_db, "b1", range(1, 4))  # the old batch pushed again: batch-level idempotency holds
    assert states(queue_db) == {3: "queued"}
    assert queue_db.queue_batch("b2", make_campaign(), [make_recipient(i, email=f"new{i}@example.org")
                                                        for i in (1, 3)]) == (1, 1)
    assert states(queue_db) == {1: "queued", 3: "queued"}
    assert queue_db.conn().execute("SELECT email FROM letters WHERE id = 1").fetchone() == ("new1@example.org",)


def test_recall_of_a_campaign_takes_its_letters_and_pages(queue_db: QueueDB) -> None:
    queue(queue_db, "b1", range(1, 9), campaign_id=12)
    queue(queue_db, "b2", range(100, 103), campaign_id=13)
    queue_db.set_campaign_state(12, "paused")
    queue_db.set_campaign_state(13, "paused")
    queue_db.set_campaign_state(12, "running")
    assert [c.id for c in queue_db.claim(2)] == [1, 2]
    queue_db.finish(submitted=[(2, None, 250, "250 OK")])
    queue_db.set_campaign_state(12, "paused")
    # 1 claimed, 2 submitted (not listed: Exim has it), 3-8 queued and paused
    assert queue_db.recall(campaign_id=12, limit=4) == {
        "recalled": [3, 4, 5], "not_recalled": {"sending": [1]}, "more": True, "next_after": 5}
    assert queue_db.recall(campaign_id=12, after=5, limit=4) == {
        "recalled": [6, 7, 8], "not_recalled": {"sending": []}, "more": False}
    assert queue_db.recall(campaign_id=12) == {"recalled": [], "not_recalled": {"sending": [1]}, "more": False}
    assert states(queue_db) == {1: "claimed", 2: "submitted", 100: "queued", 101: "queued", 102: "queued"}
    assert queue_db.counts() == (3, 1)


def test_recall_by_address_for_a_suppression(queue_db: QueueDB) -> None:
    queue(queue_db, "b1", [1, 2], campaign_id=12)
    queue_db.queue_batch("b2", make_campaign(id=13), [make_recipient(3, email="Ann@Example.org"),
                                                      make_recipient(4, email="bob@example.org")])
    queue_db.queue_batch("b3", make_campaign(id=14), [make_recipient(5, email="ann@example.org")])
    queue_db.set_campaign_state(12, "paused")
    queue_db.set_campaign_state(14, "paused")
    assert [c.id for c in queue_db.claim(5)] == [3, 4]  # campaign 13 runs
    assert queue_db.recall(emails=["ann@example.org"], campaign_ids=[12, 14]) == {
        "recalled": [5], "not_recalled": {"sending": []}, "more": False}
    # any case of the address; the letter the sender holds stays the agent's
    assert queue_db.recall(emails=["ANN@example.ORG", "user1@example.org", "nobody@example.org"]) == {
        "recalled": [1], "not_recalled": {"sending": [3]}, "more": False}
    assert states(queue_db) == {2: "queued", 3: "claimed", 4: "claimed"}


# -- the API ------------------------------------------------------------------------------------------------


def test_recall_over_the_api(panel: Panel, agent_config: AgentConfig) -> None:
    batch = {"batch_id": "c12-000001", "campaign": make_campaign(), "recipients": [make_recipient(i) for i in (1, 2, 3)]}
    assert panel.call("/v1/batches", batch)[0] == 200
    assert panel.call("/v1/recall", {"ids": [1, 7]}) == (
        200, {"recalled": [1], "not_recalled": nothing_back(unknown=[7])})
    assert panel.call("/v1/recall", {"emails": ["user2@example.org"], "campaign_ids": [12]}) == (
        200, {"recalled": [2], "not_recalled": {"sending": []}, "more": False})
    assert panel.call("/v1/recall", {"campaign_id": 12, "after": 0}) == (
        200, {"recalled": [3], "not_recalled": {"sending": []}, "more": False})
    assert panel.call("/v1/ping", {})[1]["queued"] == 0
    assert panel.call("/v1/batches", batch)[1] == {"batch_id": "c12-000001", "queued": 0, "duplicates": 3}
    assert panel.call("/v1/batches", {**batch, "batch_id": "c12-000002"})[1]["queued"] == 3
    assert panel.call("/v1/outcomes", {"ack": 0})[1]["events"] == []


TOO_MANY = 10_001


@pytest.mark.parametrize("body, message", [
    ([1], "request body must be a JSON object"),
    ({}, "give exactly one of ids, campaign_id or emails"),
    ({"ids": [1], "campaign_id": 12}, "give exactly one of ids, campaign_id or emails"),
    ({"ids": [1], "emails": ["a@example.org"]}, "give exactly one of ids, campaign_id or emails"),
    ({"ids": [1], "campaign": 12}, "unknown field 'campaign'"),
    ({"ids": 1}, "ids must be a list of at most 10000 delivery ids"),
    ({"ids": list(range(TOO_MANY))}, "ids must be a list of at most 10000 delivery ids"),
    ({"ids": [1, "2"]}, "ids[1] must be a whole number"),
    ({"ids": [1, True]}, "ids[1] must be a whole number"),
    ({"ids": [1.5]}, "ids[0] must be a whole number"),
    ({"ids": [2**63]}, "ids[0] must be a whole number"),
    ({"campaign_id": "12"}, "campaign_id must be a whole number"),
    ({"campaign_id": 2**64}, "campaign_id must be a whole number"),
    ({"campaign_id": 12, "after": 2**63}, "after must be a whole number"),
    ({"campaign_id": 12, "after": None}, "after must be a whole number"),
    ({"ids": [1], "after": 0}, "after goes with campaign_id or emails"),
    ({"campaign_id": 12, "campaign_ids": [12]}, "campaign_ids goes with emails"),
    ({"emails": "ann@example.org"}, "emails must be a list of at most 10000 addresses"),
    ({"emails": ["x@example.org"] * TOO_MANY}, "emails must be a list of at most 10000 addresses"),
    ({"emails": ["ann@example.org", ""]}, "emails[1] must be an address"),
    ({"emails": [None]}, "emails[0] must be an address"),
    ({"emails": ["a" * 321 + "@example.org"]}, "emails[0] must be an address"),
    ({"emails": ["a@example.org"], "campaign_ids": [12, -(2**63) - 1]}, "campaign_ids[1] must be a whole number"),
    ({"emails": ["a@example.org"], "campaign_ids": list(range(TOO_MANY))},
     "campaign_ids must be a list of at most 10000 campaign ids"),
])
def test_a_bad_recall_is_a_sealed_400_and_changes_nothing(panel: Panel, agent_config: AgentConfig, body: Any,
                                                           message: str) -> None:
    batch = {"batch_id": "b", "campaign": make_campaign(), "recipients": [make_recipient(i) for i in (1, 2)]}
    assert panel.call("/v1/batches", batch)[0] == 200
    before = snapshot(agent_config.queue_db)
    status, reply = panel.call("/v1/recall", body)
    assert status == 400 and message in reply["error"], reply
    after = snapshot(agent_config.queue_db)
    del before["nonces"], after["nonces"]  # the request's own nonce is kept (a replay is refused)
    assert after == before


# -- the real sender and Exim ----------------------------------------------------------------------------------


@contextmanager
def exim_frozen(exim: Exim) -> Iterator[None]:
    """Exim's daemon stopped: connections wait in its backlog for the greeting, so the sender
    holds what it has claimed until the daemon goes on."""
    pid = int(exim.pid_file.read_text().split()[0])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def api(config: AgentConfig) -> Panel:
    init_node(config)
    return Panel(create_app(config).test_client(), config.read_key())


def test_recalled_letters_never_arrive_nor_report_an_outcome(make_agent: Callable[..., tuple],
                                                             capture: CaptureServer) -> None:
    config, sender, db = make_agent()
    agent = api(config)
    recipients = [make_recipient(i) for i in range(1, 41)]
    assert agent.call("/v1/batches", {"batch_id": "b1", "campaign": campaign(), "recipients": recipients})[0] == 200
    assert agent.call("/v1/campaigns/state", {"campaign_id": 12, "state": "paused"})[0] == 200
    other = {"batch_id": "b2", "campaign": campaign(id=13), "recipients": [make_recipient(i) for i in range(41, 51)]}
    assert agent.call("/v1/batches", other)[0] == 200
    assert agent.call("/v1/campaigns/state", {"campaign_id": 13, "state": "paused"})[0] == 200
    sender.start()
    wait_for(lambda: "sender started" in sender.output(), "the sender to start")
    status, reply = agent.call("/v1/recall", {"campaign_id": 13})
    assert (status, reply) == (200, {"recalled": list(range(41, 51)), "not_recalled": {"sending": []}, "more": False})
    assert agent.call("/v1/campaigns/state", {"campaign_id": 13, "state": "running"})[1]["affected"] == 0
    status, reply = agent.call("/v1/recall", {"ids": list(range(1, 21))})
    assert (status, reply) == (200, {"recalled": list(range(1, 21)), "not_recalled": nothing_back()})
    status, reply = agent.call("/v1/recall", {"emails": [f"user{i}@example.org" for i in range(21, 31)]})
    assert (status, reply) == (200, {"recalled": list(range(21, 31)), "not_recalled": {"sending": []}, "more": False})
    assert agent.call("/v1/campaigns/state", {"campaign_id": 12, "state": "running"})[1]["affected"] == 10
    wait_for(lambda: capture.count() == 10, "the ten letters not recalled")
    wait_for(lambda: len(statuses(db)) == 10 and all(s == ["sent", "delivered"] for s in statuses(db).values()),
             "sent and delivered for each of the ten")
    time.sleep(1.5)  # nothing more may come
    assert sorted(m.rcpt_to for m in capture.messages()) == sorted(f"user{i}@example.org" for i in range(31, 41))
    assert sorted(statuses(db)) == list(range(31, 41))


def test_a_letter_the_sender_holds_is_not_recalled_and_a_recalled_one_comes_back_once(
        make_agent: Callable[..., tuple], capture: CaptureServer, exim: Exim) -> None:
    config, sender, db = make_agent(smtp_connections=2)
    agent = api(config)
    recipients = [make_recipient(i) for i in range(1, 301)]
    assert agent.call("/v1/batches", {"batch_id": "b1", "campaign": campaign(), "recipients": recipients})[0] == 200
    with exim_frozen(exim):
        sender.start()
        # the sender claims what it has room for and waits on Exim's greeting
        held = wait_for(lambda: db.counts()[1], "letters claimed by the sender")
        time.sleep(0.5)
        assert db.counts()[1] == held
        claimed = [i for (i,) in db.conn().execute("SELECT id FROM letters WHERE state = 'claimed' ORDER BY id")]
        status, reply = agent.call("/v1/recall", {"ids": list(range(1, 301))})
        assert status == 200
        assert reply["not_recalled"] == nothing_back(sending=claimed)
        assert sorted(reply["recalled"] + claimed) == list(range(1, 301)) and reply["recalled"]
        recalled = reply["recalled"]
    wait_for(lambda: capture.count() == len(claimed), f"the {len(claimed)} letters the sender held")
    # a later batch hands some recalled letters back; the old batch pushed again changes nothing
    back = recalled[:10]
    assert agent.call("/v1/batches", {"batch_id": "b1", "campaign": campaign(), "recipients": recipients})[1] == {
        "batch_id": "b1", "queued": 0, "duplicates": 300}
    assert agent.call("/v1/batches", {"batch_id": "b2", "campaign": campaign(),
                                      "recipients": [make_recipient(i) for i in back + claimed[:5]]})[1] == {
        "batch_id": "b2", "queued": 10, "duplicates": 5}
    expected = sorted(claimed + back)
    wait_for(lambda: sorted(statuses(db)) == expected and all(s == ["sent", "delivered"] for s in statuses(db).values()),
             "sent and delivered once for the held letters and the ten handed back")
    time.sleep(1.5)  # nothing more may come
    assert sorted(int(m.rcpt_to[4:].split("@")[0]) for m in capture.messages()) == expected
    assert sorted(statuses(db)) == expected
