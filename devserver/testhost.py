"""Test hosts: real Debian servers in miniature, booted with systemd-nspawn.

A test host is a debootstrapped Debian tree (built once per machine and release,
cached under /var/cache/mailfleet-testhosts/) booted under its own systemd by
`systemd-nspawn` inside a network namespace this module creates. It runs sshd with
root password login, so it can be provisioned the way the panel provisions a bare
server: from its root password alone.

Network: every test host gets one /28 out of TEST_NETWORK; the host side of its veth
is the first usable address, the container the second (its `eth0`). The container has
no default route: it can reach only the host side of its veth. With `proxy=True` a
tinyproxy on the host side lets the container's apt reach exactly the package mirrors
this machine's own apt uses (read from /etc/apt at run time), nothing else.

    with TestHost("worker1", subnet_index=1, proxy=True) as host:
        host.run("apt-get update")
        ssh root@host.ip (password host.root_password)

Needs root and the Debian packages debootstrap, systemd-container, tinyproxy,
sshpass and iproute2 (`make system-deps`). Nothing here needs systemd as PID 1 on
the machine running the tests.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import glob
import hashlib
import ipaddress
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

import psutil

CACHE_DIR = Path(os.environ.get("MAILFLEET_TESTHOST_CACHE", "/var/cache/mailfleet-testhosts"))
RUN_DIR = Path(os.environ.get("MAILFLEET_TESTHOST_RUN", "/var/tmp/mailfleet-testhosts"))
LOCK_DIR = Path("/run/mailfleet-testhosts")
TEST_NETWORK = ipaddress.ip_network("10.213.77.0/24")
SUBNET_PREFIX = 28
MAX_HOSTS = 2 ** (SUBNET_PREFIX - TEST_NETWORK.prefixlen)  # 16 test hosts at once
RELEASES = ("bookworm", "trixie")
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-venv",
    "sudo", "iproute2", "ca-certificates",
)
# Units that cannot work in a container (no real devices, no kernel modules, no
# hardware clock); masked in the tree so a healthy host reports "running".
MASKED_UNITS = (
    "systemd-udevd.service", "systemd-udev-trigger.service", "systemd-udev-settle.service",
    "systemd-modules-load.service", "sys-kernel-config.mount", "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount", "systemd-firstboot.service", "getty@tty1.service",
    "systemd-hwdb-update.service",
)
# Bump when the way a tree is built changes: cached trees with another stamp are rebuilt.
BUILD_VERSION = "1"
PROXY_PORT = 3128
SSH_PORT = 22
HOST_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
NETNS_PREFIX = "mfth-"
MEMINFO_PATH = "/etc/mailfleet-testhost/meminfo"  # inside the tree


class TestHostError(RuntimeError):
    """Something a test host needs is missing or went wrong; the message says what to do."""

    __test__ = False  # not a pytest test class


class TestHostBusy(TestHostError):
    """The name or subnet asked for belongs to a test host another process is running."""


class TestHostUnavailable(TestHostError):
    """A real prerequisite is missing (not root, a package, a release debootstrap cannot do)."""


# --- prerequisites --------------------------------------------------------------

_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "openssl": "openssl",
    "ssh-keygen": "openssh-client",
}


def check_prerequisites(*, proxy: bool = False, release: str | None = None) -> None:
    """Raise TestHostUnavailable with a one-line reason if test hosts cannot run here."""
    if os.geteuid() != 0:
        raise TestHostUnavailable("test hosts need root (network namespaces, systemd-nspawn, mounts)")
    tools = dict(_TOOLS)
    if proxy:
        tools["tinyproxy"] = "tinyproxy"
    for tool, package in tools.items():
        if _find_tool(tool) is None:
            raise TestHostUnavailable(f"{tool} is not installed (Debian package {package}): run make system-deps")
    if release is not None:
        if release not in RELEASES:
            raise TestHostError(f"unknown release {release!r}: use one of {', '.join(RELEASES)}")
        if not Path("/usr/share/debootstrap/scripts", release).exists():
            raise TestHostUnavailable(
                f"debootstrap on this machine cannot build {release} "
                f"(no /usr/share/debootstrap/scripts/{release}): a newer debootstrap is needed"
            )


def _find_tool(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin:/usr/bin:/bin")


def _tool(name: str) -> str:
    found = _find_tool(name)
    if found is None:
        raise TestHostUnavailable(f"{name} is not installed: run make system-deps")
    return found


def _run(cmd: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 120,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), input=input, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        shown = " ".join(shlex.quote(c) for c in cmd)
        raise TestHostError(f"{shown} failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


# --- the host's apt sources ------------------------------------------------------

@dataclass(frozen=True)
class AptSource:
    uri: str
    suites: tuple[str, ...]
    components: tuple[str, ...]


def host_apt_sources() -> list[AptSource]:
    """The `deb` sources of this machine's apt (deb822 *.sources and one-line *.list)."""
    found: list[AptSource] = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", Path(path).read_text(errors="replace")):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                continue
            for uri in fields.get("uris", "").split():
                found.append(AptSource(uri, tuple(fields.get("suites", "").split()),
                                       tuple(fields.get("components", "main").split())))
    lists = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
    for path in lists:
        if not Path(path).is_file():
            continue
        for line in Path(path).read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                found.append(AptSource(words[1], (words[2],), tuple(words[3:]) or ("main",)))
    return [s for s in found if urlsplit(s.uri).scheme in ("http", "https")]


