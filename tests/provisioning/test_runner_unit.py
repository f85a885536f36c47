"""The runner's bookkeeping without a host: progress by task, the log, the failure shown to
the user (preflight's own words), the agent's fingerprint from the facts, one job at a time."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.fernet import Fernet
from flask import Flask

from panel.daemon import provision
from panel.daemon.provision import EventRecorder, Provisioner, RunResult
from panel.extensions import db
from panel.models import ProvisionJob, Server, ServerEvent, User
from panel.services.agent_keys import open_agent_key
from panel.services.provisioning import add_server, parse_ip_lines, start_job

PREFLIGHT_MSG = ("Port 25 is taken by another program (postfix/master). Only Exim may listen there. "
                 "What to do: stop and remove it (apt-get purge postfix), then run the setup again.")


def _job(app: Flask, seed, host_key: str | None = "192.0.2.9 ssh-ed25519 AAAA") -> tuple[int, int]:
    with app.app_context():
        server, job = add_server(db.session.get(User, seed.user("a@example.com")), name="w", host="192.0.2.9",
                                 ssh_port=2222, ips=parse_ip_lines("192.0.2.9=mx.example.net"))
        server.host_key, server.host_key_fingerprint = host_key, "ED25519 SHA256:abc"
        db.session.commit()
        return server.id, job.id


def _events(host: str = "server1") -> list[dict]:
    return [
        {"event": "playbook_on_play_start", "event_data": {"play": "Set up Mailfleet workers"}},
        {"event": "playbook_on_task_start", "event_data": {"task": "Gathering Facts"}},
        {"event": "runner_on_ok", "event_data": {"host": host, "res": {"changed": False}}},
        {"event": "playbook_on_task_start", "event_data": {"task": "Check port 25", "role": "preflight"}},
        {"event": "runner_on_failed", "event_data": {"host": host, "ignore_errors": True, "res": {"msg": "ignored one"}}},
        {"event": "playbook_on_task_start", "event_data": {"task": "Port 25 is free", "role": "preflight"}},
        {"event": "runner_on_failed", "event_data": {"host": host, "res": {"msg": PREFLIGHT_MSG}}},
    ]


def test_progress_log_and_the_failure_in_preflights_words(app: Flask, seed) -> None:
    _, job_id = _job(app, seed)
    with app.app_context():
        recorder = EventRecorder(job_id, "worker.yml")
        for event in _events():
            assert recorder(event) is False  # nothing written to the run's folder
        job = db.session.get(ProvisionJob, job_id)
        assert (job.current_task, job.tasks_done) == ("preflight : Port 25 is free", 2)
        assert job.log.splitlines() == [
            "PLAY [Set up Mailfleet workers] (worker.yml)", "TASK [Gathering Facts]", "ok: [server1]",
            "TASK [preflight : Check port 25]", "failed: [server1] (ignored): ignored one",
            "TASK [preflight : Port 25 is free]", f"failed: [server1]: {PREFLIGHT_MSG}",
        ]
    assert recorder.failure == PREFLIGHT_MSG


def test_a_failed_run_fails_the_job_with_that_message(app: Flask, seed, monkeypatch: pytest.MonkeyPatch) -> None:
    server_id, job_id = _job(app, seed)
    provisioner = Provisioner(app)
    provisioner.passwords.put(job_id, "pw")
    calls = []

    def fake_run(app_, job_id_, server, playbook, *, password=None, cancel=None, observe=None, revoked=None):  # noqa: ANN001
        calls.append((playbook, password))
        return RunResult(status="failed", rc=2, failure=PREFLIGHT_MSG)

    monkeypatch.setattr(provision, "run_playbook", fake_run)
    with app.app_context():
        assert provisioner.run_next() is True
    assert calls == [("bootstrap.yml", "pw")]  # worker.yml is not tried after a failed bootstrap
    job = seed.get(ProvisionJob, job_id)
    assert (job.status, job.error) == ("failed", PREFLIGHT_MSG) and job.finished_at is not None
    assert seed.get(Server, server_id).status == "failed"
    assert not provisioner.passwords.has(job_id)
    kinds = seed.query(lambda s: [e.message for e in s.query(ServerEvent).filter_by(server_id=server_id)])
    assert kinds == [f"add failed: {PREFLIGHT_MSG}"]


def test_success_stores_the_fingerprint_and_hands_over_to_the_heartbeat(
    app: Flask, seed, monkeypatch: pytest.MonkeyPatch, instance: Path,
) -> None:
    server_id, job_id = _job(app, seed)
    provisioner = Provisioner(app)
    provisioner.passwords.put(job_id, "pw")
    calls = []

    def fake_run(app_, job_id_, server, playbook, *, password=None, cancel=None, observe=None, revoked=None):  # noqa: ANN001
        calls.append((playbook, password))
        facts = {"worker_agent_tls_fingerprint": "AB" * 32} if playbook == "worker.yml" else {}
        return RunResult(status="successful", rc=0, facts=facts)

    monkeypatch.setattr(provision, "run_playbook", fake_run)
    with app.app_context():
        provisioner.run_next()
    assert calls == [("bootstrap.yml", "pw"), ("worker.yml", None)]
    job = seed.get(ProvisionJob, job_id)
    server = seed.get(Server, server_id)
    assert job.status == "succeeded", job.log
    assert (server.status, server.cert_fingerprint) == ("new", "ab" * 32)
    assert server.agent_key  # the panel's Fernet key, handed to the role as worker_agent_fernet_key
    assert "192.0.2.9 ssh-ed25519 AAAA" in (instance / "ssh" / "known_hosts").read_text()


def test_inventory_carries_port_key_ips_and_the_agent_key_but_no_password(app: Flask, seed) -> None:
    server_id, _ = _job(app, seed)
    with app.app_context():
        server = db.session.get(Server, server_id)
        inventory = provision._inventory(server, "192.0.2.9", Path("/k"), "ssh-ed25519 AAAA panel",
                                         ["ssh-ed25519 BBBB earlier"], {"exim_smarthost": "x"})
        host = inventory["mailfleet_workers"]["hosts"][f"server{server_id}"]
        assert host["ansible_port"] == 2222 and host["ansible_user"] == "root" and host["ansible_host"] == "192.0.2.9"
        assert host["ansible_ssh_private_key_file"] == "/k" and host["ssh_access_public_key"] == "ssh-ed25519 AAAA panel"
        assert host["ssh_access_revoked_keys"] == ["ssh-ed25519 BBBB earlier"]
        # The password run is given no key file at all.
        password_run = provision._inventory(server, "192.0.2.9", None, "ssh-ed25519 AAAA panel", [], {})
        assert "ansible_ssh_private_key_file" not in password_run["mailfleet_workers"]["hosts"][f"server{server_id}"]
        assert host["exim_source_ips"] == [{"ip": "192.0.2.9", "helo": "mx.example.net"}]
        # the role gets the key itself; the DB holds it sealed
        assert host["worker_agent_fernet_key"] == open_agent_key(server) != server.agent_key
        Fernet(host["worker_agent_fernet_key"].encode())
        assert host["exim_smarthost"] == "x"
        assert not any("pass" in key for key in host)


class KeyedHost:
    """root's authorized_keys on a worker, as the runs see it: a run logs in only with a key the host
    holds, and the ssh_access role (bootstrap.yml) installs the given key and removes the revoked ones."""

    def __init__(self, keys: set[str]) -> None:
        self.keys = keys
        self.logins: list[tuple[str, str]] = []  # (playbook, the public key it logged in with)
        self.fail_after_install: list[bool] = []  # per bootstrap.yml run: fail once the key task ran

    def run(self, *, playbook: str, inventory: str, **_: object) -> SimpleNamespace:
        host = next(iter(json.loads(Path(inventory).read_text())["mailfleet_workers"]["hosts"].values()))
        login = Path(host["ansible_ssh_private_key_file"]).with_suffix(".pub").read_text().strip()
        name = Path(playbook).name
        self.logins.append((name, login))
        if login not in self.keys:
            return SimpleNamespace(status="failed", rc=4, stdout=io.StringIO("Permission denied (publickey)."))
        if name == "bootstrap.yml":
            self.keys.add(host["ssh_access_public_key"])
            if self.fail_after_install and self.fail_after_install.pop(0):  # e.g. the connection dropped
                return SimpleNamespace(status="failed", rc=2, stdout=io.StringIO("connection lost"))
            self.keys -= set(host["ssh_access_revoked_keys"])
        return SimpleNamespace(status="successful", rc=0, stdout=io.StringIO(""))


@pytest.mark.parametrize("with_failures", [False, True], ids=["at-once", "runs-failing-midway"])
def test_a_server_on_the_shared_key_moves_to_its_own_key_on_the_next_key_run(
    app: Flask, seed, monkeypatch: pytest.MonkeyPatch, instance: Path, with_failures: bool,
) -> None:
    """Set up before keys were per server: the next key-based job installs its own key (logged in
    with the shared one), switches to it, then revokes the shared key; a run failing midway leaves
    it reachable by the key the panel uses."""
    import ansible_runner

    app.instance_path = str(instance)
    shared = instance / "ssh" / "id_ed25519"
    shared.parent.mkdir(mode=0o700)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(shared)], check=True)
    shared_pub = shared.with_suffix(".pub").read_text().strip()
    server_id, add_job = _job(app, seed)
    with app.app_context():
        db.session.get(ProvisionJob, add_job).status = "succeeded"
        server = db.session.get(Server, server_id)
        server.cert_fingerprint, server.status = "ab" * 32, "online"
        db.session.commit()
    host = KeyedHost({shared_pub})
    monkeypatch.setattr(ansible_runner, "run", host.run)

    def reconfigure() -> ProvisionJob:
        with app.app_context():
            user = db.session.get(User, seed.get(Server, server_id).user_id)
            job_id = start_job(user, db.session.get(Server, server_id), "reconfigure").id
            db.session.commit()
            Provisioner(app).run_next()
        return seed.get(ProvisionJob, job_id)

    if not with_failures:
        job = reconfigure()
        assert job.status == "succeeded", job.log
        own = (instance / "ssh" / "servers" / str(server_id) / "id_ed25519.pub").read_text().strip()
        assert host.logins == [("bootstrap.yml", shared_pub), ("bootstrap.yml", own), ("reconfigure.yml", own)]
        assert host.keys == {own}
        return
    host.fail_after_install = [True]
    assert reconfigure().status == "failed"
    own = (instance / "ssh" / "servers" / str(server_id) / "id_ed25519.pub").read_text().strip()
    assert host.keys == {shared_pub, own}  # installed, but the panel still logs in with the shared key
    host.logins.clear()
    host.fail_after_install = [False, True]  # now the removal of the shared key fails
    assert reconfigure().status == "failed"
    assert host.logins == [("bootstrap.yml", shared_pub), ("bootstrap.yml", own)]
    assert host.keys == {shared_pub, own}
    host.logins.clear()
    job = reconfigure()
    assert job.status == "succeeded", job.log
    assert host.logins == [("bootstrap.yml", own), ("reconfigure.yml", own)]  # the removal is tried again
    assert host.keys == {own}  # the shared key is gone from root's authorized_keys
    host.logins.clear()
    assert reconfigure().status == "succeeded" and host.logins == [("reconfigure.yml", own)]
