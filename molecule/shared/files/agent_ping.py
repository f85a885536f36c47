"""Run on the controller: reach a worker's agent the way the panel does.

    agent_ping.py HOST PORT FINGERPRINT < fernet-key
    agent_ping.py HOST PORT FINGERPRINT --send RCPT --source-ip IP --bounce-domain DOMAIN < fernet-key

Prints JSON. Without --send: the SHA-256 fingerprint of the certificate the agent presents, the
reply to a sealed /v1/ping through the panel's own client (panel.daemon.agent_client, certificate
pinned to FINGERPRINT), and what the agent answers to a ping sealed with another key.
With --send: pushes a one-letter batch (docs/agent-protocol.md) and collects the outcomes until
the letter is delivered or failed (at most 90 s).
"""

import argparse
import hashlib
import json
import secrets
import socket
import ssl
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from panel.daemon.agent_client import AgentClient, AgentError  # noqa: E402
from worker_agent.protocol import new_key  # noqa: E402


def presented_fingerprint(host: str, port: int) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the panel pins the fingerprint instead of trusting a CA
    with socket.create_connection((host, port), timeout=20) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    return hashlib.sha256(der).hexdigest()


def ping(url: str, key: str, fingerprint: str, host: str, port: int) -> dict[str, Any]:
    result: dict[str, Any] = {"presented": presented_fingerprint(host, port)}
    try:
        result["ping"] = AgentClient(url, key, fingerprint, timeout=30).call("/v1/ping", {})
    except AgentError as exc:
        result["ping_error"] = str(exc)
    try:
        result["wrong_key"] = AgentClient(url, new_key(), fingerprint, timeout=30).call("/v1/ping", {})
    except AgentError as exc:
        result["wrong_key"] = str(exc)
    return result


def send(url: str, key: str, fingerprint: str, args: argparse.Namespace) -> dict[str, Any]:
    client = AgentClient(url, key, fingerprint, timeout=30)
    letter_id = 900_000 + secrets.randbelow(99_999)
    campaign = {
        "id": letter_id, "subject": "Hello {{ name }}", "from_email": "news@example.test", "from_name": "Molecule",
        "reply_to": None, "text": "Hello {{ name }}\n{{ unsubscribe_url }}\n", "html": None,
        "encoding": "quoted-printable", "message_id_domain": "example.test",
        "bounce_domain": args.bounce_domain, "unsubscribe_url": "http://panel.example.test/u/",
    }
    recipient = {"id": letter_id, "email": args.send, "fields": {"name": "Ann"}, "source_ip": args.source_ip,
                 "token": f"{letter_id}-{secrets.token_hex(5)}"}
    result: dict[str, Any] = {"batch": client.call("/v1/batches", {"batch_id": f"molecule-{letter_id}",
                                                                   "campaign": campaign, "recipients": [recipient]})}
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        events += [e for e in client.call("/v1/outcomes", {"ack": 0})["events"] if e.get("id") == letter_id
                   and e not in events]
        if any(e.get("status") in ("delivered", "failed") for e in events):
            break
        time.sleep(1)
    result["events"] = events
    return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("fingerprint")
    parser.add_argument("--send", metavar="RCPT")
    parser.add_argument("--source-ip")
    parser.add_argument("--bounce-domain")
    args = parser.parse_args()
    key = sys.stdin.read().strip()
    warnings.simplefilter("ignore")  # urllib3: an unverified HTTPS request (the pin does the checking)
    url = f"https://{args.host}:{args.port}"
    if args.send:
        result = send(url, key, args.fingerprint, args)
    else:
        result = ping(url, key, args.fingerprint, args.host, args.port)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
