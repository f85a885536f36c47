"""Test hosts for the molecule scenarios (molecule/*/) and the tests that run roles on a host.

    python -m devserver.molecule_host up STATE_DIR --name NAME [--release R] [--memory 200M] [--no-proxy]
    python -m devserver.molecule_host down STATE_DIR

`up` starts a background process that boots a test host (devserver/testhost.py) in the
first free slot, writes into STATE_DIR an Ansible inventory for it (`inventory.yml`: group
`mailfleet_workers`, the root password, a throw-away panel SSH key, a known_hosts file from
ssh-keyscan, and the variables a worker on a test host needs) and returns once sshd answers.
The background process keeps the host up until `down` sends it SIGTERM; `down` does nothing
when nothing was started (molecule's destroy runs before create too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devserver import testhost

GROUP = "mailfleet_workers"
BOUNCE_DOMAIN = "bounces.example.test"
HELO_NAME = "mx1.example.test"
STATE_FILE = "host.json"
PID_FILE = "serve.pid"
INVENTORY_FILE = "inventory.yml"
CAPTURE_PORT = 2525
UP_TIMEOUT = 900.0  # the first use of a release debootstraps it (a few minutes)
DOWN_TIMEOUT = 60.0


def ansible_env(venv_bin: Path, **extra: str) -> dict[str, str]:
    """Environment for ansible-playbook / molecule run from the repository root against test hosts."""
    repo = Path(__file__).resolve().parents[1]
    return {
        **os.environ,
        # molecule runs ansible-config, ansible-playbook… by name.
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_COLLECTIONS_PATH": str(repo / "ansible" / ".collections"),
        "ANSIBLE_HOME": str(repo / "ansible" / ".ansible"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "NO_COLOR": "1",
        "PY_COLORS": "0",
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        # A reused connection would hide a refused login.
        "ANSIBLE_SSH_ARGS": "-o ControlMaster=no -o ControlPath=none",
        "ANSIBLE_PIPELINING": "1",
        **extra,
    }


def host_variables(host: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    """Connection and role variables for one test host (`host`: the JSON `testhost` prints).

    Makes a panel key pair and a known_hosts file in `state_dir`. Both the root password
    and the key are given: the key once a role has installed it, the password before.
    """
    key = state_dir / "panel_key"
    if not key.exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mailfleet-panel-test", "-f", str(key)],
                       check=True)
    known_hosts = state_dir / "known_hosts"
    scan = subprocess.run(["ssh-keyscan", "-p", str(host["ssh_port"]), host["ip"]],
                          capture_output=True, text=True, check=True, timeout=60)
    known_hosts.write_text(scan.stdout)
    return {
        "ansible_host": host["ip"],
        "ansible_port": host["ssh_port"],
        "ansible_user": "root",
        "ansible_password": host["root_password"],
        "ansible_ssh_private_key_file": str(key),
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes",
        "ssh_access_public_key": (state_dir / "panel_key.pub").read_text().strip(),
        "exim_source_ips": [{"ip": host["ip"], "helo": HELO_NAME}],
        "exim_bounce_domains": [BOUNCE_DOMAIN],
        # Letters for remote domains go to a capture the verify steps start on the controller
        # (no DNS and no route out of a test host).
        "exim_smarthost": f"{host['host_ip']}::{CAPTURE_PORT}",
        # No resolver answers inside a test host (no route out); its own name is in its /etc/hosts.
        "preflight_resolver_test_name": host["name"],
        # A container's clock is the machine's; no time service runs inside.
        "preflight_time_sync_required": False,
        # The host side of the test host's veth: the only address outside it can reach.
        "testhost_gateway_ip": host["host_ip"],
        "testhost_release": host["release"],
    }


def write_inventory(host: dict[str, Any], state_dir: Path, **extra: Any) -> Path:
    """Write `state_dir`/inventory.yml (0600: it holds the root password) and return its path."""
    state_dir.mkdir(parents=True, exist_ok=True)
    variables = {**host_variables(host, state_dir), **extra}
    path = state_dir / INVENTORY_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:  # JSON is YAML
        json.dump({GROUP: {"hosts": {host["name"]: variables}}}, fh, indent=1)
    return path


def start_host(name: str, *, release: str = "bookworm", proxy: bool = True,
               memory: str | None = None) -> testhost.TestHost:
    """Boot a test host named `name` in the first free subnet slot (others' hosts keep theirs)."""
    last: Exception | None = None
    for index in range(testhost.MAX_HOSTS):
        host = testhost.TestHost(name, release=release, subnet_index=index, proxy=proxy, memory=memory)
        try:
            host.start()
        except testhost.TestHostBusy as exc:
            if "the name" in str(exc):
                raise
            last = exc
            continue
        return host
    raise testhost.TestHostBusy(f"every test host slot is taken by other runs ({last})")


def _serve(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    host: testhost.TestHost | None = None
    try:
        host = start_host(args.name, release=args.release, proxy=not args.no_proxy, memory=args.memory)
        info = {"name": host.name, "release": host.release, "ip": host.ip, "host_ip": host.host_ip,
                "ssh_port": host.ssh_port, "root_password": host.root_password, "subnet_index": host.subnet_index}
        write_inventory(info, state_dir)
        public = {k: v for k, v in info.items() if k != "root_password"}
        (state_dir / (STATE_FILE + ".tmp")).write_text(json.dumps(public) + "\n")
        (state_dir / (STATE_FILE + ".tmp")).rename(state_dir / STATE_FILE)
        while host._nspawn is not None and host._nspawn.poll() is None:  # noqa: SLF001
            time.sleep(0.5)
        print(f"test host {host.name} stopped by itself: {host.log_tail()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except testhost.TestHostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if host is not None:
            host.stop()


def up(state_dir: Path, name: str, *, release: str = "bookworm", proxy: bool = True,
       memory: str | None = None) -> dict[str, Any]:
    """Start the background process keeping a test host up; return the host's JSON once it is up."""
    state_dir.mkdir(parents=True, exist_ok=True)
    down(state_dir)  # a host left over from an interrupted run of this scenario
    for other in _serving_dirs(name):
        if other != state_dir.resolve():
            raise testhost.TestHostBusy(
                f"a test host named {name} is already up for {other}: if no run uses it any more, "
                f"stop it with `python -m devserver.molecule_host down {other}`")
    for stale in (STATE_FILE, INVENTORY_FILE):
        with contextlib.suppress(FileNotFoundError):
            (state_dir / stale).unlink()
    cmd = [sys.executable, "-m", "devserver.molecule_host", "serve", str(state_dir), "--name", name,
           "--release", release]
    if memory:
        cmd += ["--memory", memory]
    if not proxy:
        cmd.append("--no-proxy")
    log = state_dir / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=Path(__file__).resolve().parents[1])
    (state_dir / PID_FILE).write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + UP_TIMEOUT
    while not (state_dir / STATE_FILE).exists():
        if proc.poll() is not None:
            (state_dir / PID_FILE).unlink()
            raise testhost.TestHostError(f"test host {name} did not come up: {log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            down(state_dir)
            raise testhost.TestHostError(f"test host {name} did not come up within {UP_TIMEOUT:.0f} s")
        time.sleep(0.2)
    return json.loads((state_dir / STATE_FILE).read_text())


def _serving_pid(state_dir: Path) -> int | None:
    try:
        pid = int((state_dir / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"devserver.molecule_host" in cmdline and b"serve" in cmdline else None


def _serving_dirs(name: str) -> list[Path]:
    """State directories of the `serve` processes keeping a host called `name` up."""
    found = []
    for proc in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            argv = proc.read_bytes().decode(errors="replace").split("\0")
            if "devserver.molecule_host" in argv and "serve" in argv and "--name" in argv \
                    and argv[argv.index("--name") + 1:argv.index("--name") + 2] == [name]:
                found.append(Path(argv[argv.index("serve") + 1]).resolve())
    return found


def down(state_dir: Path) -> bool:
    """Stop the test host `up` started from `state_dir`; False when none was running."""
    pid = _serving_pid(state_dir)
    stopped = False
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + DOWN_TIMEOUT
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            # The next host with this name cleans up what a killed one left (TestHost._cleanup_strays).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        stopped = True
    for name in (PID_FILE, STATE_FILE, INVENTORY_FILE):
        with contextlib.suppress(FileNotFoundError):
            (state_dir / name).unlink()
    return stopped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devserver.molecule_host", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in ("up", "serve"):
        p = sub.add_parser(command)
        p.add_argument("state_dir")
        p.add_argument("--name", required=True)
        p.add_argument("--release", default="bookworm", choices=testhost.RELEASES)
        p.add_argument("--memory")
        p.add_argument("--no-proxy", action="store_true", help="apt inside reaches nothing")
    p = sub.add_parser("down")
    p.add_argument("state_dir")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    state_dir = Path(args.state_dir).resolve()
    if args.command == "down":
        print("stopped" if down(state_dir) else "nothing to stop")
        return 0
    try:
        testhost.check_prerequisites(proxy=not args.no_proxy, release=args.release)
        info = up(state_dir, args.name, release=args.release, proxy=not args.no_proxy, memory=args.memory)
    except testhost.TestHostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({**info, "inventory": str(state_dir / INVENTORY_FILE)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