def mirror_hosts() -> list[str]:
    """Host names of the package mirrors this machine's apt uses."""
    hosts = []
    for source in host_apt_sources():
        name = urlsplit(source.uri).hostname
        if name and name not in hosts:
            hosts.append(name)
    return hosts


def _host_codename() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return ""


def _main_mirror() -> str:
    sources = host_apt_sources()
    codename = _host_codename()
    for source in sources:
        if codename and codename in source.suites:
            return source.uri
    for source in sources:
        if not any(s.endswith("-security") for s in source.suites):
            return source.uri
    raise TestHostUnavailable("no Debian mirror found in /etc/apt/sources.list(.d): cannot debootstrap")


def _container_sources(release: str) -> str:
    """The host's apt sources with the host's release name replaced by `release`."""
    codename = _host_codename()
    lines = []
    for source in host_apt_sources():
        suites = []
        for suite in source.suites:
            if codename and (suite == codename or suite.startswith(codename + "-")):
                suites.append(release + suite[len(codename):])
            else:
                suites.append(suite)
        components = [c for c in source.components if c in ("main", "contrib", "non-free", "non-free-firmware")]
        for suite in suites:
            lines.append(f"deb {source.uri} {suite} {' '.join(components or ['main'])}")
    return "\n".join(dict.fromkeys(lines)) + "\n"


