"""The agent API as the panel uses it: sealed bodies, refusals that change nothing, real TLS."""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cryptography.fernet
import pytest
import urllib3

from devserver.ports import free_port
from worker_agent import protocol
from worker_agent.api import create_app
from worker_agent.config import AgentConfig
from worker_agent.queue import QueueDB

from .conftest import make_campaign, make_recipient

REPO = Path(__file__).resolve().parents[2]


def batch(batch_id: str = "c12-s3-000001", ids: range = range(1, 4), **campaign: Any) -> dict[str, Any]:
    return {"batch_id": batch_id, "campaign": make_campaign(**campaign), "recipients": [make_recipient(i) for i in ids]}


def snapshot(db_path: Path) -> dict[str, list[tuple]]:
    """Every row of every table: what "changes nothing" is checked against."""
    conn = sqlite3.connect(db_path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    finally:
        conn.close()


class Panel:
    """What the panel does: seal, post, check the reply belongs to the request, open it."""

    def __init__(self, client: Any, key: bytes) -> None:
        self.client, self.key = client, key

    def post_raw(self, path: str, body: bytes) -> tuple[int, bytes]:
        response = self.client.post(path, data=body, headers={"Content-Type": protocol.CONTENT_TYPE})
        return response.status_code, response.data

    def call(self, path: str, data: Any) -> tuple[int, Any]:
        nonce, body = protocol.seal(self.key, path, data)
        status, reply = self.post_raw(path, body)
        if status == 403:
            return status, reply.decode()
        opened = protocol.unseal(self.key, path, reply)
        assert opened.reply_to == nonce
        return status, opened.data


@pytest.fixture
def panel(agent_config: AgentConfig) -> Panel:
    app = create_app(agent_config)
    return Panel(app.test_client(), agent_config.read_key())


def test_ping(panel: Panel) -> None:
    status, reply = panel.call("/v1/ping", {})
    assert status == 200
    assert reply["ok"] is True and reply["queued"] == 0 and reply["sending"] == 0
    assert abs(reply["time"] - time.time()) < 5 and reply["version"]


def test_a_batch_pushed_twice_queues_once(panel: Panel, agent_config: AgentConfig) -> None:
    assert panel.call("/v1/batches", batch()) == (200, {"batch_id": "c12-s3-000001", "queued": 3, "duplicates": 0})
    assert panel.call("/v1/batches", batch()) == (200, {"batch_id": "c12-s3-000001", "queued": 0, "duplicates": 3})
    # another batch id with one known recipient
    assert panel.call("/v1/batches", batch("c12-s3-000002", range(3, 5)))[1]["queued"] == 1
    assert panel.call("/v1/ping", {})[1]["queued"] == 4
    rows = sqlite3.connect(agent_config.queue_db).execute("SELECT id, email, token FROM letters ORDER BY id").fetchall()
    assert rows == [(i, f"user{i}@example.org", f"{i}-3f2a9c1b7e") for i in range(1, 5)]


@pytest.mark.parametrize("body, message", [
    ({"batch_id": "", "campaign": make_campaign(), "recipients": []}, "batch_id"),
    ({"batch_id": "x", "campaign": make_campaign(text="{% for %}"), "recipients": []}, "text template, line 1"),
    ({"batch_id": "x", "campaign": make_campaign(encoding="8bit"), "recipients": []}, "encoding"),
    ({"batch_id": "x", "campaign": make_campaign(), "recipients": [make_recipient(1, token="a b")]}, "recipients[0]"),
    ({"batch_id": "x", "campaign": make_campaign(), "recipients": [make_recipient(1, source_ip="nope")]}, "recipients[0]"),
    ({"batch_id": "x", "campaign": make_campaign(), "recipients": [make_recipient(1), {"id": 2}]}, "recipients[1]"),
    ([1, 2], "JSON object"),
    ({"batch_id": "x", "campaign": make_campaign(), "recipients": [make_recipient(i) for i in range(1, 5002)]},
     "at most 5000"),
])
def test_a_bad_batch_is_a_sealed_400_and_queues_nothing(panel: Panel, agent_config: AgentConfig, body: Any,
                                                         message: str) -> None:
    status, reply = panel.call("/v1/batches", body)
    assert status == 400 and message in reply["error"]
    assert snapshot(agent_config.queue_db)["letters"] == []
    assert snapshot(agent_config.queue_db)["batches"] == []


REFUSALS = {
    "wrong key": "not sealed with this worker's key", "tampered": "altered", "replayed": "replayed",
    "stale": "stale", "future": "future", "wrong path": "not meant for /v1/batches",
    "not sealed": "not sealed", "empty": "not sealed",
}


@pytest.mark.parametrize("attack", list(REFUSALS))
def test_refused_requests_change_nothing(panel: Panel, agent_config: AgentConfig, attack: str,
                                         monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    panel.call("/v1/batches", batch("first"))
    path, data = "/v1/batches", batch("second", range(10, 12))
    if attack == "wrong key":
        _, body = protocol.seal(protocol.new_key(), path, data)
    elif attack == "tampered":
        _, body = protocol.seal(panel.key, path, data)
        raw = bytearray(base64.urlsafe_b64decode(body))
        raw[40] ^= 1
        body = base64.urlsafe_b64encode(bytes(raw))
    elif attack == "replayed":
        _, body = protocol.seal(panel.key, "/v1/campaigns/state", {"campaign_id": 12, "state": "cancelled"})
        assert panel.post_raw("/v1/campaigns/state", body)[0] == 200
        path = "/v1/campaigns/state"
    elif attack in ("stale", "future"):
        shift = -protocol.MAX_AGE - 5 if attack == "stale" else protocol.CLOCK_SKEW + 30
        real_time = time.time
        monkeypatch.setattr(cryptography.fernet.time, "time", lambda: real_time() + shift)
        _, body = protocol.seal(panel.key, path, data)
        monkeypatch.undo()
    elif attack == "wrong path":
        _, body = protocol.seal(panel.key, "/v1/ping", data)
    elif attack == "not sealed":
        body = json.dumps(data).encode()
    else:
        body = b""
    before = snapshot(agent_config.queue_db)
    caplog.set_level("WARNING", logger="worker_agent.api")
    status, reply = panel.post_raw(path, body)
    assert status == 403
    assert reply.startswith(b"refused: ") and REFUSALS[attack] in reply.decode()
    assert snapshot(agent_config.queue_db) == before
    # the refusal is logged with its reason and nothing secret
    assert any(r.getMessage().startswith(f"refused {path}") for r in caplog.records)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert panel.key.decode() not in logged
    assert not body or body[:40].decode(errors="replace") not in logged


def test_a_replay_of_an_accepted_batch_is_refused(panel: Panel, agent_config: AgentConfig) -> None:
    _, body = protocol.seal(panel.key, "/v1/batches", batch("b", range(1, 3)))
    assert panel.post_raw("/v1/batches", body)[0] == 200
    before = snapshot(agent_config.queue_db)
    status, reply = panel.post_raw("/v1/batches", body)
    assert (status, reply) == (403, b"refused: message was replayed (nonce already seen)")
    assert snapshot(agent_config.queue_db) == before


def test_outcomes_and_ack(panel: Panel, agent_config: AgentConfig) -> None:
    panel.call("/v1/batches", batch("b", range(1, 4)))
    assert panel.call("/v1/campaigns/state", {"campaign_id": 12, "state": "cancelled"}) == (
        200, {"campaign_id": 12, "state": "cancelled", "affected": 3})
    status, reply = panel.call("/v1/outcomes", {"ack": 0})
    assert status == 200 and reply["more"] is False and reply["bounces"] == []
    assert [(e["id"], e["status"]) for e in reply["events"]] == [(1, "cancelled"), (2, "cancelled"), (3, "cancelled")]
    top = reply["events"][-1]["seq"]
    assert panel.call("/v1/outcomes", {"ack": top})[1]["events"] == []
    assert snapshot(agent_config.queue_db)["events"] == []
    assert panel.call("/v1/outcomes", {"ack": -1})[0] == 400


def test_campaign_state_transitions(panel: Panel) -> None:
    panel.call("/v1/batches", batch("b", range(1, 4)))
    assert panel.call("/v1/campaigns/state", {"campaign_id": 12, "state": "paused"})[1]["affected"] == 3
    assert panel.call("/v1/ping", {})[1]["queued"] == 3
    assert panel.call("/v1/campaigns/state", {"campaign_id": 12, "state": "running"})[1]["affected"] == 3
    status, reply = panel.call("/v1/campaigns/state", {"campaign_id": 12, "state": "stopped"})
    assert status == 400 and "state must be one of" in reply["error"]


def test_unknown_paths_and_methods(panel: Panel) -> None:
    assert panel.client.post("/v1/nothing").status_code == 404
    assert panel.client.get("/v1/ping").status_code == 405


# -- the real thing: gunicorn with TLS, started the way an operator starts it --------------------------


@pytest.fixture
def served_agent(write_config: Any, tmp_path: Path) -> Iterator[tuple[AgentConfig, str]]:
    port = free_port()
    config = write_config(listen=f"127.0.0.1:{port}")
    init = subprocess.run([sys.executable, "-m", "worker_agent", "init", "--config", str(config.path)],
                          cwd=REPO, capture_output=True, check=True)
    fingerprint = json.loads(init.stdout)["fingerprint"]
    log = open(tmp_path / "serve.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "worker_agent", "serve", "--config", str(config.path)],
                               cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                pinned_pool(port, fingerprint).request("POST", "/v1/ping", body=b"", retries=False)
                break
            except urllib3.exceptions.HTTPError:
                assert time.monotonic() < deadline, "agent API did not come up"
                time.sleep(0.1)
        yield config, fingerprint
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def pinned_pool(port: int, fingerprint: str) -> urllib3.HTTPSConnectionPool:
    """Trust exactly the certificate with this SHA-256 fingerprint, as the panel does."""
    return urllib3.HTTPSConnectionPool("127.0.0.1", port, cert_reqs="CERT_NONE", assert_fingerprint=fingerprint,
                                       timeout=10, retries=False)


def test_over_tls_with_the_certificate_pinned(served_agent: tuple[AgentConfig, str]) -> None:
    config, fingerprint = served_agent
    key, port = config.read_key(), config.listen_host_port[1]
    pool = pinned_pool(port, fingerprint)

    def call(path: str, data: Any) -> Any:
        nonce, body = protocol.seal(key, path, data)
        response = pool.request("POST", path, body=body, headers={"Content-Type": protocol.CONTENT_TYPE})
        assert response.status == 200, response.data
        assert response.headers["Content-Type"] == protocol.CONTENT_TYPE
        opened = protocol.unseal(key, path, response.data)
        assert opened.reply_to == nonce
        return opened.data

    assert call("/v1/batches", batch("tls-1", range(1, 101))) == {"batch_id": "tls-1", "queued": 100, "duplicates": 0}
    assert call("/v1/batches", batch("tls-1", range(1, 101)))["duplicates"] == 100
    assert call("/v1/ping", {})["queued"] == 100
    # a replay over the wire is refused in plain text
    _, body = protocol.seal(key, "/v1/ping", {})
    assert pool.request("POST", "/v1/ping", body=body).status == 200
    again = pool.request("POST", "/v1/ping", body=body)
    assert (again.status, again.data) == (403, b"refused: message was replayed (nonce already seen)")
    # a client pinning another certificate does not get through
    with pytest.raises(urllib3.exceptions.SSLError):
        pinned_pool(port, "0" * 64).request("POST", "/v1/ping", body=body)
