"""Provisioning jobs: the playbooks run through ansible-runner, in a thread of the daemon.

One job at a time, taken from the DB (status queued). Each ansible-runner run gets a fresh
private_data_dir (0700, deleted afterwards) and `suppress_env_files=True`, so nothing of
a run outlives it there. The root password (only for the `add` job's bootstrap run) comes
from the daemon's memory (password_channel.PasswordStore) and goes to ansible-runner through
`passwords=` + `--ask-pass`, which answers ssh's prompt through a pty: never an extra var,
never argv, never a file. Progress is written to the job row in short transactions.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from flask import Flask
from sqlalchemy import select

from ..extensions import db
from ..models import ProvisionJob, Server, ServerEvent
from ..models.base import utcnow
from ..services.provisioning import (
    PASSWORD_LOST,
    begin_own_key,
    fail_job,
    known_hosts_path,
    legacy_public_key,
    move_host,
    on_shared_key,
    other_owners,
    own_key_in_place,
    scan_host_key,
    server_key,
    server_public_key,
    shared_key_left,
    shared_key_revoked,
    ssh_address,
    write_known_hosts,
)
from ..services.agent_keys import open_agent_key
from ..services.servers import ServerError
from .agent_text import text_block
from .password_channel import PasswordChannel, PasswordStore, socket_path

log = logging.getLogger("panel.daemon.provision")

REPO_ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO_ROOT / "ansible"
PLAYBOOKS = {
    "add": ("bootstrap.yml", "worker.yml"),
    "reprovision": ("worker.yml",),
    "reconfigure": ("reconfigure.yml",),
    "remove": ("decommission.yml",),
}
SSH_PASSWORD_PROMPT = r"^SSH password:\s*?$"
# Every run: no agent (ours or the daemon's environment's), no forwarding, no shared connections.
SSH_ARGS = "-o ControlMaster=no -o ControlPath=none -o IdentityAgent=none -o ForwardAgent=no -o IdentitiesOnly=yes"
# The password run proves the root password and nothing else: no key of ours is offered, so a
# wrong password fails even on a host whose authorized_keys holds one.
PASSWORD_ONLY = ("-o PubkeyAuthentication=no -o PreferredAuthentications=password,keyboard-interactive "
                 "-o IdentityFile=/dev/null")
# A password job whose password never arrived (the view died between commit and send).
PASSWORD_WAIT = timedelta(seconds=60)
LOG_LIMIT = 2_000_000  # characters of job log kept (the tail)
MESSAGE_CHARS = 2000  # of what a failed task (or the playbook's last line) said, shown and kept


class JobFailed(Exception):
    """A job ended badly; the message is for the user."""


@dataclass
class RunResult:
    status: str
    rc: int | None
    failure: str | None = None
    facts: dict = field(default_factory=dict)


def _append(job_id: int, text: str, **fields) -> None:  # noqa: ANN003
    """Add lines to a job's log (and set fields) in one short transaction."""
    job = db.session.get(ProvisionJob, job_id)
    if job is None:
        return
    log_text = (job.log or "") + text
    if len(log_text) > LOG_LIMIT:
        log_text = "…\n" + log_text[-LOG_LIMIT:]
    job.log = log_text
    for name, value in fields.items():
        setattr(job, name, value)
    db.session.commit()


