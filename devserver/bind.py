"""A real, throw-away BIND (named) serving zones that accept RFC 2136 updates signed with TSIG.

For the tests, the molecule scenario of the `dns` role and `make run`: named runs as the
`bind` user with a config of its own in a temporary folder (zones, journal, log, pid file),
listening on 127.0.0.1 at a free port (UDP and TCP), recursion off. Each zone lets the key
made by `tsig-keygen` change any name in it (`update-policy { grant KEY zonesub ANY; }`);
unsigned updates and those signed with another key are refused. Ready in about 0.2 s;
`stop()` ends named and removes the folder, and a watchdog does the same should the process
that started it die first.

    python -m devserver.bind example.test [more zones…]   # keep one up until Ctrl-C
    python -m devserver.bind up DIR example.test          # in the background (molecule): DIR/bind.json,
    python -m devserver.bind down DIR                     #   DIR/inventory.yml; stopped by `down`
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import dns.tsigkeyring

from .ports import free_port
from .processes import end_child

NAMED = "/usr/sbin/named"
TSIG_KEYGEN = "/usr/sbin/tsig-keygen"
OS_USER = "bind"  # Debian's bind9 package creates it
ALGORITHM = "hmac-sha256"
_SECRET_RE = re.compile(r'secret\s+"([^"]+)"')


class BindError(RuntimeError):
    """named could not be set up or started; the message says why and where its log is."""


def make_tsig_key(name: str, algorithm: str = ALGORITHM) -> str:
    """A fresh TSIG secret (base64) made by BIND's own `tsig-keygen`."""
    result = subprocess.run([TSIG_KEYGEN, "-a", algorithm, name], capture_output=True, text=True, check=False)
    match = _SECRET_RE.search(result.stdout)
    if result.returncode != 0 or not match:
        raise BindError(f"tsig-keygen failed: {(result.stderr or result.stdout).strip()}")
    return match.group(1)


