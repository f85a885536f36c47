"""The preflight role against real servers in miniature (devserver/testhost.py), each failure provoked for real.

Two test hosts: a good Debian 12 one (apt reaches the mirror through the test proxy) on which each
case changes the server and puts it back — an older Debian in /etc/os-release, another program on
port 25, a clock ten minutes ahead, no time service, the proxy gone, an assigned IP the server does
not have, no resolver for the mirror's name — and a small one (200 MB) for the memory check.
Each run must stop with the reason and what to do, as tests/ansible/test_lint.py checks against
the controller with the limits made impossible instead.

Skipped with the reason when test hosts cannot run here or the Ansible tooling is missing.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COLLECTION_DIR = REPO_ROOT / "ansible"
COLLECTIONS_PATH = COLLECTION_DIR / ".collections"
VENV_BIN = Path(sys.executable).parent
FOREIGN_IP = "192.0.2.77"
CLOCK_AHEAD = 600  # seconds
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
PLAYBOOK = """\
- name: Run the preflight checks
  hosts: mailfleet_workers
  gather_facts: true
  roles:
    - role: mailfleet.fleet.preflight
      vars:
        preflight_source_ips: "{{ exim_source_ips | map(attribute='ip') | list }}"
"""

testhost = pytest.importorskip("devserver.testhost", reason="devserver/testhost.py (nspawn test hosts) is not there")
molecule_host = pytest.importorskip("devserver.molecule_host")


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-8000:]}\n--- stderr\n{result.stderr[-3000:]}"


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    for name in ("ansible-playbook",):
        if not (VENV_BIN / name).exists():
            pytest.skip(f"{name} is not installed in {VENV_BIN}: `{sys.executable} -m pip install -r requirements-ansible.txt`")
    if not (COLLECTIONS_PATH / "ansible_collections" / "mailfleet" / "fleet").exists():
        pytest.skip("the collections are not unpacked: run scripts/ansible-collections.sh")
    try:
        testhost.check_prerequisites(proxy=True, release="bookworm")
    except testhost.TestHostUnavailable as exc:
        pytest.skip(str(exc))
    return molecule_host.ansible_env(VENV_BIN)


class Host:
    """A booted test host with its inventory."""

    def __init__(self, host: Any, inventory: Path) -> None:
        self.host = host
        self.inventory = inventory

    def run(self, cmd: str) -> str:
        return self.host.run(cmd, check=True).stdout


def _boot(name: str, state_dir: Path, **options: Any) -> Iterator[Host]:
    try:
        host = molecule_host.start_host(name, **options)
    except testhost.TestHostBusy as exc:
        pytest.skip(str(exc))
    try:
        info = {"name": host.name, "release": host.release, "ip": host.ip, "host_ip": host.host_ip,
                "ssh_port": host.ssh_port, "root_password": host.root_password}
        yield Host(host, molecule_host.write_inventory(info, state_dir))
    finally:
        host.stop()


@pytest.fixture(scope="module")
def good(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    yield from _boot("mfpre-good", tmp_path_factory.mktemp("good"), proxy=True)


@pytest.fixture(scope="module")
def small(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    yield from _boot("mfpre-small", tmp_path_factory.mktemp("small"), proxy=False, memory="200M")


def _preflight(env: dict[str, str], host: Host, tmp_path: Path, **variables: Any) -> subprocess.CompletedProcess[str]:
    playbook = tmp_path / "preflight.yml"
    playbook.write_text(PLAYBOOK)
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(variables))
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", str(host.inventory), str(playbook), "-e", f"@{extra}"],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False,
    )


def _text(result: subprocess.CompletedProcess[str]) -> str:
    return " ".join(result.stdout.split())


# -- how each case changes the good host (and puts it back) ----------------------------------


@contextlib.contextmanager
def _debian_11(host: Host) -> Iterator[dict[str, Any]]:
    """/etc/os-release and /etc/debian_version of a Debian 11 (bullseye) server."""
    host.run("cp -a /etc/debian_version /root/debian_version.keep && mv /etc/os-release /root/os-release.keep")
    try:
        host.run("printf '%s\\n' 'PRETTY_NAME=\"Debian GNU/Linux 11 (bullseye)\"' 'NAME=\"Debian GNU/Linux\"' "
                 "'VERSION_ID=\"11\"' 'VERSION=\"11 (bullseye)\"' 'VERSION_CODENAME=bullseye' 'ID=debian' "
                 "> /etc/os-release && echo 11.11 > /etc/debian_version")
        yield {}
    finally:
        host.run("mv /root/os-release.keep /etc/os-release && mv /root/debian_version.keep /etc/debian_version")


@contextlib.contextmanager
def _port_25_taken(host: Host) -> Iterator[dict[str, Any]]:
    """Python's web server on port 25, started under systemd as a service would be."""
    host.run("systemd-run --unit=mfpre-port25 /usr/bin/python3 -m http.server --bind 0.0.0.0 25")
    try:
        deadline = time.monotonic() + 30
        while ":25 " not in host.run("ss -H -ltn 'sport = :25'") + " ":
            assert time.monotonic() < deadline, "the web server did not listen on port 25"
            time.sleep(0.2)
        yield {}
    finally:
        host.run("systemctl stop mfpre-port25 || true")


