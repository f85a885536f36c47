"""A worker's agent key (the Fernet key its messages are sealed with), kept sealed in the DB.

``servers.agent_key`` holds the key sealed by ``secret_box`` like TSIG and DKIM secrets; whoever
needs the key itself (the daemon's agent client, the provisioning run) opens it here.

Replacing it without downtime (`flask servers rotate-key`): ``request_rotation`` puts a new key
in ``agent_key_next``; the daemon hands it to the agent in a message sealed with the current key
(POST /v1/key, docs/agent-protocol.md) and, once the agent answered, ``handed_over`` makes it
the key. The agent opens messages under both until the panel first uses the new one.
"""

from __future__ import annotations

from cryptography.fernet import Fernet

from ..extensions import db
from ..models import Server, ServerEvent
from . import secret_box


def seal_agent_key(key: str) -> str:
    return secret_box.seal(key)


def open_agent_key(server: Server) -> str | None:
    """The agent key itself, None while the server has none."""
    return secret_box.unseal(server.agent_key) if server.agent_key else None


def open_next_key(server: Server) -> str | None:
    return secret_box.unseal(server.agent_key_next) if server.agent_key_next else None


def replace_agent_key(server: Server) -> str:
    """Give the server a new agent key (stored sealed; flushes) and return it, for a run of the
    worker playbook that installs it on the host (a host that changed owner keeps nothing of the
    old key). Until the agent holds the new key the daemon cannot talk to it."""
    key = Fernet.generate_key().decode()
    server.agent_key = seal_agent_key(key)
    server.agent_key_next = None  # a rotation asked for earlier is moot
    db.session.flush()
    return key


def request_rotation(server: Server) -> bool:
    """Ask the daemon to replace the agent key (flushes); False when a new key already waits."""
    if server.agent_key_next:
        return False
    server.agent_key_next = seal_agent_key(Fernet.generate_key().decode())
    db.session.flush()
    return True


def handed_over(server: Server) -> None:
    """The agent took the new key: the panel uses only it from now on (flushes)."""
    server.agent_key, server.agent_key_next = server.agent_key_next, None
    db.session.add(ServerEvent(server_id=server.id, kind="key", message="agent key replaced"))
    db.session.flush()


def hand_over_refused(server: Server, reason: str) -> None:
    """The agent did not take the new key: the request is dropped, the old key stays (flushes)."""
    server.agent_key_next = None
    db.session.add(ServerEvent(server_id=server.id, kind="error", message=(
        f"the agent did not take a new key ({reason[:200]}): the old key stays; update the agent "
        "(set the server up again) and ask again")))
    db.session.flush()
