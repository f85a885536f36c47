"""The daemon's runner against a real Debian test host (devserver.testhost, systemd-nspawn):
bootstrap.yml with the root password, then key-only, and the password is found nowhere.

Needs root and the test-host packages; skipped with the precise reason otherwise.
"""

from __future__ import annotations

import glob
import logging
import os
import threading
from pathlib import Path

import pytest
from flask import Flask

from panel.daemon import provision
from panel.daemon.provision import Provisioner, run_playbook
from panel.extensions import db
from panel.models import ProvisionJob, Server, User
from panel.models.base import utcnow
from panel.services.provisioning import add_server, known_hosts_path, parse_ip_lines
from tests.helpers import file_holds, process_texts
from tests.hosts.conftest import rootfs, test_host  # noqa: F401  (fixtures)


class ProcessWatch(threading.Thread):
    """Samples every process's argv and environment and each run folder's env/ while a run goes on."""

    def __init__(self, needle: bytes) -> None:
        super().__init__(daemon=True)
        self.needle = needle
        self.done = threading.Event()
        self.dirs: list[Path] = []
        self.leaks: list[str] = []
        self.env_files: set[str] = set()
        self.ansible_seen = 0

    def run(self) -> None:
        me = os.getpid()
        while not self.done.is_set():
            for pid, name, data in process_texts():
                if name == "cmdline" and b"ansible-playbook" in data:
                    self.ansible_seen += 1
                if self.needle in data and pid != me:
                    self.leaks.append(f"/proc/{pid}/{name}: {data[:200]!r}")
            for d in list(self.dirs):
                env = d / "env"
                if env.is_dir():
                    self.env_files.update(p.name for p in env.iterdir())
            self.done.wait(0.05)


def _grep(root: Path, needle: bytes) -> list[str]:
    return [str(path) for path in root.rglob("*") if path.is_file() and file_holds(path, needle)]


def _finish_bootstrap_only(self: Provisioner, job_id: int, kind: str, facts: dict) -> None:
    job = db.session.get(ProvisionJob, job_id)
    job.status, job.finished_at = "succeeded", utcnow()
    db.session.commit()


def test_bootstrap_with_the_root_password_then_the_key_alone(
    app: Flask, seed, instance: Path, test_host, caplog: pytest.LogCaptureFixture,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    host = test_host()
    password = host.root_password
    needle = password.encode()
    user_id = seed.user("a@example.com")
    with app.app_context():
        server, job = add_server(db.session.get(User, user_id), name="t", host=host.ip, ssh_port=host.ssh_port,
                                 ips=parse_ip_lines(host.ip))
        db.session.commit()
        server_id, job_id = server.id, job.id

    monkeypatch.setitem(provision.PLAYBOOKS, "add", ("bootstrap.yml",))
    monkeypatch.setattr(Provisioner, "_finish", _finish_bootstrap_only)
    provisioner = Provisioner(app)
    watch = ProcessWatch(needle)
    provisioner.observe = watch.dirs.append
    provisioner.passwords.put(job_id, password)
    password = None
    watch.start()
    try:
        with app.app_context():
            provisioner.run_job(job_id)
    finally:
        watch.done.set()
        watch.join()

    job = seed.get(ProvisionJob, job_id)
    assert job.status == "succeeded", job.log
    assert "TASK [" in job.log and "changed: [server" in job.log and job.tasks_done >= 1
    assert not provisioner.passwords.has(job_id)
    # Host key recorded on first use, shown, and in the panel's own known_hosts.
    server = seed.get(Server, server_id)
    assert "SHA256:" in server.host_key_fingerprint and server.host_key.startswith(host.ip)
    assert host.ip in known_hosts_path(instance).read_text()
    # The runner's private_data_dir: fresh, never holding env files, gone afterwards.
    assert len(watch.dirs) == 1 and not watch.dirs[0].exists()
    assert not watch.env_files & {"passwords", "extravars", "envvars", "cmdline", "settings", "ssh_key"}, watch.env_files
    # While it ran, no process showed the password in its argv or environment.
    assert watch.ansible_seen > 0 and watch.leaks == []

    # Key only: password login off on the host, the same playbook still runs.
    host.run("printf 'PasswordAuthentication no\\nKbdInteractiveAuthentication no\\n'"
             " > /etc/ssh/sshd_config.d/00-test-nopassword.conf && systemctl reload ssh", check=True)
    with app.app_context():
        result = run_playbook(app, job_id, db.session.get(Server, server_id), "bootstrap.yml")
    assert result.status == "successful", seed.get(ProvisionJob, job_id).log

    # Found nowhere: the DB and its WAL, the instance folder, the job log, the captured logs.
    with app.app_context():
        db.engine.dispose()
    assert _grep(instance, needle) == []
    assert needle.decode() not in seed.get(ProvisionJob, job_id).log
    assert needle.decode() not in caplog.text
    assert glob.glob(os.path.join(os.environ.get("TMPDIR", "/tmp"), "mailfleet-run-*")) == []
