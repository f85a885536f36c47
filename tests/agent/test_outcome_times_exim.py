"""Exim's own time reaches the events: a real Exim (the role's config) delivering to the capture,
the real sender reading its main log (issue 9: outcome times are when Exim logged them)."""

from __future__ import annotations

import os
import re
import time
from datetime import datetime

import pytest

from devserver.exim import Exim
from devserver.mail_capture import CaptureServer
from tests.helpers import wait_for

from .conftest import make_recipient
from .test_sender_exim import agent, campaign, events, make_agent  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a real Exim with its own config needs root")


def test_a_delivery_event_carries_the_time_exim_logged_it(agent: tuple, capture: CaptureServer, exim: Exim) -> None:
    config, sender, db = agent
    before = time.time()
    assert db.queue_batch("b1", campaign(), [make_recipient(1, email="ok@example.org", token="1-OkTok")]) == (1, 0)
    sender.start()
    delivered = wait_for(lambda: [e for e in events(db) if e["status"] == "delivered"], "the delivered event")[0]
    after = time.time()
    exim_id = db.conn().execute("SELECT exim_id FROM letters WHERE id = 1").fetchone()[0]
    (line,) = [line for line in exim.mainlog.read_text().splitlines() if f"{exim_id} => ok@example.org" in line]
    # the role's config logs the zone (log_timezone): the time on the line is unambiguous
    stamp = re.match(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}) ", line)
    assert stamp is not None, line
    assert delivered["at"] == datetime.strptime(stamp[1], "%Y-%m-%d %H:%M:%S %z").timestamp()
    assert int(before) <= delivered["at"] <= after
