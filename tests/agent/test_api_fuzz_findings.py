"""Requests the fuzz run (bench/fuzz.py, tests/security/test_fuzz.py) found answered with a 500 or
a traceback, or changing the queue although refused: each is now refused in plain words."""

from __future__ import annotations

import pytest

from worker_agent.config import AgentConfig

from .test_api import Panel, panel, snapshot  # noqa: F401  (the fixture)


@pytest.mark.parametrize("path, data, message", [
    ("/v1/outcomes", {"ack": 10**30}, "ack must be a whole number"),
    ("/v1/outcomes", {"ack": 2**63}, "ack must be a whole number"),
    ("/v1/campaigns/state", {"campaign_id": 2**64, "state": "paused"}, "campaign_id must be"),
    ("/v1/campaigns/state", {"campaign_id": -(2**63) - 1, "state": "paused"}, "campaign_id must be"),
])
def test_numbers_past_sqlite_integers_are_a_400(panel: Panel, agent_config: AgentConfig, path: str, data: dict,
                                                message: str) -> None:
    """An ack or campaign id past 2**63 made SQLite raise OverflowError: a 500."""
    before = snapshot(agent_config.queue_db)
    status, reply = panel.call(path, data)
    assert status == 400 and message in reply["error"]
    after = snapshot(agent_config.queue_db)
    assert {t: rows for t, rows in after.items() if t != "nonces"} == {t: rows for t, rows in before.items() if t != "nonces"}
