"""A worker's agent key (the Fernet key its messages are sealed with), kept sealed in the DB.

``servers.agent_key`` holds the key sealed by ``secret_box`` like TSIG and DKIM secrets; whoever
needs the key itself (the daemon's agent client, the provisioning run) opens it here.
"""

from __future__ import annotations

from cryptography.fernet import Fernet

from ..extensions import db
from ..models import Server
from . import secret_box


def seal_agent_key(key: str) -> str:
    return secret_box.seal(key)


def open_agent_key(server: Server) -> str | None:
    """The agent key itself, None while the server has none."""
    return secret_box.unseal(server.agent_key) if server.agent_key else None


def replace_agent_key(server: Server) -> str:
    """Give the server a new agent key (stored sealed; flushes) and return it, for a run of the
    worker playbook that installs it on the host (a host that changed owner keeps nothing of the
    old key). Until the agent holds the new key the daemon cannot talk to it."""
    key = Fernet.generate_key().decode()
    server.agent_key = seal_agent_key(key)
    db.session.flush()
    return key