@contextlib.contextmanager
def _clock_ahead(host: Host) -> Iterator[dict[str, Any]]:
    """Every program of a login session sees a clock ten minutes ahead.

    The container shares this machine's kernel clock, which a test must not change: libfaketime
    (Debian's faketime, from the mirror) is preloaded into every SSH session through pam_env's
    /etc/environment. (Preloading it system-wide breaks sshd's sandbox.)
    """
    host.run("apt-get install -y -q --no-install-recommends faketime >/dev/null")
    host.run("cp -a /etc/environment /root/environment.keep")
    try:
        host.run(f"printf 'LD_PRELOAD={FAKETIME_LIB}\\nFAKETIME=+{CLOCK_AHEAD}s\\n' >> /etc/environment")
        yield {}
    finally:
        host.run("mv /root/environment.keep /etc/environment")


@contextlib.contextmanager
def _no_package_proxy(host: Host) -> Iterator[dict[str, Any]]:
    """apt loses its way out (the test network's proxy): like a firewall blocking the mirror."""
    conf = "/etc/apt/apt.conf.d/90mailfleet-testhost-proxy"
    host.run(f"mv {conf} /root/apt-proxy.keep")
    try:
        yield {"preflight_check_package_sources": True}
    finally:
        host.run(f"mv /root/apt-proxy.keep {conf}")


@contextlib.contextmanager
def _variables(**variables: Any) -> Iterator[dict[str, Any]]:
    yield variables


CASES: dict[str, tuple[Callable[[Host], contextlib.AbstractContextManager[dict[str, Any]]], str, str]] = {
    "os": (_debian_11, "Unsupported operating system: this server runs Debian 11",
           "reinstall the server with Debian 12 (bookworm) or Debian 13 (trixie)"),
    "port25": (_port_25_taken, "Port 25 is taken by python3 (ss -ltnp: LISTEN",
               "stop and remove that program (for Postfix: `systemctl disable --now postfix; apt-get purge postfix`"),
    "clock": (_clock_ahead, "The clock is off: this server's time differs from the controller's by",
              "enable time synchronisation (`apt-get install systemd-timesyncd` or chrony)"),
    # No time service runs on a test host (none is installed): the check is on, as on a real server.
    "time-sync": (lambda host: _variables(preflight_time_sync_required=True),
                  "No time synchronisation is active (timedatectl: NTP=no, NTPSynchronized=no)",
                  "`apt-get install systemd-timesyncd && timedatectl set-ntp true`"),
    "package-sources": (_no_package_proxy, "The package sources do not answer:",
                        "check /etc/apt/sources.list and /etc/apt/sources.list.d/, a proxy in /etc/apt/apt.conf.d/"),
    # A test host has no resolver: with the default test name, the role asks for the mirror's host.
    "resolver": (lambda host: _variables(preflight_resolver_test_name=""),
                 "No working resolver: this server cannot look up",
                 "put a nameserver that answers into /etc/resolv.conf"),
    "ip": (lambda host: _variables(exim_source_ips=[{"ip": host.host.ip, "helo": "mx1.example.test"},
                                                    {"ip": FOREIGN_IP, "helo": "mx2.example.test"}]),
           f"{FOREIGN_IP} is assigned to this worker but not configured on any of its interfaces",
           "add the address to the server's network configuration"),
}


def test_preflight_passes_on_a_good_host_and_changes_nothing(env: dict[str, str], good: Host, tmp_path: Path) -> None:
    result = _preflight(env, good, tmp_path)
    assert result.returncode == 0, _output(result)
    text = _text(result)
    assert re.search(r" changed=0 .* failed=0 ", text), _output(result)
    # Every check ran, the package sources' too (apt-get update through the test proxy).
    assert re.search(r"Check that the package sources answer\] \*+ ok: \[mfpre-good\]", text), _output(result)


@pytest.mark.parametrize("case", list(CASES))
def test_preflight_stops_with_a_reason_and_a_remedy(env: dict[str, str], good: Host, tmp_path: Path, case: str) -> None:
    provoke, reason, remedy = CASES[case]
    if case == "time-sync" and "NTPSynchronized=yes" in good.run("timedatectl show"):
        pytest.skip("this machine's kernel clock is NTP-synchronised and a container shares it: "
                    "no test host can be without time synchronisation here")
    with provoke(good) as variables:
        result = _preflight(env, good, tmp_path, **variables)
    assert result.returncode != 0, _output(result)
    text = _text(result)
    assert reason in text, _output(result)
    assert remedy in text, _output(result)
    if case == "clock":
        offset = int(re.search(r"differs from the controller's by (-?\d+) seconds", text).group(1))  # type: ignore[union-attr]
        assert CLOCK_AHEAD - 30 <= offset <= CLOCK_AHEAD + 30, text
    if case == "resolver":
        named = re.search(r"cannot look up (\S+) ", text).group(1)  # type: ignore[union-attr]
        assert named in [*testhost.mirror_hosts(), "deb.debian.org"], text
    if case == "package-sources":
        assert re.search(r"The package sources do not answer: [EW]: ", text), _output(result)
    # Whatever the case changed is back: the host passes again.
    if case in ("os", "port25", "clock", "package-sources"):
        again = _preflight(env, good, tmp_path)
        assert again.returncode == 0, _output(again)


def test_preflight_stops_on_a_host_with_too_little_memory(env: dict[str, str], small: Host, tmp_path: Path) -> None:
    result = _preflight(env, small, tmp_path)
    assert result.returncode != 0, _output(result)
    text = _text(result)
    assert "Not enough memory: this server has 200 MB and a worker needs at least 256 MB" in text, _output(result)
    assert "give the server more memory (a bigger plan or VM size)" in text, _output(result)