class BindServer:
    """named with `zones` under `base` (a fresh temporary folder by default), one TSIG key for all."""

    def __init__(self, zones: list[str], base: Path | None = None, key_name: str = "mailfleet-update",
                 other_keys: tuple[str, ...] = ()) -> None:
        if not Path(NAMED).exists():
            raise BindError("BIND is not installed: apt-get install bind9 bind9-utils")
        self.zones = [z.rstrip(".").lower() for z in zones]
        self.base = base or Path(tempfile.mkdtemp(prefix="mailfleet-bind-"))
        self.key_name = key_name
        self.algorithm = ALGORITHM
        self.secret = ""
        # Keys named in the config but granted nothing: updates signed with them are REFUSED.
        self.other_keys = {name: "" for name in other_keys}
        self.host = "127.0.0.1"
        self.port = 0
        self.config = self.base / "named.conf"
        self.log = self.base / "named.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    @property
    def keyring(self) -> dict:
        """The update key as dnspython takes it."""
        return dns.tsigkeyring.from_text({self.key_name: (self.algorithm, self.secret)})

    # -- files -------------------------------------------------------------------------
    def zone_file(self, zone: str) -> Path:
        return self.base / "zones" / f"{zone}.zone"

    def _write_files(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        zones = self.base / "zones"
        zones.mkdir(exist_ok=True)
        self.secret = make_tsig_key(self.key_name)
        key_file = self.base / "update.key"
        for name in self.other_keys:
            self.other_keys[name] = make_tsig_key(name)
        keys = {self.key_name: self.secret, **self.other_keys}
        key_file.write_text("".join(f'key "{name}" {{\n  algorithm {self.algorithm};\n  secret "{secret}";\n}};\n'
                                    for name, secret in keys.items()))
        for zone in self.zones:
            # A fresh zone file and no journal at every start (a dynamic zone cannot be reloaded).
            self.zone_file(zone).write_text(
                f"$TTL 300\n"
                f"@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 300\n"
                f"@ IN NS ns1.{zone}.\n"
                f"ns1 IN A 127.0.0.1\n"
            )
            Path(f"{self.zone_file(zone)}.jnl").unlink(missing_ok=True)
        zone_blocks = "".join(
            f'zone "{zone}" {{\n  type primary;\n  file "{self.zone_file(zone)}";\n'
            f'  update-policy {{ grant {self.key_name} zonesub ANY; }};\n}};\n'
            for zone in self.zones
        )
        self.config.write_text(
            f'options {{\n'
            f'  directory "{self.base}";\n'
            f'  listen-on port {self.port} {{ 127.0.0.1; }};\n'
            f'  listen-on-v6 {{ none; }};\n'
            f'  recursion no;\n'
            f'  dnssec-validation no;\n'
            f'  pid-file "{self.base}/named.pid";\n'
            f'  session-keyfile "{self.base}/session.key";\n'
            f'  managed-keys-directory "{self.base}";\n'
            f'  notify no;\n'
            f'}};\n'
            f'controls {{ }};\n'
            f'logging {{\n'
            f'  channel to_file {{ file "{self.log}"; severity info; print-time yes; print-category yes; }};\n'
            f'  category default {{ to_file; }};\n'
            f'  category update {{ to_file; }};\n'
            f'  category update-security {{ to_file; }};\n'
            f'}};\n'
            f'include "{key_file}";\n'
            f'{zone_blocks}'
        )
        # named drops to `bind`: it must write the zones' journals and its log; the key is root:bind 0640.
        for path in (self.base, zones, *zones.iterdir()):
            shutil.chown(path, OS_USER, OS_USER)
        self.base.chmod(0o750)
        for path in (self.config, key_file):
            shutil.chown(path, "root", OS_USER)
            path.chmod(0o640)

    # -- life cycle ----------------------------------------------------------------------
    def start(self, attempts: int = 3) -> BindServer:
        if os.geteuid() != 0:
            raise BindError("starting named as the bind user needs root")
        try:
            for attempt in range(attempts):  # the free port may be taken before named binds it
                self.port = free_port()
                self._write_files()
                self.log.unlink(missing_ok=True)
                with open(self.base / "named.stderr", "wb") as stderr:
                    self._process = subprocess.Popen(
                        [NAMED, "-g", "-4", "-u", OS_USER, "-c", str(self.config)],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                    )
                if self._wait_ready():
                    break
                self._end_process()
                if attempt == attempts - 1 or "address in use" not in self._stderr():
                    raise BindError(f"named did not start: {self._stderr()[-2000:]} (config {self.config})")
            self._start_watchdog()
        except BaseException:
            self.stop()
            raise
        return self

    def _stderr(self) -> str:
        try:
            return (self.base / "named.stderr").read_text(errors="replace")
        except OSError:
            return ""

    def _wait_ready(self, timeout: float = 15) -> bool:
        """Until every zone's SOA is served over TCP; False if named exited first."""
        assert self._process is not None
        deadline = time.monotonic() + timeout
        pending = list(self.zones)
        while pending:
            if self._process.poll() is not None:
                return False
            try:
                reply = dns.query.tcp(dns.message.make_query(pending[0], dns.rdatatype.SOA), self.host,
                                      port=self.port, timeout=1)
                if reply.answer:
                    pending.pop(0)
                    continue
            except OSError:
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _start_watchdog(self) -> None:
        assert self._process is not None
        script = (f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done; "
                  f"kill {self._process.pid} 2>/dev/null; sleep 1; rm -rf '{self.base}'")
        self._watchdog = subprocess.Popen(["sh", "-c", script], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, start_new_session=True, cwd="/")

    def _end_process(self) -> None:
        if self._process is not None:
            end_child(self._process)
        self._process = None

    def stop(self) -> None:
        self._end_process()
        if self._watchdog is not None:
            self._watchdog.send_signal(signal.SIGKILL)
            self._watchdog.wait()
            self._watchdog = None
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> BindServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- looking ---------------------------------------------------------------------------
    def query(self, name: str, rdtype: str) -> list[str]:
        """The records of `name` and `rdtype` as named serves them (text form, sorted); [] if none."""
        reply = dns.query.tcp(dns.message.make_query(name, rdtype), self.host, port=self.port, timeout=5)
        return sorted(rd.to_text() for rrset in reply.answer for rd in rrset
                      if rrset.rdtype == dns.rdatatype.from_text(rdtype))

    def dkim_dnsfunc(self, name: bytes | str, timeout: int = 5) -> bytes:
        """dkimpy's `dnsfunc`: the TXT record of `name` as named serves it (its strings joined)."""
        qname = name.decode() if isinstance(name, bytes) else name
        reply = dns.query.tcp(dns.message.make_query(qname, "TXT"), self.host, port=self.port, timeout=timeout)
        return next((b"".join(rd.strings) for rrset in reply.answer for rd in rrset), b"")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def _serve(state_dir: Path, zones: list[str]) -> None:
    """Run named until SIGTERM, describing it in STATE_DIR/bind.json and an inventory for Ansible."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with BindServer(zones) as server:
        info = {"host": server.host, "port": server.port, "key_name": server.key_name,
                "key_algorithm": server.algorithm, "key_secret": server.secret, "zones": server.zones,
                "pid": os.getpid()}
        inventory = {"all": {"hosts": {"localhost": {
            "ansible_connection": "local", "ansible_python_interpreter": sys.executable,
            "dns_server": server.host, "dns_port": server.port, "dns_key_name": server.key_name,
            "dns_key_algorithm": server.algorithm, "dns_key_secret": server.secret}}}}
        for name, data in (("inventory.yml", inventory), ("bind.json", info)):  # bind.json last: it says "ready"
            path = state_dir / name
            fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)  # JSON is YAML too
            os.replace(path.with_suffix(".tmp"), path)
        try:
            signal.pause()
        finally:
            (state_dir / "bind.json").unlink(missing_ok=True)


def up(state_dir: Path, zones: list[str], timeout: float = 30) -> dict:
    """Start a named in the background (for molecule's create step); its description."""
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "bind.json").unlink(missing_ok=True)
    with open(state_dir / "bind.log", "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "devserver.bind", "serve", str(state_dir), *zones],
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                                   cwd=Path(__file__).resolve().parent.parent)
    deadline = time.monotonic() + timeout
    while not (state_dir / "bind.json").exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise BindError(f"named did not come up: see {state_dir / 'bind.log'}")
        time.sleep(0.05)
    return json.loads((state_dir / "bind.json").read_text())


def down(state_dir: Path, timeout: float = 20) -> bool:
    """Stop the named `up` started there, if any; True if one was running."""
    try:
        pid = json.loads((state_dir / "bind.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while (state_dir / "bind.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return True


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:
        _serve(Path(args[1]), args[2:])
        return
    if args[:1] == ["up"]:
        info = up(Path(args[1]), args[2:] or ["mailfleet.test"])
        print(json.dumps({k: v for k, v in info.items() if k != "key_secret"}))
        return
    if args[:1] == ["down"]:
        print("stopped" if down(Path(args[1])) else "none running")
        return
    zones = args or ["mailfleet.test"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with BindServer(zones) as server:
        print(f"DNS server: {server.host} port {server.port}", flush=True)
        print(f"TSIG key: {server.key_name} {server.algorithm} {server.secret}", flush=True)
        print(f"Zones: {' '.join(server.zones)}", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
