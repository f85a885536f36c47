"""The sender and a template past a render limit (issue 12, point 2): that letter fails with the
limit and line as its reason, the sender keeps running, and the other letters go out."""

from __future__ import annotations

import os

import psutil
import pytest

from devserver.mail_capture import CaptureServer
from tests.helpers import wait_for
from tests.template_bombs import BOMBS, DATA_LOOPS

from .conftest import make_recipient
from .test_sender_exim import agent, campaign, events, make_agent, statuses  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a real Exim with its own config needs root")
BYE = "\nUnsubscribe: {{ unsubscribe_url }}\n"


def test_a_letter_past_a_limit_fails_alone_and_the_sender_goes_on(agent: tuple, capture: CaptureServer) -> None:
    config, sender, db = agent
    loops = campaign(id=1, text="Hi {{ name }}\n" + DATA_LOOPS + BYE, html=None)
    bomb = campaign(id=2, text="Hi {{ name }}\n" + BOMBS["repeated string"][0] + BYE, html=None)
    assert db.queue_batch("b1", loops, [
        make_recipient(1, email="many@example.org", token="1-many", fields={"name": "Ann", "n": "100000"}),
        make_recipient(2, email="few@example.org", token="2-few", fields={"name": "Bob", "n": "3"}),
    ]) == (2, 0)
    assert db.queue_batch("b2", bomb, [make_recipient(3, email="bomb@example.org", token="3-bomb")]) == (1, 0)
    sender.start()
    expected = {1: ["failed"], 2: ["sent", "delivered"], 3: ["failed"]}
    wait_for(lambda: statuses(db) == expected, f"events {expected}, have {statuses(db)}")
    reasons = {e["id"]: e["text"] for e in events(db) if e["status"] == "failed"}
    assert reasons[1].startswith("letter could not be built: text template, line 2: the template repeats loops "
                                 "more than 100,000 times"), reasons[1]
    assert reasons[3].startswith("letter could not be built: text template, line 2: a text or list grows to "
                                 "10,000,000,000 characters"), reasons[3]
    (message,) = [m for m in capture.messages() if m.rcpt_to == "few@example.org"]
    assert "xxxxxxxxx" in message.message.get_content()
    states = dict(db.conn().execute("SELECT id, state FROM letters"))
    assert states == {1: "failed", 2: "submitted", 3: "failed"}
    assert psutil.Process(sender.process.pid).memory_info().rss < 200 << 20
    assert sender.process.poll() is None  # still running; the fixture checks it stops cleanly, no traceback
