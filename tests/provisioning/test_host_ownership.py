"""A worker belongs to whoever proved its root password (issue 12 point 1), on a real Debian test
host (devserver.testhost, systemd-nspawn) set up by the daemon's runner in this process.

Alice sets the host up. Bob adds the same host with a wrong password: his job fails and nothing
changes, on the host (root's authorized_keys, the agent's key: her agent still answers her) or in
her rows, although a key of the panel is in root's authorized_keys. Bob with the right password
takes it over: Alice's server is taken out of use and she is told, her key leaves the host and the
agent answers Bob's key only. Bob's decommission leaves no key of the panel on the host.

Needs root and the test-host packages; skipped with the precise reason otherwise. Slow (~4 min):
Exim and the agent are installed twice (Alice's setup, Bob's after the move).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from devserver import testhost
from panel.daemon.agent_client import AgentClient, AgentError
from panel.daemon.provision import Provisioner
from panel.extensions import db
from panel.models import ProvisionJob, Server, ServerEvent, User
from panel.services.agent_keys import open_agent_key
from panel.services.provisioning import add_server, parse_ip_lines, server_public_key, start_job
from tests.helpers import on_database
from tests.hosts.conftest import rootfs  # noqa: F401  (fixture)

AGENT_KEY_FILE = "/var/lib/mailfleet-agent/agent.key"


@pytest.fixture(scope="module")
def host(rootfs: Path) -> Iterator[testhost.TestHost]:  # noqa: F811
    """One booted host for the module (they are expensive), with the test proxy for apt."""
    try:
        testhost.check_prerequisites(proxy=True, release="bookworm")
    except testhost.TestHostUnavailable as exc:
        pytest.skip(str(exc))
    for index in range(testhost.MAX_HOSTS):
        candidate = testhost.TestHost(f"mfowner{index}", subnet_index=index, proxy=True)
        try:
            candidate.start()
        except testhost.TestHostBusy:
            continue
        try:
            yield candidate
        finally:
            candidate.stop()
        return
    pytest.skip("every test host slot is taken by other runs")


def _run_add(app: Flask, user_id: int, host: testhost.TestHost, password: str, name: str) -> tuple[int, ProvisionJob]:
    """The user adds the host (as the web view does) and the daemon's runner runs the add job."""
    with app.app_context():
        server, job = add_server(db.session.get(User, user_id), name=name, host=host.ip, ssh_port=host.ssh_port,
                                 ips=parse_ip_lines(host.ip))
        db.session.commit()
        server_id, job_id = server.id, job.id
    provisioner = Provisioner(app)
    provisioner.passwords.put(job_id, password)
    with app.app_context():
        provisioner.run_job(job_id)
        db.session.remove()
    with app.app_context():
        job = db.session.get(ProvisionJob, job_id)
        db.session.expunge(job)
    return server_id, job


def _run_key_job(app: Flask, user_id: int, server_id: int, kind: str) -> ProvisionJob:
    with app.app_context():
        job = start_job(db.session.get(User, user_id), db.session.get(Server, server_id), kind)
        db.session.commit()
        job_id = job.id
    with app.app_context():
        Provisioner(app).run_job(job_id)
        db.session.remove()
    with app.app_context():
        job = db.session.get(ProvisionJob, job_id)
        db.session.expunge(job)
    return job


def _server_state(app: Flask, server_id: int) -> dict:
    with app.app_context():
        server = db.session.get(Server, server_id)
        events = db.session.query(ServerEvent).filter_by(server_id=server_id).count()
        jobs = db.session.query(ProvisionJob).filter_by(server_id=server_id).count()
        state = {name: getattr(server, name) for name in (
            "user_id", "name", "host", "ssh_port", "status", "agent_key", "cert_fingerprint", "host_key", "last_error")}
        return {**state, "events": events, "jobs": jobs}


def _agent_answers(app: Flask, server_id: int, key: str | None = None) -> bool:
    """Whether the agent on the server's host opens a request sealed with the key (the server's own by default)."""
    with app.app_context():
        server = db.session.get(Server, server_id)
        client = AgentClient(server.api_url, key or open_agent_key(server), server.cert_fingerprint, timeout=15)
    try:
        client.call("/v1/ping", {})
        return True
    except AgentError:
        return False
    finally:
        client.close()


def _authorized_keys(host: testhost.TestHost) -> str:
    return host.run("cat /root/.ssh/authorized_keys 2>/dev/null || true").stdout


@on_database("sqlite")
def test_the_host_moves_only_to_whoever_proves_its_root_password(
    app: Flask, seed, instance: Path, host: testhost.TestHost,
) -> None:
    app.config["PROVISION_VARS"] = {"preflight_resolver_test_name": host.name, "preflight_time_sync_required": False}
    alice, bob = seed.user("alice@example.com"), seed.user("bob@example.com")

    alice_server, job = _run_add(app, alice, host, host.root_password, "alice's worker")
    assert job.status == "succeeded", job.log[-4000:]
    alice_key = server_public_key(instance, alice_server)
    assert alice_key and alice_key.split()[1] in _authorized_keys(host)
    assert _agent_answers(app, alice_server)
    keys_before, agent_key_before = _authorized_keys(host), host.run(f"cat {AGENT_KEY_FILE}").stdout
    alice_before = _server_state(app, alice_server)

    # Bob, a wrong password: the bootstrap offers only the password, so it fails, and nothing moves.
    bob_wrong, job = _run_add(app, bob, host, host.root_password + "-wrong", "bob's attempt")
    assert job.status == "failed", job.log[-4000:]
    assert "Running worker.yml" not in job.log
    assert _authorized_keys(host) == keys_before
    assert host.run(f"cat {AGENT_KEY_FILE}").stdout == agent_key_before
    assert _agent_answers(app, alice_server)
    assert _server_state(app, alice_server) == alice_before
    bob_wrong_key = server_public_key(instance, bob_wrong)
    assert bob_wrong_key is None or bob_wrong_key.split()[1] not in _authorized_keys(host)

    # Bob, the right password: the host moves to him.
    bob_server, job = _run_add(app, bob, host, host.root_password, "bob's worker")
    assert job.status == "succeeded", job.log[-4000:]
    alice_after = _server_state(app, alice_server)
    assert alice_after["status"] == "removed" and "moved to another panel user" in alice_after["last_error"]
    with app.app_context():
        told = db.session.query(ServerEvent).filter_by(server_id=alice_server, kind="moved").one()
        assert "root password" in told.message
    keys = _authorized_keys(host)
    assert alice_key.split()[1] not in keys
    assert server_public_key(instance, bob_server).split()[1] in keys
    assert server_public_key(instance, alice_server) is None  # her private key is gone from the panel too
    assert _agent_answers(app, bob_server)
    with app.app_context():
        alice_agent_key = open_agent_key(db.session.get(Server, alice_server))
    assert not _agent_answers(app, bob_server, key=alice_agent_key)  # her key no longer opens the agent
    # Her own view of the server says what happened.
    with app.app_context():
        assert db.session.get(Server, alice_server).user_id == alice

    # Decommission: no key of the panel is left on the host.
    job = _run_key_job(app, bob, bob_server, "remove")
    assert job.status == "succeeded", job.log[-4000:]
    keys = _authorized_keys(host)
    assert "mailfleet-panel" not in keys, keys
    assert server_public_key(instance, bob_server).split()[1] not in keys
