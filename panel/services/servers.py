"""Sending servers of one user: registering an agent that already runs, listing, events."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from cryptography.fernet import Fernet
from sqlalchemy import select

from ..extensions import db
from ..models import Server, ServerEvent, ServerIP, User
from . import network_policy
from .agent_keys import seal_agent_key

HOSTNAME_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?")


class ServerError(Exception):
    """A request about servers that cannot be carried out; the message says why."""


def check_source_ip(server: Server, value: str) -> str:
    """A rule's source IP in its normal form: one of the server's IPs, or "*" (empty) for all."""
    source_ip = value.strip() or "*"
    if source_ip == "*":
        return source_ip
    try:
        source_ip = str(ipaddress.ip_address(source_ip))
    except ValueError:
        raise ServerError(f"{source_ip!r} is not an IP address (give one of the server's IPs, or *)") from None
    if source_ip not in {ip.ip for ip in server.ips}:
        raise ServerError(f"{source_ip} is not a source IP of this server "
                          f"(its IPs: {', '.join(ip.ip for ip in server.ips)}, or * for all)")
    return source_ip


@dataclass(frozen=True)
class SourceIP:
    ip: str
    helo: str = ""  # empty: the server's host name


def user_servers(user: User) -> list[Server]:
    return list(db.session.scalars(select(Server).where(Server.user_id == user.id).order_by(Server.id)))


def get_server(user: User, server_id: int) -> Server | None:
    """The user's server with this id; None for a missing server or another user's server."""
    server = db.session.get(Server, server_id)
    return server if server is not None and server.user_id == user.id else None


def server_events(server: Server, limit: int = 100) -> list[ServerEvent]:
    return list(
        db.session.scalars(
            select(ServerEvent)
            .where(ServerEvent.server_id == server.id)
            .order_by(ServerEvent.id.desc())
            .limit(limit)
        )
    )


def _check_host(host: str) -> str:
    host = host.strip()
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not HOSTNAME_RE.fullmatch(host):
        raise ServerError(f"{host!r} is neither an IP address nor a host name")
    return host.lower().rstrip(".")


def parse_source_ip(spec: str) -> SourceIP:
    """`IP` or `IP=HELO` as given on the command line."""
    ip, _, helo = spec.partition("=")
    try:
        ip = str(ipaddress.ip_address(ip.strip()))
    except ValueError:
        raise ServerError(f"{spec!r}: {ip.strip()!r} is not an IP address (use IP or IP=HELO)") from None
    return SourceIP(ip=ip, helo=check_helo(helo, spec) if helo.strip() else "")


def check_helo(helo: str, where: str) -> str:
    helo = helo.strip()
    if not HOSTNAME_RE.fullmatch(helo):
        raise ServerError(f"{where!r}: {helo!r} is not a host name to greet with (HELO)")
    return helo.lower().rstrip(".")


def register_server(
    user: User,
    *,
    name: str,
    host: str,
    port: int,
    agent_key: str,
    fingerprint: str,
    ips: list[SourceIP],
) -> Server:
    """Record an agent that is already installed and running (its key and certificate known)."""
    if not 1 <= port <= 65535:
        raise ServerError(f"port {port} is out of range (1-65535)")
    agent_key = agent_key.strip()
    try:
        Fernet(agent_key.encode())
    except (ValueError, TypeError):
        raise ServerError("the agent key is not a Fernet key (32 url-safe base64-encoded bytes)") from None
    fingerprint = fingerprint.strip().replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
        raise ServerError("the fingerprint must be the SHA-256 of the agent's certificate: 64 hex digits")
    check_agent_address(_check_host(host), port)
    return new_server(user, name=name, host=host, ips=ips, api_port=port, agent_key=agent_key,
                      cert_fingerprint=fingerprint, status="new")


def check_agent_address(host: str, port: int) -> None:
    """Refuse an agent address the panel may not call (network_policy): the daemon would call it every
    round. A name that does not resolve yet is kept: the daemon checks again whenever it connects."""
    try:
        network_policy.resolve(host)
    except network_policy.HostRefused:
        return
    try:
        network_policy.check(host, port)
    except network_policy.HostRefused as exc:
        raise ServerError(str(exc)) from None


def new_server(user: User, *, name: str, host: str, ips: list[SourceIP], **columns: object) -> Server:
    """Check what every server needs (name, host, distinct source IPs), then add the row with
    its IPs; ``columns`` are the other Server columns, already checked by the caller."""
    name = name.strip()
    if not name or len(name) > 200:
        raise ServerError("give the server a name of 1 to 200 characters")
    host = _check_host(host)
    if not ips:
        raise ServerError("give at least one IP address the server sends from (one per line, IP or IP=HELO)")
    seen = [item.ip for item in ips]
    if len(set(seen)) != len(seen):
        raise ServerError("each source IP address may be given once")
    if columns.get("agent_key"):  # stored sealed, like TSIG and DKIM secrets
        columns["agent_key"] = seal_agent_key(str(columns["agent_key"]))
    server = Server(user_id=user.id, name=name, host=host, outcome_ack=0, **columns)
    server.ips = [
        ServerIP(ip=item.ip, helo=check_helo(item.helo, item.ip) if item.helo else host, weight=1, active=True)
        for item in ips
    ]
    db.session.add(server)
    db.session.flush()
    return server
