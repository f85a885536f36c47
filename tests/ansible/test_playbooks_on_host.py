"""The collection's playbooks against a real server in miniature (devserver/testhost.py):
a debootstrapped Debian booted with systemd-nspawn, reached over SSH with its root password.

bootstrap (password) → worker (key) → worker again (nothing changes) → what it built works
(Exim and both agent units active, Exim routes a VERP bounce to the agent's pipe, the agent
answers TLS with the certificate whose fingerprint the run reported) → reconfigure (nothing
changes) → password logins off (key still works, the password no longer) → decommission.

Skipped with the reason when test hosts cannot run here (not root, packages missing) or the
Ansible tooling of requirements-ansible.txt is not installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTION_DIR = REPO_ROOT / "ansible"
COLLECTIONS_PATH = COLLECTION_DIR / ".collections"
VENV_BIN = Path(sys.executable).parent
BOUNCE_DOMAIN = "bounces.example.test"

testhost = pytest.importorskip("devserver.testhost", reason="devserver/testhost.py (nspawn test hosts) is not there")


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-12000:]}\n--- stderr\n{result.stderr[-4000:]}"


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    for name in ("ansible-playbook", "ansible"):
        if not (VENV_BIN / name).exists():
            pytest.skip(f"{name} is not installed in {VENV_BIN}: `{sys.executable} -m pip install -r requirements-ansible.txt`")
    if not (COLLECTIONS_PATH / "ansible_collections" / "ansible" / "posix").is_dir():
        pytest.skip("ansible.posix is not unpacked: run scripts/ansible-collections.sh")
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS_PATH),
        "ANSIBLE_HOME": str(COLLECTION_DIR / ".ansible"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        # A reused password connection would hide a refused password login.
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o ControlPath=none",
        "ANSIBLE_PIPELINING": "1",
    }


@pytest.fixture(scope="module")
def host() -> Iterator[object]:
    try:
        testhost.check_prerequisites(proxy=True, release="bookworm")
    except testhost.TestHostUnavailable as exc:
        pytest.skip(str(exc))
    for index in reversed(range(testhost.MAX_HOSTS)):
        candidate = testhost.TestHost(f"mfansible{index}", subnet_index=index, proxy=True)
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


@pytest.fixture(scope="module")
def inventories(host: object, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("inventory")
    key = tmp / "panel_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mailfleet-panel", "-f", str(key)], check=True)
    known_hosts = tmp / "known_hosts"
    scan = subprocess.run(["ssh-keyscan", "-p", str(host.ssh_port), host.ip], capture_output=True, text=True, check=True)
    known_hosts.write_text(scan.stdout)
    base = {
        "ansible_host": host.ip,
        "ansible_port": host.ssh_port,
        "ansible_user": "root",
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes",
        "ssh_access_public_key": (tmp / "panel_key.pub").read_text().strip(),
        "exim_source_ips": [{"ip": host.ip, "helo": "mx1.example.test"}],
        "exim_bounce_domains": [BOUNCE_DOMAIN],
        # The test host has no resolver (no route out); its own name is in its /etc/hosts.
        "preflight_resolver_test_name": host.name,
        # A container's clock is the host's; no time service runs inside.
        "preflight_time_sync_required": False,
    }
    result = {}
    for name, auth in {
        # The password only (a key the panel holds must not make the password test pass).
        "password": {"ansible_password": host.root_password, "ansible_ssh_extra_args": "-o PubkeyAuthentication=no"},
        "key": {"ansible_ssh_private_key_file": str(key), "ansible_ssh_extra_args": "-o PasswordAuthentication=no"},
    }.items():
        path = tmp / f"{name}.yml"  # JSON is YAML
        path.write_text(json.dumps({"mailfleet_workers": {"hosts": {host.name: {**base, **auth}}}}))
        result[name] = path
    return result


def _play(env: dict[str, str], inventory: Path, playbook: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(inventory), str(COLLECTION_DIR / "playbooks" / playbook), *extra],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False,
    )


def _recap(result: subprocess.CompletedProcess[str]) -> str:
    return next((line for line in result.stdout.splitlines() if " changed=" in line and " failed=" in line), "")


def test_a_bare_server_becomes_a_worker_and_is_removed_again(env: dict[str, str], host: object,
                                                             inventories: dict[str, Path]) -> None:
    result = _play(env, inventories["password"], "bootstrap.yml")
    assert result.returncode == 0, _output(result)
    assert "changed=1" in _recap(result), _output(result)

    result = _play(env, inventories["key"], "worker.yml")
    assert result.returncode == 0, _output(result)
    fingerprints = re.findall(r"certificate SHA-256 ([0-9a-f]{64})", result.stdout)
    assert fingerprints, _output(result)

    again = _play(env, inventories["key"], "worker.yml")
    assert again.returncode == 0, _output(again)
    assert "changed=0" in _recap(again), "a second run must change nothing\n" + _output(again)

    status = host.run(["systemctl", "is-active", "exim4", "mailfleet-agent-api", "mailfleet-agent-sender"])
    assert status.stdout.split() == ["active", "active", "active"], status.stdout + status.stderr
    route = host.run(["exim4", "-bt", f"bounce+1-abc@{BOUNCE_DOMAIN}"])
    assert "router = mailfleet_bounces, transport = mailfleet_bounce_pipe" in route.stdout, route.stdout + route.stderr
    assert "Configuration file is /etc/exim4/exim4.conf" in host.run(["exim4", "-bV"]).stdout

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the panel pins the fingerprint instead
    with socket.create_connection((host.ip, 8443), timeout=10) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert hashlib.sha256(der).hexdigest() == fingerprints[-1]

    result = _play(env, inventories["key"], "reconfigure.yml")
    assert result.returncode == 0, _output(result)
    assert "changed=0" in _recap(result), _output(result)

    # The test host, like many a hosting company's image, turns password logins on in a drop-in
    # that sshd reads before Mailfleet's: the role must say so rather than claim success.
    result = _play(env, inventories["key"], "bootstrap.yml", "-e", "ssh_access_disable_password_login=true")
    assert result.returncode != 0, _output(result)
    text = " ".join(result.stdout.split())
    assert "Password logins are still on" in text, _output(result)
    assert "/etc/ssh/sshd_config.d/00-mailfleet-testhost.conf turns them on" in text, _output(result)
    # What the message tells the sysadmin to do.
    host.run(["sed", "-i", "/^PasswordAuthentication/d", "/etc/ssh/sshd_config.d/00-mailfleet-testhost.conf"], check=True)
    host.run(["systemctl", "reload", "ssh"], check=True)
    result = _play(env, inventories["key"], "bootstrap.yml", "-e", "ssh_access_disable_password_login=true")
    assert result.returncode == 0, _output(result)
    ping = [str(VENV_BIN / "ansible"), "-i"]
    by_key = subprocess.run([*ping, str(inventories["key"]), "all", "-m", "ansible.builtin.ping"],
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    assert by_key.returncode == 0, _output(by_key)
    by_password = subprocess.run([*ping, str(inventories["password"]), "all", "-m", "ansible.builtin.ping"],
                                 env=env, capture_output=True, text=True, timeout=120, check=False)
    assert by_password.returncode != 0 and "UNREACHABLE" in by_password.stdout, _output(by_password)

    result = _play(env, inventories["key"], "decommission.yml")
    assert result.returncode == 0, _output(result)
    left = host.run("systemctl is-active mailfleet-agent-api mailfleet-agent-sender; "
                    "ls /opt/mailfleet-agent /etc/mailfleet /etc/exim4/exim4.conf 2>&1; id mailfleet-agent 2>&1; "
                    "systemctl is-active exim4")
    lines = left.stdout.splitlines()
    assert lines[:2] == ["inactive", "inactive"], left.stdout
    assert left.stdout.count("No such file or directory") == 3, left.stdout
    assert "no such user" in left.stdout, left.stdout
    assert lines[-1] == "active", "Debian's own Exim configuration takes over again\n" + left.stdout
    # The panel's key left root's authorized_keys: the panel can no longer log in.
    public = json.loads(inventories["key"].read_text())["mailfleet_workers"]["hosts"][host.name]["ssh_access_public_key"]
    assert public.split()[1] not in host.run("cat /root/.ssh/authorized_keys").stdout
    by_key = subprocess.run([*ping, str(inventories["key"]), "all", "-m", "ansible.builtin.ping"],
                            env=env, capture_output=True, text=True, timeout=120, check=False)
    assert by_key.returncode != 0 and "UNREACHABLE" in by_key.stdout, _output(by_key)
