"""Run on the controller: reach a worker's agent the way the panel does.

    agent_ping.py HOST PORT FINGERPRINT < fernet-key

Prints, as JSON, the SHA-256 fingerprint of the certificate the agent presents, the reply to
a sealed /v1/ping through the panel's own client (panel.daemon.agent_client, certificate
pinned to FINGERPRINT), and what the agent answers to a ping sealed with another key.
"""

import hashlib
import json
import socket
import ssl
import sys
import warnings
from pathlib import Path

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


def main() -> int:
    host, port, fingerprint = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    key = sys.stdin.read().strip()
    warnings.simplefilter("ignore")  # urllib3: an unverified HTTPS request (the pin does the checking)
    result = {"presented": presented_fingerprint(host, port)}
    client = AgentClient(f"https://{host}:{port}", key, fingerprint, timeout=30)
    try:
        result["ping"] = client.call("/v1/ping", {})
    except AgentError as exc:
        result["ping_error"] = str(exc)
    stranger = AgentClient(f"https://{host}:{port}", new_key(), fingerprint, timeout=30)
    try:
        result["wrong_key"] = stranger.call("/v1/ping", {})
    except AgentError as exc:
        result["wrong_key"] = str(exc)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
