"""Setting servers up through Ansible: adding a server from its root password, jobs, each server's SSH key,
and a host moving to the user who proved its root password.

The root password never comes here: the web view hands it straight to the daemon's memory
(panel/daemon/password_channel.py). These functions flush but do not commit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from cryptography.fernet import Fernet
from flask import current_app
from sqlalchemy import select, update

from ..extensions import db
from ..models import FINAL_STATES, JOB_KINDS, Delivery, ProvisionJob, Server, ServerEvent, User
from ..models.base import utcnow
from . import network_policy
from .failover import release_unsent
from .servers import ServerError, SourceIP, _check_host, new_server, parse_source_ip

ACTIVE_JOB_STATES = ("queued", "running")
# What the user reads when a password job outlived the process that held the password.
PASSWORD_LOST = "the root password was only in memory of the daemon that stopped; enter it again"
DAEMON_DOWN = (
    "the panel daemon is not running, so nobody can set the server up; the root password was "
    "discarded. Start the daemon (python -m panel.daemon) and add the server again"
)


# --- SSH keys (one per server) and known_hosts, kept in instance/ssh/
#
# Each server has a key of its own, so one server's key opens no other host, and a host that
# moves to another user (a new server row) gets a new key while the old one is revoked there.

def ssh_dir(instance_path: str | os.PathLike) -> Path:
    path = Path(instance_path) / "ssh"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _key_dir(instance_path: str | os.PathLike, server_id: int) -> Path:
    return ssh_dir(instance_path) / "servers" / str(int(server_id))


def server_key(instance_path: str | os.PathLike, server_id: int) -> tuple[Path, str]:
    """The server's SSH key (made once with ssh-keygen; 0600 in a 0700 folder of its own):
    its private key file and public key line."""
    folder = _key_dir(instance_path, server_id)
    folder.parent.mkdir(mode=0o700, exist_ok=True)
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder.parent, 0o700)
    os.chmod(folder, 0o700)
    key = folder / "id_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"mailfleet-panel-server{int(server_id)}",
             "-f", str(key)],
            check=True, capture_output=True, text=True, timeout=30,
        )
    os.chmod(key, 0o600)
    return key, key.with_suffix(".pub").read_text().strip()


def server_public_key(instance_path: str | os.PathLike, server_id: int) -> str | None:
    """The server's public key line if it has a key (without making one)."""
    pub = _key_dir(instance_path, server_id) / "id_ed25519.pub"
    return pub.read_text().strip() if pub.exists() else None


def legacy_public_key(instance_path: str | os.PathLike) -> str | None:
    """The one key earlier versions installed on every worker (instance/ssh/id_ed25519.pub), if it
    is still here: every bootstrap and decommission removes it from the host."""
    pub = Path(instance_path) / "ssh" / "id_ed25519.pub"
    return pub.read_text().strip() if pub.exists() else None


_SHARED_MARK = "on-shared-key"  # in a server's key folder: its own key is made but not yet the one in use
_SHARED_LEFT = "shared-key-left"  # its own key is in use, the shared one not yet removed from the host


def on_shared_key(instance_path: str | os.PathLike, server: Server) -> bool:
    """Set up (by a proven password) before keys were per server: the shared key still reaches it,
    until a key run installs its own key (begin_own_key, own_key_in_place)."""
    if legacy_public_key(instance_path) is None or not server.cert_fingerprint:
        return False
    folder = _key_dir(instance_path, server.id)
    return server_public_key(instance_path, server.id) is None or (folder / _SHARED_MARK).exists()


