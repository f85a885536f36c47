"""End to end: the panel (web views in-process, the daemon as a real process) sets up a bare
Debian test host from its root password alone — bootstrap.yml, then worker.yml with the
panel's key — and the server comes online. A campaign then goes out through it: the agent on
the host renders the letters and its Exim hands them, from the host's IP and HELO name, to a
local SMTP server playing the recipients' mail servers. Afterwards the password is found
nowhere on this machine.

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
import time
from pathlib import Path

from flask import Flask

from devserver.mail_capture import CaptureServer
from panel.daemon.password_channel import socket_path
from panel.extensions import db
from panel.models import ProvisionJob, Server
from tests.helpers import files_containing, on_database, process_texts, wait_for
from tests.hosts.conftest import rootfs, test_host  # noqa: F401  (fixtures)

from .conftest import add_form

REPO = Path(__file__).resolve().parents[2]
HELO = "mx1.nspawn-worker.test"
RECIPIENTS = [{"email": f"reader{i}@inbox.test", "name": f"Reader {i}"} for i in range(20)]


@on_database("postgresql")
def test_the_panel_sets_up_a_bare_host_from_its_root_password(
    app: Flask, browser, seed, instance: Path, tmp_path: Path, test_host,  # noqa: F811
) -> None:
    started = time.time()
    host = test_host(proxy=True)
    password = host.root_password
    daemon_log = tmp_path / "daemon.log"
    # The recipients' mail servers: on this machine's end of the host's veth, the one address
    # the host can reach.
    capture = CaptureServer(tmp_path / "inboxes", host=host.host_ip)
    capture.start()
    # The daemon runs with the settings of the web app it serves.
    env = dict(os.environ, MAILFLEET_INSTANCE_PATH=str(instance),
               DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"],
               **{f"MAILFLEET_{name}": app.config[name] for name in ("SECRET_KEY", "PUBLIC_URL", "BOUNCE_DOMAIN",
                                                                            "ALLOWED_HOST_NETWORKS")},
               # What a test host lacks and a real server has: a resolver (no route out; its own
               # name is in its /etc/hosts) and a running time sync (none in a container); and
               # MX records for the recipients' domains, so Exim sends them all to the capture.
               MAILFLEET_PROVISION_VARS=json.dumps({"preflight_resolver_test_name": host.name,
                                                    "preflight_time_sync_required": False,
                                                    "exim_smarthost": f"{host.host_ip}::{capture.port}"}),
               MAILFLEET_DAEMON_INTERVAL="0.5")
    with open(daemon_log, "wb") as out:
        daemon = subprocess.Popen([sys.executable, "-m", "panel.daemon"], cwd=REPO, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: socket_path(instance).exists(), what="the daemon's password channel", timeout=30)
        user_id = seed.user("a@example.com")
        browser.login("a@example.com")
        response = browser.post("/servers/", add_form(name="nspawn worker", host=host.ip, ssh_port=str(host.ssh_port),
                                                      root_password=password, ips=f"{host.ip}={HELO}"))
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

        try:
            _send_a_campaign_through_it(browser, seed, user_id, capture, host)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n--- daemon log\n{daemon_log.read_text(errors='replace')[-3000:]}"
                                 f"\n--- on the host\n{_host_diagnostics(host)}") from None

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
        assert _processes_showing(password) == []
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        daemon.wait(30)
        capture.stop()
    with app.app_context():
        db.engine.dispose()
    assert password not in seed.query(lambda s: "".join(j.log for j in s.query(ProvisionJob)))
    # The DB file, the instance folder, ansible-runner's folders (deleted after each run, so
    # anything left would be a new file), the daemon's log, /tmp, /var/log, the test host's own
    # tree: every file written on this machine since the test began.
    assert files_containing(password.encode(), changed_since=started) == []


def _send_a_campaign_through_it(browser, seed, user_id: int, capture: CaptureServer, host) -> None:
    """A campaign from the composer's saved form to the recipients' server, through the new worker."""
    list_id = seed.list(user_id, "readers", RECIPIENTS)
    campaign_id = seed.campaign(user_id, [list_id], subject="Hello {{ name }}",
                                text="Dear {{ name }},\nnews from the new worker.\nLeave: {{ unsubscribe_url }}\n")
    assert browser.post(f"/campaigns/{campaign_id}/start").status_code == 302

    seen = {}

    def settled():
        seen.update(browser.get(f"/campaigns/{campaign_id}/stats").get_json()["stats"])
        return dict(seen) if seen["delivered"] == len(RECIPIENTS) else None

    try:
        stats = wait_for(settled, what="every letter delivered through the provisioned worker", timeout=180, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last counts {seen}") from None
    assert stats["failed"] == 0 and stats["deferred"] == 0, stats
    letters = {m.rcpt_to: m for m in capture.messages()}
    assert sorted(letters) == sorted(r["email"] for r in RECIPIENTS)
    for recipient in RECIPIENTS:
        letter = letters[recipient["email"]]
        assert (letter.peer_ip, letter.helo) == (host.ip, HELO)  # left from the worker's IP, greeting with its name
        assert letter.mail_from.startswith("bounce+") and letter.mail_from.endswith("@bounces.example.com")
        assert letter.message["Subject"] == f"Hello {recipient['name']}"
        assert f"Dear {recipient['name']}," in letter.message.get_body(("plain",)).get_content()
        assert "X-Mailfleet-Source-IP" not in letter.message


def _host_diagnostics(host) -> str:
    commands = ("systemctl --no-pager status mailfleet-agent-api mailfleet-agent-sender exim4 | tail -40",
                "journalctl --no-pager -n 40 -u mailfleet-agent-sender -u mailfleet-agent-api",
                "tail -n 30 /var/log/exim4/mainlog /var/log/exim4/paniclog")
    return "\n".join(f"$ {c}\n{host.run(c).stdout[-3000:]}" for c in commands)


def _processes_showing(secret: str) -> list[str]:
    """Processes whose command line or environment holds the secret (the daemon is still up)."""
    needle = secret.encode()
    return [f"{pid} ({part})" for pid, part, data in process_texts() if needle in data]
