"""IP warm-up end to end (issue 9, points 6 and 10): the panel (API), its daemon, a worker's agent
and Exim, the capture. Days are compressed to a few seconds (MAILFLEET_WARMUP_DAY_SECONDS): the
source IP put on a schedule sends no more than each day allows, the rest waits for the next day
(never failed), every letter arrives once, and the server's API shows the day and what is left."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import pytest

from devserver.stack import LocalStack
from tests.helpers import wait_for

from .conftest import Api, running_stack

DAY = 6  # s
CAPS = [3, 5]  # letters a day to each provider on days 1 and 2; warm from day 3
LETTERS = 12
DOMAIN = "warmup.example"
PANEL_ENV = {"MAILFLEET_WARMUP_DAY_SECONDS": str(DAY), "MAILFLEET_DAEMON_INTERVAL": "0.2"}


@pytest.fixture(scope="module")
def stack(exim_tmp_base: Path, databases) -> Iterator[LocalStack]:
    with running_stack(exim_tmp_base, databases, panel_env=PANEL_ENV) as running:
        yield running


def _put(api: Api, path: str, body: dict) -> dict:
    response = api.session.put(api.base + path, json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _agent_view(stack: LocalStack) -> tuple:
    """What the agent holds (for a failure's message): its plans and counts, its letters' times."""
    with closing(sqlite3.connect(stack.workers[0].agent_dir / "data" / "queue.sqlite3")) as queue:
        return (queue.execute("SELECT value FROM agent_state WHERE key = 'remote_config'").fetchone(),
                queue.execute("SELECT * FROM warmup_sent").fetchall(),
                queue.execute("SELECT id, source_ip, submitting_at FROM letters").fetchall())


def test_a_warming_ip_sends_no_more_than_each_day_allows(stack: LocalStack, api: Api) -> None:
    server_id = stack.workers[0].server_id
    wait_for(lambda: api.get(f"/servers/{server_id}")["status"] == "online", what="the server online", timeout=60)

    def applied() -> bool:
        config = api.get(f"/servers/{server_id}/config")
        return config["config_applied"] == config["config_version"]

    ip, other = "127.0.0.2", "127.0.0.3"
    _put(api, f"/servers/{server_id}/config", {"ips": {other: {"active": False}}})  # every letter from `ip`
    schedule = [{"day": day, "limits": {"*": cap}} for day, cap in enumerate(CAPS, start=1)]
    plan = _put(api, f"/servers/{server_id}/warmup", {"ips": {ip: {"enabled": True, "schedule": schedule}}})["ips"][ip]
    start = datetime.fromisoformat(plan["start"].replace("Z", "+00:00")).astimezone(timezone.utc).timestamp()

    wait_for(applied, what="the warm-up plan on the agent", timeout=30)
    # start sending early in a day, so that none of that day's letters can arrive in the next
    wait_for(lambda: (time.time() - start) % DAY < 0.5, what="a day's start", timeout=DAY + 1, interval=0.05)
    first_day = int((time.time() - start) // DAY) + 1

    list_id = api.post("/lists", {"name": DOMAIN})["id"]
    api.post(f"/lists/{list_id}/recipients", [{"email": f"r{i}@{DOMAIN}"} for i in range(LETTERS)])
    campaign = api.post("/campaigns", {"name": DOMAIN, "subject": "Warm-up", "from_email": "news@sender.example",
                                       "text": "Hello.\n{{ unsubscribe_url }}\n", "lists": [list_id]})
    api.post(f"/campaigns/{campaign['id']}/start", {})
    wait_for(lambda: api.get(f"/campaigns/{campaign['id']}/stats")["delivered"] == LETTERS,
             what=f"all {LETTERS} letters delivered", timeout=(len(CAPS) + 3) * DAY + 30)

    arrived = [m for m in stack.capture.messages() if m.rcpt_to.endswith("@" + DOMAIN)]
    assert len(arrived) == LETTERS and len({m.rcpt_to for m in arrived}) == LETTERS  # each once
    assert {m.peer_ip for m in arrived} == {ip}
    per_day: dict[int, int] = {}
    for m in arrived:
        day = int((m.received_at - start) // DAY) + 1
        per_day[day] = per_day.get(day, 0) + 1
    expected, left = {}, LETTERS
    for day in range(first_day, first_day + 10):  # what the schedule lets through from the first day on
        cap = CAPS[day - 1] if day <= len(CAPS) else left
        if left:
            expected[day] = min(left, cap)
            left -= expected[day]
    assert per_day == expected, (per_day, first_day, _agent_view(stack), start)
    assert api.get(f"/campaigns/{campaign['id']}/stats")["failed"] == 0

    # the server's API shows the IP's day (warm by now) from its plan and the agent's report
    (shown,) = api.get(f"/servers/{server_id}")["warmup"]
    assert shown["source_ip"] == ip and shown["days"] == len(CAPS) and shown["warm"]