def _host_apt_overrides() -> str:
    """The host's `Acquire::Check-Valid-Until` / `Check-Date` "false" settings, as apt.conf lines."""
    try:
        dump = _run(["apt-config", "dump"], check=False, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    out = []
    for key in ("Acquire::Check-Valid-Until", "Acquire::Check-Date"):
        if re.search(rf'^{re.escape(key)} "(false|0|no)";$', dump, re.M):
            out.append(f'{key} "false";')
    return "\n".join(out) + ("\n" if out else "")


# --- the cached root tree -------------------------------------------------------

def _build_stamp(release: str) -> str:
    spec = "|".join([BUILD_VERSION, release, ",".join(PACKAGES), ",".join(MASKED_UNITS)])
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_rootfs(release: str = "bookworm") -> Path:
    """Return the cached Debian tree for `release`, debootstrapping it on first use.

    Built once per machine into CACHE_DIR/<release>/ (in a temporary directory renamed
    into place, under a lock so parallel builds do not collide), from the mirror this
    machine's apt uses. The tree is never booted itself: TestHost boots a throw-away
    overlay of it.
    """
    check_prerequisites(release=release)
    target = CACHE_DIR / release
    stamp = _build_stamp(release)
    stamp_file = target / ".mailfleet-testhost-build"

    def is_current() -> bool:
        with contextlib.suppress(OSError):
            return stamp_file.read_text().strip() == stamp
        return False

    if is_current():
        return target
    with _flock(CACHE_DIR / f".{release}.lock"):
        if is_current():
            return target
        work = Path(tempfile.mkdtemp(prefix=f".build-{release}-", dir=CACHE_DIR))
        try:
            tree = work / "root"
            mirror = _main_mirror()
            proc = subprocess.run(
                [_tool("debootstrap"), "--variant=minbase", "--include=" + ",".join(PACKAGES),
                 release, str(tree), mirror],
                capture_output=True, text=True, timeout=1800,
            )
            if proc.returncode != 0:
                log = (tree / "debootstrap" / "debootstrap.log")
                detail = log.read_text(errors="replace")[-1500:] if log.exists() else proc.stderr[-1500:]
                raise TestHostError(f"debootstrap {release} from {mirror} failed (exit {proc.returncode}): {detail.strip()}")
            _prepare_tree(tree, release)
            (tree / stamp_file.name).write_text(stamp + "\n")
            if target.exists():
                old = Path(tempfile.mkdtemp(prefix=f".old-{release}-", dir=CACHE_DIR))
                target.rename(old / "root")
                shutil.rmtree(old, ignore_errors=True)
            tree.rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _prepare_tree(tree: Path, release: str) -> None:
    # debootstrap leaves a policy-rc.d that forbids starting services: a real server has none.
    with contextlib.suppress(FileNotFoundError):
        (tree / "usr/sbin/policy-rc.d").unlink()
    (tree / "etc/apt/sources.list").write_text(_container_sources(release))
    overrides = _host_apt_overrides()
    if overrides:
        (tree / "etc/apt/apt.conf.d/99mailfleet-testhost").write_text(overrides)
    # Per-host identity is made at each boot: host keys, machine id, hostname.
    for key in (tree / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (tree / "etc/machine-id").write_text("")
    with contextlib.suppress(FileNotFoundError):
        (tree / "var/lib/dbus/machine-id").unlink()
    for unit in MASKED_UNITS:
        link = tree / "etc/systemd/system" / unit
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to("/dev/null")
    _run(["chroot", str(tree), "apt-get", "clean"], check=False)


# --- a booted host --------------------------------------------------------------

_LIVE: set[TestHost] = set()  # strong references: a forgotten host is still stopped at exit


@atexit.register
def _stop_all() -> None:
    for host in list(_LIVE):
        with contextlib.suppress(Exception):
            host.stop()


def subnet(index: int) -> tuple[ipaddress.IPv4Address, ipaddress.IPv4Address, ipaddress.IPv4Network]:
    """(host side of the veth, container address, the /28) for subnet `index`."""
    if not 0 <= index < MAX_HOSTS:
        raise TestHostError(f"subnet_index must be 0..{MAX_HOSTS - 1}, got {index}")
    net = list(TEST_NETWORK.subnets(new_prefix=SUBNET_PREFIX))[index]
    hosts = list(net.hosts())
    return hosts[0], hosts[1], net  # type: ignore[return-value]


def _parse_memory(memory: int | str | None) -> int | None:
    if memory is None or isinstance(memory, int):
        return memory
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", memory, re.I)
    if not m:
        raise TestHostError(f"memory must be bytes or like '200M', got {memory!r}")
    return int(m.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[m.group(2).upper()]


class TestHost:
    """A booted Debian test host (a context manager). See the module docstring."""

    __test__ = False  # not a pytest test class

    def __init__(self, name: str, *, release: str = "bookworm", subnet_index: int,
                 root_password: str | None = None, memory: int | str | None = None,
                 proxy: bool = False, boot_timeout: float = 60.0) -> None:
        if not HOST_NAME_RE.match(name):
            raise TestHostError(f"test host name {name!r}: use 1-31 lower-case letters, digits and '-'")
        self.name = name
        self.release = release
        self.subnet_index = subnet_index
        host_ip, ip, net = subnet(subnet_index)
        self.host_ip = str(host_ip)
        self.ip = str(ip)
        self.network = str(net)
        self.ssh_port = SSH_PORT
        self.root_password = root_password or secrets.token_urlsafe(18)
        self.memory = _parse_memory(memory)
        self.proxy = proxy
        self.proxy_url: str | None = None
        self.boot_timeout = boot_timeout
        self.netns = NETNS_PREFIX + name
        self.veth = f"mfth{subnet_index}"
        self.dir = RUN_DIR / name
        self.tree = self.dir / "root"
        self.log_path = self.dir / "nspawn.log"
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._proxy_proc: subprocess.Popen[bytes] | None = None
        self._locks: list[int] = []
        self._started = False

    # context manager
    def __enter__(self) -> TestHost:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<TestHost {self.name} {self.release} {self.ip}>"

    @property
    def pid(self) -> int:
        """PID (on this machine) of the container's systemd."""
        if self._nspawn is None or self._nspawn.poll() is not None:
            raise TestHostError(f"test host {self.name} is not running; its boot log: {self.log_tail()}")
        for _ in range(100):
            with contextlib.suppress(psutil.Error):
                children = psutil.Process(self._nspawn.pid).children()
                if children:
                    return children[0].pid
            time.sleep(0.05)
        raise TestHostError(f"test host {self.name}: systemd-nspawn has no container process")

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    # start / stop
    def start(self) -> None:
        if self._started:
            return
        check_prerequisites(proxy=self.proxy, release=self.release)
        rootfs = build_rootfs(self.release)
        self._take_slot()
        _LIVE.add(self)
        self._started = True
        try:
            self._cleanup_strays()
            self.dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.dir, 0o711)
            self._mount_tree(rootfs)
            self._personalise()
            self._make_network()
            if self.proxy:
                self._start_proxy()
            self._boot()
            self._wait_for_ssh()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Halt the container and remove everything it had: processes, veth, netns, tree."""
        if not self._started:
            return
        self._started = False
        _LIVE.discard(self)
        if self._nspawn is not None:
            self._terminate(self._nspawn, 10.0)
            self._nspawn = None
        if self._proxy_proc is not None:
            self._terminate(self._proxy_proc, 5.0)
            self._proxy_proc = None
        self._cleanup_strays()
        self._release_slot()

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes], wait: float) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)

    def _take_slot(self) -> None:
        """Lock this host's name and subnet for as long as it runs (released by the kernel if we die)."""
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for lock_name, what in ((f"subnet-{self.subnet_index}.lock", f"subnet index {self.subnet_index} ({self.network})"),
                                (f"name-{self.name}.lock", f"the name {self.name!r}")):
            fd = os.open(LOCK_DIR / lock_name, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._release_slot()
                raise TestHostBusy(f"{what} is in use by another running test host: pick another") from None
            self._locks.append(fd)

    def _release_slot(self) -> None:
        while self._locks:
            os.close(self._locks.pop())

    def _cleanup_strays(self) -> None:
        """Remove what this host (or a crashed earlier run with its name or subnet) left behind."""
        # Container processes: everything in the namespace, and an nspawn still booting our tree.
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info.get("cmdline") or []
            if cmd and os.path.basename(cmd[0]) == "systemd-nspawn" and str(self.tree) in cmd:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        if self._netns_exists():
            pids = _run(["ip", "netns", "pids", self.netns], check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            deadline = time.monotonic() + 5
            while pids and time.monotonic() < deadline:
                pids = _run(["ip", "netns", "pids", self.netns], check=False).stdout.split()
                time.sleep(0.05)
            _run(["ip", "netns", "delete", self.netns], check=False)
        if Path("/sys/class/net", self.veth).exists():
            _run(["ip", "link", "delete", self.veth], check=False)
        pidfile = self.dir / "proxy" / "tinyproxy.pid"
        with contextlib.suppress(OSError, ValueError, psutil.Error):
            proc = psutil.Process(int(pidfile.read_text().strip()))
            if "tinyproxy" in proc.name():
                proc.kill()
        with contextlib.suppress(OSError):
            self._memory_cgroup().rmdir()
        if self.dir.exists():
            self._unmount()
            shutil.rmtree(self.dir, ignore_errors=True)

    def _netns_exists(self) -> bool:
        return Path("/run/netns", self.netns).exists()

    def _mount_tree(self, rootfs: Path) -> None:
        upper, work = self.dir / "upper", self.dir / "work"
        for d in (upper, work, self.tree):
            d.mkdir()
        proc = _run(["mount", "-t", "overlay", "overlay", "-o",
                     f"lowerdir={rootfs},upperdir={upper},workdir={work}", str(self.tree)], check=False)
        if proc.returncode == 0:
                return
        # No overlayfs here (e.g. the cache sits on an overlay itself): a plain copy.
        self.tree.rmdir()
        _run(["cp", "-a", "--reflink=auto", str(rootfs), str(self.tree)], timeout=600)

    def _unmount(self) -> None:
        for _ in range(3):
            if not os.path.ismount(self.tree):
                break
            if _run(["umount", str(self.tree)], check=False).returncode != 0:
                time.sleep(0.2)
                _run(["umount", "-l", str(self.tree)], check=False)

    def _personalise(self) -> None:
        tree = self.tree
        (tree / "etc/hostname").write_text(self.name + "\n")
        (tree / "etc/hosts").write_text(
            f"127.0.0.1\tlocalhost\n{self.ip}\t{self.name}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        )
        (tree / "etc/machine-id").write_text(uuid.uuid4().hex + "\n")
        # No resolver outside is reachable; point at the host side (nothing answers unless a test starts a DNS there).
        resolv = tree / "etc/resolv.conf"
        if resolv.is_symlink() or resolv.exists():
            resolv.unlink()
        resolv.write_text(f"nameserver {self.host_ip}\n")
        _run(["ssh-keygen", "-A", "-f", str(tree)])
        (tree / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
        (tree / "etc/ssh/sshd_config.d/00-mailfleet-testhost.conf").write_text(
            "# A fresh server as a hosting company hands it over: root logs in with a password.\n"
            "PermitRootLogin yes\nPasswordAuthentication yes\n"
        )
        self._set_root_password()
        if self.memory is not None:
            self._fake_meminfo()

    def _set_root_password(self) -> None:
        """Write root's SHA-512 crypt hash into the tree's /etc/shadow (the password goes through stdin only)."""
        hashed = _run([_tool("openssl"), "passwd", "-6", "-stdin"], input=self.root_password + "\n").stdout.strip()
        shadow = self.tree / "etc/shadow"
        lines = shadow.read_text().splitlines()
        for i, line in enumerate(lines):
            fields = line.split(":")
            if fields[0] == "root":
                fields[1] = hashed
                fields[2] = str(int(time.time() // 86400))
                lines[i] = ":".join(fields)
                break
        else:
            raise TestHostError(f"no root entry in {shadow}")
        shadow.write_text("\n".join(lines) + "\n")

    def _fake_meminfo(self) -> None:
        """What `free`/Ansible see inside: MemTotal = the host's memory limit."""
        kb = self.memory // 1024  # type: ignore[operator]
        # nspawn mounts over /proc from inside the container: the source must be in the tree.
        (self.tree / MEMINFO_PATH.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (self.tree / MEMINFO_PATH.lstrip("/")).write_text(
            f"MemTotal:       {kb} kB\nMemFree:        {kb * 3 // 4} kB\nMemAvailable:   {kb * 3 // 4} kB\n"
            "Buffers:               0 kB\nCached:                0 kB\nSwapCached:            0 kB\n"
            "SwapTotal:             0 kB\nSwapFree:              0 kB\n"
        )

    def _make_network(self) -> None:
        ip = _tool("ip")
        _run([ip, "netns", "add", self.netns])
        _run([ip, "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns])
        _run([ip, "addr", "add", f"{self.host_ip}/{SUBNET_PREFIX}", "dev", self.veth])
        _run([ip, "link", "set", self.veth, "up"])
        _run([ip, "-n", self.netns, "addr", "add", f"{self.ip}/{SUBNET_PREFIX}", "dev", "eth0"])
        _run([ip, "-n", self.netns, "link", "set", "eth0", "up"])
        _run([ip, "-n", self.netns, "link", "set", "lo", "up"])

    def _start_proxy(self) -> None:
        pdir = self.dir / "proxy"
        pdir.mkdir()
        os.chmod(pdir, 0o755)
        hosts = mirror_hosts()
        if not hosts:
            raise TestHostUnavailable("no package mirror in this machine's apt sources to let through the proxy")
        (pdir / "filter").write_text("".join(f"^{re.escape(h)}$\n" for h in hosts))
        log = pdir / "tinyproxy.log"
        log.touch()
        shutil.chown(log, "nobody")
        (pdir / "tinyproxy.conf").write_text(
            f"User nobody\nGroup nogroup\nListen {self.host_ip}\nPort {PROXY_PORT}\n"
            f"Timeout 120\nMaxClients 20\nLogFile \"{log}\"\nLogLevel Info\n"
            f"PidFile \"{pdir / 'tinyproxy.pid'}\"\n"
            f"Allow {self.network}\nConnectPort 443\n"
            f"Filter \"{pdir / 'filter'}\"\nFilterType ere\nFilterURLs Off\nFilterDefaultDeny Yes\n"
            "DisableViaHeader Yes\n"
        )
        with open(pdir / "stdout.log", "wb") as out:
            self._proxy_proc = subprocess.Popen(
                [_tool("tinyproxy"), "-d", "-c", str(pdir / "tinyproxy.conf")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while not _port_open(self.host_ip, PROXY_PORT):
            if self._proxy_proc.poll() is not None or time.monotonic() > deadline:
                out = (pdir / "stdout.log").read_text(errors="replace") + log.read_text(errors="replace")
                raise TestHostError(f"tinyproxy for {self.name} did not start: {out.strip()[-1500:]}")
            time.sleep(0.05)
        self.proxy_url = f"http://{self.host_ip}:{PROXY_PORT}"
        (self.tree / "etc/apt/apt.conf.d/90mailfleet-testhost-proxy").write_text(
            f'Acquire::http::Proxy "{self.proxy_url}";\nAcquire::https::Proxy "{self.proxy_url}";\n'
        )

    def _boot(self) -> None:
        cmd = [_tool("systemd-nspawn"), "-D", str(self.tree), "-M", self.name, "-b",
               "--register=no", "--keep-unit", f"--network-namespace-path=/run/netns/{self.netns}",
               "--console=pipe", "--resolv-conf=off", "--timezone=off", "--link-journal=no"]
        if self.memory is not None:
            cmd.append(f"--bind-ro={MEMINFO_PATH}:/proc/meminfo")
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
        with open(self.log_path, "wb") as log:
            self._nspawn = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)
        if self.memory is not None:
            self._limit_memory()

    def _memory_cgroup(self) -> Path:
        return Path("/sys/fs/cgroup/memory") / f"mailfleet-testhost-{self.name}"

    def _limit_memory(self) -> None:
        """Best effort: a cgroup v1 memory limit for the container's processes."""
        base = Path("/sys/fs/cgroup/memory")
        if not (base / "memory.limit_in_bytes").exists():
            return
        group = self._memory_cgroup()
        with contextlib.suppress(OSError, TestHostError):
            group.mkdir(exist_ok=True)
            (group / "memory.limit_in_bytes").write_text(str(self.memory))
            (group / "cgroup.procs").write_text(str(self.pid))

    def _wait_for_ssh(self) -> None:
        deadline = time.monotonic() + self.boot_timeout
        while True:
            if self._nspawn is None or self._nspawn.poll() is not None:
                raise TestHostError(f"test host {self.name} stopped while booting; its log: {self.log_tail()}")
            with contextlib.suppress(OSError):
                with socket.create_connection((self.ip, self.ssh_port), timeout=1) as sock:
                    sock.settimeout(2)
                    if sock.recv(64).startswith(b"SSH-"):
                        return
            if time.monotonic() > deadline:
                raise TestHostError(
                    f"sshd on test host {self.name} ({self.ip}:{self.ssh_port}) did not answer within "
                    f"{self.boot_timeout:.0f} s; its log: {self.log_tail()}"
                )
            time.sleep(0.1)

    # inside the host
    def run(self, cmd: str | Sequence[str], *, check: bool = False, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `cmd` (a shell string or an argv list) as root inside the host; output captured as text."""
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        full = [_tool("nsenter"), "-t", str(self.pid), "-a", "/usr/bin/env", "-i",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root", "LANG=C.UTF-8", "DEBIAN_FRONTEND=noninteractive", *argv]
        group = self._memory_cgroup()
        if self.memory is not None and (group / "cgroup.procs").exists():
            # Under the host's memory limit like everything started inside by its systemd.
            full = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group / "cgroup.procs"), *full]
        proc = subprocess.run(full, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise TestHostError(
                f"{argv!r} on test host {self.name} failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
            )
        return proc

    def wait_until_booted(self, timeout: float = 60.0) -> str:
        """Wait until systemd inside is done starting up; return `systemctl is-system-running`."""
        proc = self.run(["systemctl", "is-system-running", "--wait"], timeout=timeout)
        return proc.stdout.strip()

    def failed_units(self) -> list[str]:
        out = self.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend"]).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]


def _port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError):
        with socket.create_connection((host, port), timeout=0.5):
            return True
    return False



def main(argv: Sequence[str] | None = None) -> int:
    """`python -m devserver.testhost NAME --subnet-index N [--release R] [--proxy] [--memory 200M]`

    Boots a test host, prints one JSON line (name, release, ip, host_ip, ssh_port,
    root_password, proxy_url) and keeps it running until SIGTERM or SIGINT, then stops it
    and removes everything it had. The root password can be given in
    MAILFLEET_TESTHOST_ROOT_PASSWORD (never on the command line); otherwise a random one is printed.
    """
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m devserver.testhost", description=main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--subnet-index", type=int, required=True)
    parser.add_argument("--release", default="bookworm", choices=RELEASES)
    parser.add_argument("--proxy", action="store_true", help="apt inside reaches this machine's mirrors")
    parser.add_argument("--memory", help="memory the host sees and is limited to, e.g. 200M")
    args = parser.parse_args(argv)

    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    host = TestHost(args.name, release=args.release, subnet_index=args.subnet_index, proxy=args.proxy,
                    memory=args.memory, root_password=os.environ.get("MAILFLEET_TESTHOST_ROOT_PASSWORD") or None)
    try:
        host.start()
        print(json.dumps({"name": host.name, "release": host.release, "ip": host.ip, "host_ip": host.host_ip,
                          "ssh_port": host.ssh_port, "root_password": host.root_password,
                          "proxy_url": host.proxy_url}), flush=True)
        while host._nspawn is not None and host._nspawn.poll() is None:
            time.sleep(0.5)
        if host._nspawn is not None:
            print(f"test host {host.name} stopped by itself: {host.log_tail()}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 0
    except TestHostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        host.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
