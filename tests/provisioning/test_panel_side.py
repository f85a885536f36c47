"""Adding a server in the panel: the form, the password's way to the daemon (a Unix socket,
memory only), jobs and their JSON, owner checks, and the daemon leaving unready servers alone."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from flask import Flask

from panel.daemon.loop import DaemonState, run_round
from panel.daemon.password_channel import ChannelError, send_password, socket_path
from panel.daemon.provision import Provisioner
from panel.extensions import db
from panel.models import ProvisionJob, Server, User
from panel.services.provisioning import DAEMON_DOWN, PASSWORD_LOST, add_server, parse_ip_lines, server_key

from .conftest import add_form

PW = "Sup3r-Secret-Root-Pw"


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_socket():
            try:
                if needle in path.read_bytes():
                    found.append(path)
            except OSError:
                pass
    return found


def _queued_job(app: Flask, user_id: int) -> int:
    with app.app_context():
        _, job = add_server(db.session.get(User, user_id), name="w", host="192.0.2.9", ssh_port=22,
                            ips=parse_ip_lines("192.0.2.9"))
        db.session.commit()
        return job.id


def test_socket_is_0600_and_unknown_jobs_are_refused(app: Flask, channel: Provisioner, seed) -> None:
    path = socket_path(app.instance_path)
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    with pytest.raises(ChannelError, match="there is no provisioning job 999"):
        send_password(path, 999, PW)
    job_id = _queued_job(app, seed.user("a@example.com"))
    send_password(path, job_id, PW)
    assert channel.passwords.has(job_id)
    assert channel.passwords.take(job_id) == PW and not channel.passwords.has(job_id)


def test_daemon_down_is_a_plain_error(app: Flask) -> None:
    with pytest.raises(ChannelError, match="the panel daemon is not running"):
        send_password(socket_path(app.instance_path), 1, PW)


def test_add_server_hands_the_password_to_the_daemon_only(app: Flask, channel: Provisioner, browser, seed,
                                                          instance: Path) -> None:
    seed.user("a@example.com")
    browser.login("a@example.com")
    page = browser.get("/servers/").get_data(as_text=True)
    assert 'name="root_password"' in page and 'type="password"' in page
    response = browser.post("/servers/", add_form(root_password=PW))
    assert response.status_code == 302
    server_id = int(response.headers["Location"].rstrip("/").split("/")[-1])
    server = seed.get(Server, server_id)
    assert (server.status, server.ssh_port, server.cert_fingerprint) == ("provisioning", 22, None)
    job = seed.query(lambda s: s.query(ProvisionJob).filter_by(server_id=server_id).one().id)
    assert channel.passwords.has(job)
    page = browser.get(f"/servers/{server_id}").get_data(as_text=True)
    assert "Setup jobs" in page and "server.js" in page and PW not in page
    data = browser.get(f"/servers/{server_id}/jobs.json").get_json()
    assert data["jobs"][0]["status"] == "queued" and data["server"]["status"] == "provisioning"
    # Nothing on disk holds it: the DB (and its WAL), the instance folder.
    with app.app_context():
        db.engine.dispose()
    assert _files_containing(instance, PW.encode()) == []


def test_add_server_with_the_daemon_down_fails_the_job_and_says_so(app: Flask, browser, seed, instance: Path) -> None:
    seed.user("a@example.com")
    browser.login("a@example.com")
    response = browser.post("/servers/", add_form(root_password=PW), follow_redirects=True)
    page = response.get_data(as_text=True)
    assert "The server was not set up: the panel daemon is not running" in page
    job = seed.query(lambda s: s.query(ProvisionJob).one())
    assert (job.status, job.error) == ("failed", DAEMON_DOWN)
    assert seed.query(lambda s: s.get(Server, job.server_id).status) == "failed"
    with app.app_context():
        db.engine.dispose()
    assert _files_containing(instance, PW.encode()) == []


def test_add_form_errors_do_not_echo_the_password(app: Flask, browser, seed) -> None:
    seed.user("a@example.com")
    browser.login("a@example.com")
    response = browser.post("/servers/", add_form(root_password=PW, ips="not-an-ip"))
    page = response.get_data(as_text=True)
    assert response.status_code == 400 and "is not an IP address" in page and PW not in page
    assert seed.query(lambda s: s.query(Server).count()) == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "169.254.10.20", "::1"])
def test_the_form_refuses_internal_hosts_and_sends_no_password(app: Flask, channel: Provisioner, browser, seed,
                                                                host: str) -> None:
    seed.user("a@example.com")
    browser.login("a@example.com")
    response = browser.post("/servers/", add_form(host=host, root_password=PW))
    page = response.get_data(as_text=True)
    assert response.status_code == 400 and "a network the panel does not probe" in page and "ask the admin" in page
    assert PW not in page
    assert seed.query(lambda s: s.query(Server).count()) == 0 and not channel.passwords._passwords


def test_another_users_server_and_jobs_are_404(app: Flask, channel: Provisioner, browser, seed) -> None:
    owner = seed.user("a@example.com")
    job_id = _queued_job(app, owner)
    server_id = seed.query(lambda s: s.get(ProvisionJob, job_id).server_id)
    seed.user("b@example.com")
    browser.login("b@example.com")
    for url in (f"/servers/{server_id}", f"/servers/{server_id}/jobs.json", f"/servers/jobs/{job_id}.json"):
        assert browser.get(url).status_code == 404, url
    for kind in ("reprovision", "reconfigure", "remove"):
        assert browser.post(f"/servers/{server_id}/{kind}").status_code == 404
    assert seed.query(lambda s: s.query(ProvisionJob).count()) == 1


def test_key_only_jobs_need_a_known_host_and_one_at_a_time(app: Flask, browser, seed) -> None:
    owner = seed.user("a@example.com")
    job_id = _queued_job(app, owner)
    server_id = seed.query(lambda s: s.get(ProvisionJob, job_id).server_id)
    browser.login("a@example.com")
    page = browser.post(f"/servers/{server_id}/reprovision", follow_redirects=True).get_data(as_text=True)
    assert "already queued or running" in page
    with app.app_context():
        job = db.session.get(ProvisionJob, job_id)
        job.status = "failed"
        db.session.commit()
    page = browser.post(f"/servers/{server_id}/reprovision", follow_redirects=True).get_data(as_text=True)
    assert "never reached this server over SSH" in page
    with app.app_context():
        db.session.get(Server, server_id).host_key = "192.0.2.9 ssh-ed25519 AAAA"
        db.session.commit()
    page = browser.post(f"/servers/{server_id}/reprovision", follow_redirects=True).get_data(as_text=True)
    assert "Re-provision queued" in page
    jobs = seed.query(lambda s: [(j.kind, j.status, j.needs_password) for j in s.query(ProvisionJob).order_by("id")])
    assert jobs[-1] == ("reprovision", "queued", False)


def test_a_restarted_daemon_fails_password_jobs_it_cannot_have(app: Flask, seed) -> None:
    job_id = _queued_job(app, seed.user("a@example.com"))
    provisioner = Provisioner(app)
    with app.app_context():
        provisioner._fail_orphans()
    job = seed.get(ProvisionJob, job_id)
    assert (job.status, job.error) == ("failed", PASSWORD_LOST)
    assert PASSWORD_LOST == "the root password was only in memory of the daemon that stopped; enter it again"


def test_a_password_job_without_its_password_is_not_run(app: Flask, seed) -> None:
    job_id = _queued_job(app, seed.user("a@example.com"))
    provisioner = Provisioner(app)
    provisioner.started_at = provisioner.started_at.replace(year=2000)  # the job is younger than the daemon
    with app.app_context():
        assert provisioner.run_next() is False
    assert seed.get(ProvisionJob, job_id).status == "queued"


def test_the_daemon_leaves_servers_that_are_not_ready_alone(app: Flask, seed) -> None:
    _queued_job(app, seed.user("a@example.com"))
    state = DaemonState()
    with app.app_context():
        run_round(state)
    assert state.clients == {} and state.last_ping == {}


def test_each_server_has_a_key_of_its_own_made_once_0600(app: Flask) -> None:
    key, public = server_key(app.instance_path, 1)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and public.startswith("ssh-ed25519 ")
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700 and stat.S_IMODE(key.parent.parent.stat().st_mode) == 0o700
    assert server_key(app.instance_path, 1) == (key, public)
    other_key, other_public = server_key(app.instance_path, 2)
    assert other_key != key and other_public.split()[1] != public.split()[1]