class EventRecorder:
    """ansible-runner's event_handler: task progress and host results into the job's log."""

    def __init__(self, job_id: int, playbook: str) -> None:
        self.job_id = job_id
        self.playbook = playbook
        self.failure: str | None = None
        self.facts: dict = {}
        job = db.session.get(ProvisionJob, job_id)
        self.tasks_started = job.tasks_done if job else 0

    def __call__(self, event: dict) -> bool:
        try:
            self._record(event)
        except Exception:  # progress must never break the run
            log.exception("job %s: could not record an event", self.job_id)
            db.session.rollback()
        return False  # nothing of the run is kept on disk (the folder is deleted anyway)

    def _record(self, event: dict) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host") or data.get("remote_addr") or ""
        res = data.get("res") if isinstance(data.get("res"), dict) else {}
        if kind == "playbook_on_play_start":
            _append(self.job_id, f"PLAY [{data.get('play', '')}] ({self.playbook})\n")
        elif kind == "playbook_on_task_start":
            name = data.get("task") or data.get("name") or "task"
            role = data.get("role")
            label = f"{role} : {name}" if role else name
            self.tasks_started += 1
            _append(self.job_id, f"TASK [{label}]\n", current_task=label, tasks_done=max(self.tasks_started - 1, 0))
        elif kind in ("runner_on_ok", "runner_item_on_ok"):
            facts = res.get("ansible_facts") or {}
            if "worker_agent_tls_fingerprint" in facts:
                self.facts["worker_agent_tls_fingerprint"] = facts["worker_agent_tls_fingerprint"]
            if kind == "runner_on_ok":
                _append(self.job_id, f"{'changed' if res.get('changed') else 'ok'}: [{host}]\n")
        elif kind in ("runner_on_failed", "runner_item_on_failed"):
            message = _message(res)
            ignored = data.get("ignore_errors")
            _append(self.job_id, f"failed: [{host}]{' (ignored)' if ignored else ''}: {message}\n")
            if not ignored and kind == "runner_on_failed":
                self.failure = message
        elif kind == "runner_on_unreachable":
            message = _message(res)
            _append(self.job_id, f"unreachable: [{host}]: {message}\n")
            self.failure = f"the server could not be reached over SSH: {message}"
        elif kind == "runner_on_skipped":
            _append(self.job_id, f"skipping: [{host}]\n")
        elif kind == "playbook_on_stats":
            _append(self.job_id, f"done: {self.playbook}\n", tasks_done=self.tasks_started)


def _message(res: dict) -> str:
    """A failed task's message: the worker's root may print anything there, so it is cut and cleaned."""
    return text_block(_task_message(res), MESSAGE_CHARS)


def _task_message(res: dict) -> str:
    msg = res.get("msg") or res.get("stderr") or res.get("reason") or ""
    if isinstance(msg, (list, dict)):
        msg = str(msg)
    msg = str(msg).strip()
    if not msg and res.get("results"):
        msgs = [str(item.get("msg")) for item in res["results"] if isinstance(item, dict) and item.get("failed")]
        msg = "; ".join(m for m in msgs if m and m != "None")
    return msg or "the task failed (no message)"


def _inventory(server: Server, address: str, key_file: Path | None, public_key: str, revoked: list[str],
               extra: dict) -> dict:
    host_vars = {
        "ansible_host": address,  # checked by network_policy; never the name again (rebinding)
        "ansible_port": server.ssh_port,
        "ansible_user": "root",
        "ansible_python_interpreter": "/usr/bin/python3",
        "ssh_access_public_key": public_key,
        "ssh_access_revoked_keys": revoked,
        # Every IP, active or not: "active" is only whether the daemon gives it new letters
        # (services/server_config.py), and letters already given to it must still go out from it.
        "exim_source_ips": [{"ip": ip.ip, "helo": ip.helo} for ip in server.ips],
        "worker_agent_listen_port": server.api_port,
        "worker_agent_fernet_key": open_agent_key(server) or "",
    }
    if key_file is not None:
        host_vars["ansible_ssh_private_key_file"] = str(key_file)
    host_vars.update(extra)
    return {"mailfleet_workers": {"hosts": {f"server{server.id}": host_vars}}}


def provision_vars(app: Flask) -> dict:
    """Variables the site adds to every worker's inventory (PROVISION_VARS: a dict, or JSON in
    MAILFLEET_PROVISION_VARS), e.g. {"exim_smarthost": "…"}; they win over the panel's own."""
    value = app.config.get("PROVISION_VARS") or {}
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, dict):
        raise ValueError("PROVISION_VARS must be a JSON object")
    return value


