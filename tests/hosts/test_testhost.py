"""Test hosts are real servers in miniature: systemd, sshd with a root password, confined network.

Traffic stays on 127.0.0.0/8 and inside the network namespaces the test hosts create;
only apt's downloads through the filtering proxy reach this machine's own Debian mirror.
"""

from __future__ import annotations

import http.server
import ipaddress
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from devserver import testhost
from devserver.testhost import TestHost, TestHostUnavailable

from .conftest import HostFactory

SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=10", "-o", "PubkeyAuthentication=no", "-o", "PreferredAuthentications=password"]


def ssh(host: TestHost, command: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
    """`ssh root@host command` with a password, handed to sshpass through the environment only."""
    env = dict(os.environ, SSHPASS=host.root_password if password is None else password)
    return subprocess.run(
        ["sshpass", "-e", "ssh", *SSH_OPTS, "-p", str(host.ssh_port), f"root@{host.ip}", command],
        env=env, capture_output=True, text=True, timeout=60,
    )


def assert_system_running(host: TestHost) -> None:
    state = host.wait_until_booted(timeout=60)
    assert state in ("running", "degraded"), state
    assert state == "running", f"{host.release} host is degraded, failed units: {host.failed_units()}"


def leftovers(host: TestHost) -> list[str]:
    """Everything a stopped host could have left behind, described; empty when clean."""
    found = []
    if host.netns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split():
        found.append(f"netns {host.netns}")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    if f" {host.veth}@" in links or f" {host.veth}:" in links:
        found.append(f"veth {host.veth}")
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if str(host.tree) in cmd or f"/{host.name}/proxy/" in cmd:
            found.append(f"process {proc.pid}: {cmd}")
    if host.dir.exists():
        found.append(f"directory {host.dir}")
    return found


# --- without root: the pure parts -------------------------------------------------------

def test_one_28_per_host_inside_the_test_network() -> None:
    seen = set()
    for index in range(testhost.MAX_HOSTS):
        host_ip, ip, net = testhost.subnet(index)
        assert net.prefixlen == 28 and net.subnet_of(testhost.TEST_NETWORK)  # type: ignore[arg-type]
        assert int(host_ip) == int(net.network_address) + 1 and int(ip) == int(net.network_address) + 2
        seen.add(net)
    assert len(seen) == 16
    assert testhost.TEST_NETWORK.is_private
    assert str(testhost.subnet(0)[0]) == "10.213.77.1"
    with pytest.raises(testhost.TestHostError, match="subnet_index must be 0..15"):
        testhost.subnet(16)


def test_container_apt_sources_follow_the_hosts_mirrors() -> None:
    sources = testhost.host_apt_sources()
    if not sources:
        pytest.skip("this machine's apt has no http(s) sources")
    text = testhost._container_sources("trixie")
    for host in testhost.mirror_hosts():
        assert host in text
    assert all(line.startswith("deb http") for line in text.splitlines())
    codename = testhost._host_codename()
    if codename and codename != "trixie":
        assert f" {codename} " not in text and f" {codename}-" not in text


def test_missing_tool_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("the check for tools comes after the check for root, and this is not root")
    real = testhost._find_tool
    monkeypatch.setattr(testhost, "_find_tool", lambda name: None if name == "debootstrap" else real(name))
    with pytest.raises(TestHostUnavailable) as info:
        testhost.check_prerequisites(release="bookworm")
    assert str(info.value) == "debootstrap is not installed (Debian package debootstrap): run make system-deps"


# --- real hosts ---------------------------------------------------------------------------

def test_boots_with_systemd_ssh_root_password_and_python(test_host: HostFactory) -> None:
    started = time.monotonic()
    host = test_host()
    boot_seconds = time.monotonic() - started
    assert boot_seconds < 15, f"booting took {boot_seconds:.1f} s"
    assert ipaddress.ip_address(host.ip) in ipaddress.ip_network(host.network)
    assert host.ssh_port == 22 and len(host.root_password) >= 16
    assert_system_running(host)

    result = ssh(host, "id -un; hostname; systemctl is-system-running; python3 --version")
    assert result.returncode == 0, result.stderr
    user, hostname, state, python = result.stdout.split("\n")[:4]
    assert (user, hostname, state) == ("root", host.name, "running")
    assert python.startswith("Python 3.")
    assert host.run("python3 --version").stdout.startswith("Python 3.")
    assert host.run(["readlink", "/proc/1/exe"]).stdout.strip().endswith("/systemd")
    # A real server: services start on install, sshd is a systemd unit.
    assert host.run("test -e /usr/sbin/policy-rc.d").returncode == 1
    assert host.run("systemctl is-active ssh").stdout.strip() == "active"

    wrong = ssh(host, "true", password="not-" + host.root_password)
    assert wrong.returncode != 0


def test_reaches_only_its_veth_and_leaves_nothing_behind(test_host: HostFactory) -> None:
    host = test_host()
    routes = [line.strip() for line in host.run("ip -4 route show").stdout.splitlines()]
    assert routes == [f"{host.network} dev eth0 proto kernel scope link src {host.ip}"], routes
    assert "default" not in host.run("ip -6 route show").stdout
    # No route means no packet: 192.0.2.1 (TEST-NET-1) is unreachable at once.
    unreachable = host.run("ip route get 192.0.2.1")
    assert unreachable.returncode != 0 and "unreachable" in unreachable.stderr

    # The host side of the veth is reachable: a listener there answers.
    with socket.create_server((host.host_ip, 0)) as server:
        port = server.getsockname()[1]
        probe = host.run(["python3", "-c", f"import socket; socket.create_connection(('{host.host_ip}', {port}), 5)"])
        assert probe.returncode == 0, probe.stderr
        peer = server.accept()[0]
        peer.close()

    nspawn_pid, container_pid = host._nspawn.pid, host.pid  # type: ignore[union-attr]
    host.stop()
    assert not psutil.pid_exists(nspawn_pid) and not psutil.pid_exists(container_pid)
    assert leftovers(host) == []
    assert not os.path.ismount(host.tree)


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = b"reached\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def local_web() -> Iterator[int]:
    """An HTTP server on 127.0.0.1 that answers 200: what the proxy must NOT let a host reach."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_apt_works_through_the_proxy_and_nothing_else_does(test_host: HostFactory, local_web: int) -> None:
    host = test_host(proxy=True)
    assert host.proxy_url == f"http://{host.host_ip}:{testhost.PROXY_PORT}"
    started = time.monotonic()
    update = host.run("apt-get update", timeout=180)
    assert update.returncode == 0, update.stdout[-1500:] + update.stderr[-1500:]
    assert "Err:" not in update.stdout and "W: " not in update.stderr, update.stderr
    assert time.monotonic() - started < 180
    assert host.run("apt-cache policy openssh-server").stdout.count("http://") >= 1
    # As on a real server, an installed package's service starts (no policy-rc.d in the way).
    install = host.run("apt-get install -y -q exim4-daemon-light", timeout=300)
    assert install.returncode == 0, install.stdout[-1500:] + install.stderr[-1500:]
    assert host.run("systemctl is-active exim4").stdout.strip() == "active"

    # Through the proxy, a host that is not one of this machine's apt mirrors is refused
    # (127.0.0.1 here would answer 200 if the proxy let the request through).
    script = (
        "import urllib.request, urllib.error\n"
        f"opener = urllib.request.build_opener(urllib.request.ProxyHandler({{'http': '{host.proxy_url}'}}))\n"
        "try:\n"
        f"    print(opener.open('http://127.0.0.1:{local_web}/', timeout=20).status)\n"
        "except urllib.error.HTTPError as exc:\n"
        "    print(exc.code)\n"
    )
    refused = host.run(["python3", "-c", script], timeout=60)
    assert refused.stdout.strip() == "403", refused.stdout + refused.stderr
    # CONNECT is allowed to port 443 only.
    connect = host.run(["python3", "-c", (
        "import socket\n"
        f"s = socket.create_connection(('{host.host_ip}', {testhost.PROXY_PORT}), 10)\n"
        f"s.sendall(b'CONNECT 127.0.0.1:{local_web} HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n')\n"
        "print(s.recv(100).split(b'\\r\\n')[0].decode())\n"
    )], timeout=60)
    assert connect.stdout.split()[1:2] == ["403"], connect.stdout + connect.stderr


def test_memory_limit_is_what_the_host_sees(test_host: HostFactory) -> None:
    host = test_host(memory="200M")
    meminfo = host.run("head -1 /proc/meminfo").stdout.split()
    assert meminfo == ["MemTotal:", str(200 * 1024), "kB"]
    assert host.run("free -m").stdout.splitlines()[1].split()[1] == "200"
    # And it is a limit: a process inside that touches 400 MB is killed, 50 MB is fine.
    assert host.run(["python3", "-c", "b = b'x' * (50 << 20)"], timeout=60).returncode == 0
    assert host.run(["python3", "-c", "b = b'x' * (400 << 20)"], timeout=60).returncode in (-9, 137)


def test_leftovers_of_a_crashed_run_are_cleared_at_start(rootfs: Path) -> None:
    # What a run killed mid-test leaves: its namespace (with a process in it), its veth, its directory.
    name, index = "mfstray", testhost.MAX_HOSTS - 1
    netns, veth = testhost.NETNS_PREFIX + name, f"mfth{index}"
    stray_dir = testhost.RUN_DIR / name
    try:
        subprocess.run(["ip", "netns", "add", netns], check=True)
        subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns], check=True)
        sleeper = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "600"], start_new_session=True)
        (stray_dir / "upper").mkdir(parents=True, exist_ok=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"could not fake a crashed run: {exc}")
    with TestHost(name, subnet_index=index) as host:
        assert sleeper.wait(10) == -9
        assert host.run("systemctl is-system-running --wait", timeout=60).stdout.strip() == "running"
    assert leftovers(host) == []


def test_trixie_host_boots_too(test_host: HostFactory) -> None:
    try:
        testhost.check_prerequisites(release="trixie")
    except TestHostUnavailable as exc:
        pytest.skip(str(exc))
    host = test_host(release="trixie")
    assert_system_running(host)
    assert host.run("cat /etc/debian_version").stdout.startswith("13")
    result = ssh(host, "python3 --version")
    assert result.returncode == 0 and result.stdout.startswith("Python 3."), result.stderr


def test_command_line_keeps_a_host_up_until_sigterm(rootfs: Path) -> None:
    import json
    import signal
    import sys

    index = next(i for i in range(testhost.MAX_HOSTS)
                 if not Path(f"/sys/class/net/mfth{i}").exists() and i != testhost.MAX_HOSTS - 1)
    proc = subprocess.Popen([sys.executable, "-m", "devserver.testhost", "mfcli", "--subnet-index", str(index)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(testhost.__file__).resolve().parent.parent)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        info = json.loads(line)
        host = TestHost("mfcli", subnet_index=index, root_password=info["root_password"])
        assert (info["ip"], info["host_ip"], info["ssh_port"]) == (host.ip, host.host_ip, 22)
        result = ssh(host, "systemctl is-system-running --wait")
        assert result.stdout.strip() == "running", result.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()  # type: ignore[union-attr]
        assert leftovers(host) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
