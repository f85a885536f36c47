"""`make run`: start the whole system locally and keep it running until Ctrl-C.

The panel keeps its data in instance/ (SQLite unless DATABASE_URL says otherwise); the local
worker, its Exim and the mail capture keep theirs in instance/local/, so a second `make run`
finds the lists, campaigns and captured mail of the first.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from .bind import BindError, BindServer
from .stack import REPO, LocalStack, StackSettings

# A local authoritative DNS for trying domains: a zone to add as a sending domain, and the
# reverse zone of the local worker's IPs, which the domain page's PTR check asks.
DNS_ZONES = ["mailfleet.test", "127.in-addr.arpa"]


def main() -> int:
    instance = Path(os.environ.get("MAILFLEET_INSTANCE_PATH", REPO / "instance"))
    # Private before anything starts (the panel keeps it so too): Exim's user cannot reach
    # instance/local/ then, so the stack gives Exim its own home from the start.
    instance.mkdir(parents=True, exist_ok=True, mode=0o700)
    instance.chmod(0o700)
    settings = StackSettings(
        root=instance / "local",
        instance_path=instance,
        panel_port=int(os.environ.get("MAILFLEET_PANEL_PORT", 5000)),
        agent_port=int(os.environ.get("MAILFLEET_AGENT_PORT", 8443)),
        exim_port=int(os.environ.get("MAILFLEET_EXIM_PORT", 2525)),
        capture_port=int(os.environ.get("MAILFLEET_CAPTURE_PORT", 2526)),
        database_url=os.environ.get("DATABASE_URL"),
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    bind = BindServer(DNS_ZONES)
    stack = LocalStack(settings)
    try:
        bind.start()
        os.environ.setdefault("MAILFLEET_DNS_RESOLVER", f"{bind.host}:{bind.port}")  # the panel's PTR checks
        stack.start()
    except (RuntimeError, BindError) as exc:
        print(f"Could not start Mailfleet: {exc}", file=sys.stderr)
        bind.stop()
        return 1
    try:
        print(f"Panel: {stack.panel_url}")
        print(f"Login: {settings.admin_email} {stack.admin_password}")
        print(f"API token: {stack.api_token}")
        print(f"Captured mail: {stack.maildir}")
        print(f"(logs in {stack.logs}; Ctrl-C stops everything)")
        print(f"(a local DNS server for Domains: {bind.host} port {bind.port}, zone {DNS_ZONES[0]}, "
              f"TSIG key {bind.key_name} {bind.algorithm} {bind.secret})", flush=True)
        while not stop.is_set():
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    print(f"{name} exited ({process.returncode}); see {stack.logs / (name + '.log')}", file=sys.stderr)
                    stop.set()
                    break
            stop.wait(1.0)
    finally:
        print("Stopping…", flush=True)
        stack.stop()
        bind.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