def run_playbook(
    app: Flask, job_id: int, server: Server, playbook: str, *, password: str | None = None,
    cancel: Callable[[], bool] | None = None, observe: Callable[[Path], None] | None = None,
    revoked: list[str] | None = None,
) -> RunResult:
    """One ansible-runner run in a fresh private_data_dir that is deleted afterwards.

    With `password` it logs in with the root password alone; otherwise with this server's key
    alone. `revoked`: public keys the ssh_access role and decommission remove from the host.
    """
    import ansible_runner

    instance = Path(app.instance_path)
    try:
        address = ssh_address(server.host, server.ssh_port)
    except ServerError as exc:
        _append(job_id, f"Refused: {exc}\n")
        return RunResult(status="failed", rc=None, failure=str(exc))
    legacy = legacy_public_key(instance)
    if password is None and on_shared_key(instance, server):
        # Set up before keys were per server: the shared key logs this run in, so it is not revoked
        # here; the ssh_access role (bootstrap.yml) installs the server's own key (Provisioner._to_own_key).
        key_file, keep = instance / "ssh" / "id_ed25519", legacy
        public_key = begin_own_key(instance, server.id) if playbook == "bootstrap.yml" else legacy
    else:
        key_file, public_key = server_key(instance, server.id)
        keep = public_key
    revoked = [key for key in (revoked or []) + ([legacy] if legacy else []) if key and key not in (keep, public_key)]
    known_hosts = known_hosts_path(instance)
    private_dir = Path(tempfile.mkdtemp(prefix="mailfleet-run-"))
    os.chmod(private_dir, 0o700)
    try:
        inventory_dir = private_dir / "inventory"
        inventory_dir.mkdir(mode=0o700)
        inventory_file = inventory_dir / "hosts.json"
        fd = os.open(inventory_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(_inventory(server, address, None if password is not None else key_file, public_key, revoked,
                                 provision_vars(app)), f)
        envvars = {
            # ansible-playbook from the panel's own venv, whatever PATH the daemon was started with
            "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", os.defpath)]),
            "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
            "ANSIBLE_COLLECTIONS_PATH": str(ANSIBLE_DIR / ".collections"),
            "ANSIBLE_SSH_ARGS": (
                f"{SSH_ARGS} {PASSWORD_ONLY if password is not None else ''} "
                f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"
            ),
            "SSH_AUTH_SOCK": "",
            "ANSIBLE_HOST_KEY_CHECKING": "True",
            "ANSIBLE_RETRY_FILES_ENABLED": "False",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_LOCAL_TEMP": str(private_dir / "tmp"),
        }
        kwargs: dict = {}
        if password is not None:
            kwargs["passwords"] = {SSH_PASSWORD_PROMPT: password}
            kwargs["cmdline"] = "--ask-pass"
        recorder = EventRecorder(job_id, playbook)
        if observe is not None:
            observe(private_dir)
        runner = ansible_runner.run(
            private_data_dir=str(private_dir),
            playbook=str(ANSIBLE_DIR / "playbooks" / playbook),
            inventory=str(inventory_file),
            envvars=envvars,
            suppress_env_files=True,
            quiet=True,
            event_handler=recorder,
            cancel_callback=cancel or (lambda: False),
            timeout=app.config.get("PROVISION_TIMEOUT", 3600),
            **kwargs,
        )
        password = None  # noqa: F841  (this frame no longer holds it)
        failure = recorder.failure
        if runner.status != "successful" and not failure:
            try:
                tail = [text_block(line, MESSAGE_CHARS) for line in runner.stdout.read().splitlines() if line.strip()][-15:]
            except (OSError, AttributeError):
                tail = []
            if tail:
                _append(job_id, "ansible-playbook said:\n" + "\n".join(tail) + "\n")
                failure = f"{playbook} ended with status {runner.status} (exit code {runner.rc}): {tail[-1]}"
        return RunResult(status=runner.status, rc=runner.rc, failure=failure, facts=recorder.facts)
    finally:
        shutil.rmtree(private_dir, ignore_errors=True)