def begin_own_key(instance_path: str | os.PathLike, server_id: int) -> str:
    """The public key a server on the shared key is moving to. Marked as not yet in use before it is
    made: a run that fails before it is installed leaves the panel on the shared key."""
    folder = _key_dir(instance_path, server_id)
    if server_public_key(instance_path, server_id) is None:
        folder.parent.mkdir(mode=0o700, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        (folder / _SHARED_MARK).touch()
    return server_key(instance_path, server_id)[1]


def own_key_in_place(instance_path: str | os.PathLike, server_id: int) -> None:
    """Its own key is on the host: from now on the panel logs in with it alone (the shared key is
    marked as still to be removed from the host, until shared_key_revoked)."""
    folder = _key_dir(instance_path, server_id)
    if (folder / _SHARED_MARK).exists():
        (folder / _SHARED_LEFT).touch()
        (folder / _SHARED_MARK).unlink()


def shared_key_left(instance_path: str | os.PathLike, server_id: int) -> bool:
    return (_key_dir(instance_path, server_id) / _SHARED_LEFT).exists()


def shared_key_revoked(instance_path: str | os.PathLike, server_id: int) -> None:
    (_key_dir(instance_path, server_id) / _SHARED_LEFT).unlink(missing_ok=True)


def forget_server_key(instance_path: str | os.PathLike, server_id: int) -> None:
    shutil.rmtree(_key_dir(instance_path, server_id), ignore_errors=True)


def known_hosts_path(instance_path: str | os.PathLike) -> Path:
    return ssh_dir(instance_path) / "known_hosts"


def write_known_hosts(instance_path: str | os.PathLike) -> Path:
    """Rewrite instance/ssh/known_hosts from the host keys recorded on the servers (atomically)."""
    path = known_hosts_path(instance_path)
    lines = []
    for host_key in db.session.scalars(select(Server.host_key).where(Server.host_key.is_not(None))):
        lines.extend(line for line in host_key.splitlines() if line.strip())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".known_hosts.")
    with os.fdopen(fd, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def ssh_address(host: str, port: int) -> str:
    """The address the panel connects to for this SSH host (network_policy); ServerError if refused."""
    try:
        return network_policy.check(host, port)
    except network_policy.HostRefused as exc:
        raise ServerError(str(exc)) from None


def scan_host_key(host: str, port: int, timeout: int = 10) -> tuple[str, str]:
    """`ssh-keyscan -p PORT ADDRESS` of the checked address: the known_hosts lines and their SHA256
    fingerprints (one per key type). Only whether keys came back is told, never what the port said."""
    address = ssh_address(host, port)
    proc = subprocess.run(
        ["ssh-keyscan", "-T", str(timeout), "-p", str(port), "--", address],
        capture_output=True, text=True, timeout=timeout + 10,
    )
    lines = sorted(line for line in proc.stdout.splitlines() if line.strip() and not line.startswith("#"))
    if not lines:
        raise ServerError(
            f"no SSH server answered on {host} port {port}: check the address and port, "
            "and that the server is running and reachable from the panel"
        )
    with tempfile.NamedTemporaryFile("w", suffix=".keys") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", f.name],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    # "256 SHA256:abc… [host]:2222 (ED25519)" -> "ED25519 SHA256:abc…"
    prints = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4:
            prints.append(f"{parts[-1].strip('()')} {parts[1]}")
    return "\n".join(lines), "\n".join(prints)


# --- adding servers and starting jobs

def parse_ip_lines(text: str) -> list[SourceIP]:
    """IPs one per line, each `IP` or `IP=HELO`; blank lines ignored."""
    return [parse_source_ip(line) for line in text.splitlines() if line.strip()]


def add_server(user: User, *, name: str, host: str, ssh_port: int, ips: list[SourceIP]) -> tuple[Server, ProvisionJob]:
    """A server the panel is to set up from its root password: the row (status provisioning) and
    its `add` job (queued, waiting for the password that the caller hands to the daemon)."""
    if not 1 <= ssh_port <= 65535:
        raise ServerError(f"SSH port {ssh_port} is out of range (1-65535)")
    ssh_address(_check_host(host), ssh_port)  # refused before anything is stored (network_policy)
    server = new_server(user, name=name, host=host, ips=ips, ssh_port=ssh_port, api_port=8443,
                        agent_key=Fernet.generate_key().decode(), cert_fingerprint=None, status="provisioning")
    job = ProvisionJob(server_id=server.id, kind="add", status="queued", needs_password=True, log="")
    db.session.add(job)
    db.session.flush()
    return server, job


# --- a host that another user registered: it moves to whoever proves its root password

MOVED = ("moved to another panel user, who proved the host's root password; the panel no longer "
         "uses it for you and has removed your key from it")


def other_owners(server: Server) -> list[Server]:
    """Other users' servers (not removed) on the same host and SSH port: the name, or an address
    either resolves to, in common."""
    candidates = db.session.scalars(
        select(Server).where(Server.user_id != server.user_id, Server.ssh_port == server.ssh_port,
                             Server.status != "removed", Server.id != server.id)
    ).all()
    return [other for other in candidates
            if network_policy.same_host(server.host, server.ssh_port, other.host, other.ssh_port)]


def move_host(server: Server, previous: list[Server], instance_path: str | os.PathLike) -> None:
    """After `server`'s owner proved the root password: the previous owners' rows on that host are
    taken out of use (status removed, queued jobs failed, key forgotten) and each owner is told
    by an event on their server. Their keys were revoked on the host by the same bootstrap run."""
    for other in previous:
        other.status = "removed"
        other.last_error = MOVED
        for job in db.session.scalars(select(ProvisionJob).where(
                ProvisionJob.server_id == other.id, ProvisionJob.status.in_(ACTIVE_JOB_STATES))):
            fail_job(job, MOVED)
        db.session.add(ServerEvent(server_id=other.id, kind="moved", message=MOVED))
        forget_server_key(instance_path, other.id)
    if previous:
        db.session.add(ServerEvent(server_id=server.id, kind="moved",
                                   message=f"taken over from {len(previous)} earlier registration(s) of this host "
                                           "by another user; their keys were removed from it"))
    db.session.flush()


def active_job(server: Server) -> ProvisionJob | None:
    return db.session.scalars(
        select(ProvisionJob).where(ProvisionJob.server_id == server.id, ProvisionJob.status.in_(ACTIVE_JOB_STATES))
    ).first()


def start_job(user: User, server: Server, kind: str) -> ProvisionJob:
    """Queue a key-only job (reprovision, reconfigure, remove) for the user's server."""
    if server.user_id != user.id:
        raise ServerError("there is no such server")
    if kind not in JOB_KINDS or kind == "add":
        raise ServerError(f"unknown job {kind!r}")
    if active_job(server) is not None:
        raise ServerError("a job for this server is already queued or running: wait until it ends")
    if server.host_key is None:
        raise ServerError("the panel has never reached this server over SSH: add it again with its root password")
    if kind == "reconfigure" and not server.cert_fingerprint:
        raise ServerError("the server was never set up completely: re-provision it first")
    job = ProvisionJob(server_id=server.id, kind=kind, status="queued", needs_password=False, log="")
    db.session.add(job)
    if kind in ("reprovision", "remove"):
        server.status = "provisioning"
    db.session.flush()
    return job


def fail_job(job: ProvisionJob, error: str) -> None:
    job.status = "failed"
    job.error = error
    job.finished_at = utcnow()
    job.log = (job.log or "") + f"FAILED: {error}\n"
    server = db.session.get(Server, job.server_id)
    if server is not None and server.status == "provisioning":
        server.status = "failed"
        server.last_error = error
    db.session.flush()


def server_jobs(server: Server, limit: int = 20) -> list[ProvisionJob]:
    return list(db.session.scalars(
        select(ProvisionJob).where(ProvisionJob.server_id == server.id).order_by(ProvisionJob.id.desc()).limit(limit)
    ))


def get_job(user: User, job_id: int) -> ProvisionJob | None:
    job = db.session.get(ProvisionJob, job_id)
    if job is None:
        return None
    server = db.session.get(Server, job.server_id)
    return job if server is not None and server.user_id == user.id else None


def _when(value) -> str | None:  # noqa: ANN001
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else None


def job_info(job: ProvisionJob) -> dict:
    return {
        "id": job.id, "kind": job.kind, "status": job.status, "created_at": _when(job.created_at),
        "started_at": _when(job.started_at), "finished_at": _when(job.finished_at),
        "current_task": job.current_task, "tasks_done": job.tasks_done, "log": job.log or "", "error": job.error,
    }



def delete_server(user: User, server: Server) -> int:
    """Forget a server the panel no longer uses: its row, IPs, settings, jobs and events go;
    the campaigns' history stays (deliveries keep their outcome and lose only the server).

    Letters in batches never pushed to it go back to their campaigns; letters handed to it without
    a final outcome can no longer be followed: they are marked failed saying so, and the count is
    returned. Refused while it may still be sending.
    """
    if server.user_id != user.id:
        raise ServerError("there is no such server")
    if active_job(server) is not None:
        raise ServerError("a setup job is queued or running: wait until it ends")
    if server.status == "online":
        raise ServerError("it is online and may still be sending: remove it first (Remove uninstalls the agent), "
                          "or delete it once it is offline")
    # Letters it was never sent go to the campaigns' other servers; the rest may be on its agent.
    release_unsent(server)
    lost = db.session.execute(
        update(Delivery)
        .where(Delivery.server_id == server.id, Delivery.status.not_in(FINAL_STATES))
        .values(status="failed", code=None, reply=f"the server {server.name} was deleted before this letter's outcome was known")
    ).rowcount
    # All its letters forget it (deliveries.server_id has no foreign key to do it: models/campaign.py).
    db.session.execute(update(Delivery).where(Delivery.server_id == server.id).values(server_id=None))
    db.session.delete(server)
    db.session.flush()
    forget_server_key(current_app.instance_path, server.id)  # nothing can use it any more
    return lost