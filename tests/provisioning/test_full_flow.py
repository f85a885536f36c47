"""End to end: the panel (web views in-process, the daemon as a real process) sets up a bare
Debian test host from its root password alone — bootstrap.yml, then worker.yml with the
panel's key — and the server comes online. Afterwards the password is found nowhere.

Needs root and the test-host packages (devserver.testhost); skipped with the reason otherwise.
Slow (~3 min): apt installs Exim inside the host through the test proxy; then re-provision with
password logins off, and remove.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from flask import Flask

from panel.daemon.password_channel import socket_path
from panel.extensions import db
from panel.models import ProvisionJob, Server
from tests.helpers import wait_for
from tests.hosts.conftest import rootfs, test_host  # noqa: F401  (fixtures)

from .conftest import add_form

REPO = Path(__file__).resolve().parents[2]


def test_the_panel_sets_up_a_bare_host_from_its_root_password(
    app: Flask, browser, seed, instance: Path, tmp_path: Path, test_host,  # noqa: F811
) -> None:
    host = test_host(proxy=True)
    password = host.root_password
    daemon_log = tmp_path / "daemon.log"
    env = dict(os.environ, MAILFLEET_INSTANCE_PATH=str(instance),
               DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
               # What a test host lacks and a real server has: a resolver (no route out; its own
               # name is in its /etc/hosts) and a running time sync (none in a container).
               MAILFLEET_PROVISION_VARS=json.dumps({"preflight_resolver_test_name": host.name,
                                                    "preflight_time_sync_required": False}),
               MAILFLEET_DAEMON_INTERVAL="0.5")
    with open(daemon_log, "wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "panel.daemon"], cwd=REPO, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: socket_path(instance).exists(), what="the daemon's password channel", timeout=30)
        seed.user("a@example.com")
        browser.login("a@example.com")
        response = browser.post("/servers/", add_form(name="nspawn worker", host=host.ip, ssh_port=str(host.ssh_port),
                                                      root_password=password, ips=host.ip))
        assert response.status_code == 302, response.get_data(as_text=True)
        server_id = int(response.headers["Location"].rstrip("/").split("/")[-1])

        def job_done():
            data = browser.get(f"/servers/{server_id}/jobs.json").get_json()
            job = data["jobs"][0]
            return job if job["status"] in ("succeeded", "failed") else None

        job = wait_for(job_done, what="the add job to end", timeout=600, interval=1)
        assert job["status"] == "succeeded", job["log"][-4000:]
        assert "Running bootstrap.yml with the root password" in job["log"]
        assert "Running worker.yml with the panel key" in job["log"]
        server = seed.get(Server, server_id)
        assert len(server.cert_fingerprint) == 64 and "SHA256:" in server.host_key_fingerprint
        wait_for(lambda: seed.get(Server, server_id).status == "online", what="the server online", timeout=60)
        page = browser.get(f"/servers/{server_id}").get_data(as_text=True)
        assert server.host_key_fingerprint.splitlines()[0] in page

        # Later runs need the key only: with password logins off on the host, re-provision works.
        host.run("printf 'PasswordAuthentication no\\nKbdInteractiveAuthentication no\\n'"
                 " > /etc/ssh/sshd_config.d/00-test-nopassword.conf && systemctl reload ssh", check=True)
        assert browser.post(f"/servers/{server_id}/reprovision").status_code == 302
        job = wait_for(job_done, what="the reprovision job to end", timeout=600, interval=1)
        assert (job["kind"], job["status"]) == ("reprovision", "succeeded"), job["log"][-4000:]
        assert "Running worker.yml with the panel key" in job["log"] and "root password" not in job["log"]
        assert seed.get(Server, server_id).cert_fingerprint == server.cert_fingerprint  # same agent, same certificate
        wait_for(lambda: seed.get(Server, server_id).status == "online", what="the server online again", timeout=60)

        assert browser.post(f"/servers/{server_id}/remove").status_code == 302
        job = wait_for(job_done, what="the remove job to end", timeout=300, interval=1)
        assert (job["kind"], job["status"]) == ("remove", "succeeded"), job["log"][-4000:]
        assert seed.get(Server, server_id).status == "removed"
        assert host.run("systemctl is-active mailfleet-agent-api.service").stdout.strip() != "active"
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(30)
    with app.app_context():
        db.engine.dispose()
    needle = password.encode()
    leaks = [str(p) for p in instance.rglob("*") if p.is_file() and not p.is_socket() and needle in p.read_bytes()]
    assert leaks == []
    assert needle not in daemon_log.read_bytes()
    assert password not in seed.query(lambda s: "".join(j.log for j in s.query(ProvisionJob)))