class Provisioner:
    """The daemon's provisioning thread and its password channel."""

    def __init__(self, app: Flask, stop: threading.Event | None = None) -> None:
        self.app = app
        self.stop_event = stop or threading.Event()
        self.passwords = PasswordStore()
        self.channel = PasswordChannel(socket_path(app.instance_path), self.passwords, self._accepts)
        self.started_at = utcnow()
        self._thread: threading.Thread | None = None
        self.observe: Callable[[Path], None] | None = None  # tests: see each run's private_data_dir

    # lifecycle
    def start(self) -> None:
        with self.app.app_context():
            self._fail_orphans()
        # Sending must go on even where setting servers up cannot: these failures are logged.
        if shutil.which("ssh-keygen") is None:
            log.error("ssh-keygen is not installed: the panel cannot make servers' SSH keys; adding servers will fail")
        try:
            self.channel.start()
        except OSError as exc:
            log.error("the password channel could not listen on %s: %s; adding servers will fail", self.channel.path, exc)
        self._thread = threading.Thread(target=self._loop, name="provisioner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.channel.stop()
        if self._thread is not None:
            self._thread.join(30)

    def _accepts(self, job_id: int) -> str | None:
        with self.app.app_context():
            job = db.session.get(ProvisionJob, job_id)
            try:
                if job is None:
                    return f"there is no provisioning job {job_id}"
                if not job.needs_password or job.status != "queued":
                    return f"provisioning job {job_id} is not waiting for a password"
                return None
            finally:
                db.session.remove()

    def _fail_orphans(self) -> None:
        """Jobs left queued or running by a daemon that stopped."""
        jobs = db.session.scalars(select(ProvisionJob).where(ProvisionJob.status.in_(("queued", "running")))).all()
        for job in jobs:
            if job.needs_password:
                fail_job(job, PASSWORD_LOST)
            elif job.status == "running":
                fail_job(job, "the panel daemon stopped while this job ran; start it again")
        db.session.commit()

    # the thread
    def _loop(self) -> None:
        while not self.stop_event.is_set():
            with self.app.app_context():
                try:
                    worked = self.run_next()
                except Exception:
                    log.exception("provisioning round failed")
                    db.session.rollback()
                    worked = False
                finally:
                    db.session.remove()
            if not worked:
                self.stop_event.wait(1.0)

    def run_next(self) -> bool:
        """Run the oldest queued job that can run now; True if one ran."""
        for job in db.session.scalars(
            select(ProvisionJob).where(ProvisionJob.status == "queued").order_by(ProvisionJob.id)
        ).all():
            if job.needs_password and not self.passwords.has(job.id):
                if job.created_at < self.started_at:
                    fail_job(job, PASSWORD_LOST)
                    db.session.commit()
                elif utcnow() - job.created_at > PASSWORD_WAIT:
                    fail_job(job, "the root password never reached the daemon; enter it again")
                    db.session.commit()
                continue
            self.run_job(job.id)
            return True
        return False

    def run_job(self, job_id: int) -> None:
        job = db.session.get(ProvisionJob, job_id)
        job.status = "running"
        job.started_at = utcnow()
        job.log = (job.log or "") + f"Job {job.id} ({job.kind}) started {job.started_at:%Y-%m-%d %H:%M:%S} UTC\n"
        db.session.commit()
        password = self.passwords.take(job_id) if job.needs_password else None
        try:
            self._run(job_id, password)
        except JobFailed as exc:
            db.session.rollback()
            job = db.session.get(ProvisionJob, job_id)
            fail_job(job, str(exc))
            server = db.session.get(Server, job.server_id)
            db.session.add(ServerEvent(server_id=server.id, kind="error", message=f"{job.kind} failed: {exc}"))
            db.session.commit()
            log.info("provisioning job %s failed: %s", job_id, exc)
        except Exception as exc:
            log.exception("provisioning job %s crashed", job_id)
            db.session.rollback()
            job = db.session.get(ProvisionJob, job_id)
            fail_job(job, f"the panel could not run the job: {exc.__class__.__name__}: {exc}")
            db.session.commit()
        finally:
            password = None  # noqa: F841
            self.passwords.discard(job_id)

    def _run(self, job_id: int, password: str | None) -> None:
        job = db.session.get(ProvisionJob, job_id)
        server = db.session.get(Server, job.server_id)
        kind, server_id = job.kind, job.server_id
        if job.needs_password and password is None:
            raise JobFailed(PASSWORD_LOST)
        if server.host_key is None:
            _append(job_id, f"Scanning the SSH host key of {server.host} port {server.ssh_port}\n")
            try:
                host_key, fingerprint = scan_host_key(server.host, server.ssh_port)
            except ServerError as exc:
                raise JobFailed(str(exc)) from None
            server.host_key, server.host_key_fingerprint = host_key, fingerprint
            db.session.commit()
            _append(job_id, "Host key recorded on first use:\n" + fingerprint + "\n")
        write_known_hosts(self.app.instance_path)
        db.session.commit()
        # Other users' registrations of this host: the bootstrap revokes their keys, and once it
        # proved the root password the host moves here (services.provisioning.move_host).
        previous = [other.id for other in other_owners(server)] if kind == "add" else []
        revoked = [key for key in (server_public_key(self.app.instance_path, sid) for sid in previous) if key]
        if previous:
            _append(job_id, "Another user registered this host: it moves to you once the root password is proven\n")
        instance = self.app.instance_path
        moving = on_shared_key(instance, server) or shared_key_left(instance, server_id)
        if kind in ("reprovision", "reconfigure") and moving:
            self._to_own_key(job_id, server_id)
        facts: dict = {}
        for playbook in PLAYBOOKS[kind]:
            use_password = password if playbook == "bootstrap.yml" else None
            password = None if playbook == "bootstrap.yml" else password
            server = db.session.get(Server, server_id)
            _append(job_id, f"Running {playbook}{' with the root password' if use_password else ' with the panel key'}\n")
            result = run_playbook(self.app, job_id, server, playbook, password=use_password,
                                  cancel=self.stop_event.is_set, observe=self.observe, revoked=revoked)
            use_password = None
            db.session.remove()
            if result.status != "successful":
                if self.stop_event.is_set():
                    raise JobFailed("the panel daemon stopped during the run; start the job again")
                raise JobFailed(result.failure or f"{playbook} ended with status {result.status} (exit code {result.rc})")
            if playbook == "bootstrap.yml" and previous:
                moved = [db.session.get(Server, sid) for sid in previous]
                move_host(db.session.get(Server, server_id), [s for s in moved if s is not None], self.app.instance_path)
                db.session.commit()
                _append(job_id, f"Root password proven: the host moved here from {len(previous)} earlier registration(s)\n")
            facts.update(result.facts)
        self._finish(job_id, kind, facts)

    def _to_own_key(self, job_id: int, server_id: int) -> None:
        """Move a server off the shared key, in an order that keeps it reachable if a run fails:
        install its own key (logged in with the shared one), use only its own key from then on, and
        revoke the shared key with a run logged in by the new one (if that fails, the next key job tries again)."""
        steps = ["Removing the shared key from the server (logged in with its own key)"]
        if on_shared_key(self.app.instance_path, db.session.get(Server, server_id)):
            steps.insert(0, "Installing this server's own SSH key (logged in with the key once shared by all servers)")
        for step in steps:
            _append(job_id, step + "\n")
            server = db.session.get(Server, server_id)
            result = run_playbook(self.app, job_id, server, "bootstrap.yml", cancel=self.stop_event.is_set,
                                  observe=self.observe)
            db.session.remove()
            if result.status != "successful":
                if self.stop_event.is_set():
                    raise JobFailed("the panel daemon stopped during the run; start the job again")
                raise JobFailed(result.failure
                                or f"bootstrap.yml ended with status {result.status} (exit code {result.rc})")
            if step is steps[-1]:
                shared_key_revoked(self.app.instance_path, server_id)
            else:
                own_key_in_place(self.app.instance_path, server_id)

    def _finish(self, job_id: int, kind: str, facts: dict) -> None:
        job = db.session.get(ProvisionJob, job_id)
        server = db.session.get(Server, job.server_id)
        if kind in ("add", "reprovision"):
            fingerprint = facts.get("worker_agent_tls_fingerprint", "").replace(":", "").lower()
            if len(fingerprint) != 64:
                raise JobFailed("the agent was set up but its certificate fingerprint was not reported")
            server.cert_fingerprint = fingerprint
            server.status = "new"  # the heartbeat takes over
            server.last_error = None
            message = "set up: the agent is installed; waiting for its first heartbeat"
        elif kind == "remove":
            server.status = "removed"
            message = "decommissioned: the agent and Mailfleet's Exim configuration were removed"
        else:
            message = "reconfigured"
        job.status = "succeeded"
        job.finished_at = utcnow()
        job.current_task = None
        job.log = (job.log or "") + f"Job {job.id} succeeded {job.finished_at:%Y-%m-%d %H:%M:%S} UTC\n"
        db.session.add(ServerEvent(server_id=server.id, kind="provisioned" if kind != "remove" else "removed",
                                   message=message))
        db.session.commit()
        log.info("provisioning job %s (%s) of server %s succeeded", job_id, kind, server.id)
