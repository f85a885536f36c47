"""Requests the fuzz run (bench/fuzz.py, tests/security/test_fuzz.py) found answered with a 500 or
a traceback, or changing the queue although refused: each is now refused in plain words."""

from __future__ import annotations

import zlib

import pytest
from cryptography.fernet import Fernet

from worker_agent.config import AgentConfig

from .test_api import Panel, panel, snapshot  # noqa: F401  (the fixture)


def sealed_text(key: bytes, text: str) -> bytes:
    return Fernet(key).encrypt(zlib.compress(text.encode(), 1))


def test_a_sealed_body_nested_too_deeply_is_refused_not_a_500(panel: Panel, agent_config: AgentConfig) -> None:
    """A sealed message whose JSON nests 100,000 arrays deep made json.loads raise RecursionError (a 500)."""
    before = snapshot(agent_config.queue_db)
    body = sealed_text(panel.key, '{"path":"/v1/ping","nonce":"n1","data":' + "[" * 100_000 + "]" * 100_000 + "}")
    status, reply = panel.post_raw("/v1/ping", body)
    assert status == 403 and reply.startswith(b"refused: message body ") and b"deep" in reply
    assert snapshot(agent_config.queue_db) == before


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
    del before["nonces"], after["nonces"]  # the request's own nonce is kept (a replay is refused)
    assert after == before


def test_a_lone_surrogate_escape_is_refused_not_a_500(panel: Panel, agent_config: AgentConfig) -> None:
    """A batch id written as the JSON escape \\ud800 (half a character) made SQLite's UTF-8 encoding
    raise UnicodeEncodeError: a 500. A pair of escapes that makes one character stays fine."""
    before = snapshot(agent_config.queue_db)
    body = sealed_text(panel.key, '{"path":"/v1/batches","nonce":"n2","data":{"batch_id":"\\ud800"}}')
    status, reply = panel.post_raw("/v1/batches", body)
    assert status == 403 and b"lone surrogate" in reply
    assert snapshot(agent_config.queue_db) == before
    pair = '{"path":"/v1/ping","nonce":"n3","data":{"x":"\\ud83d\\ude00"}}'
    status, _ = panel.post_raw("/v1/ping", sealed_text(panel.key, pair))
    assert status == 200
