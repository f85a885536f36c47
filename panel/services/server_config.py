"""Settings of a server that the daemon pushes to its agent without Ansible: the HELO name of each
source IP, the rate limits per (source IP, recipient domain), and the mailbox provider table with
the limits per (source IP, provider) (the built-in ones until the panel lets them be edited).

Every change bumps ``Server.config_version``; the daemon pushes the whole config to the agent
(``POST /v1/config``) whenever the version the agent holds (``config_applied``) differs.

Each source IP's weight and whether it is active are set here too, but they are the panel's own
business (which IP the daemon gives a letter to, daemon/dispatch.py): they bump nothing. The worker's
Exim, agent and DNS records keep every IP, so letters already given to an IP made inactive still go
out from it, and it can be made active again at once.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select

from ..extensions import db
from ..models import Domain, Server, ServerEvent, ServerIP, ServerRateLimit, ServerShare
from . import secret_box
from .servers import ServerError, HOSTNAME_RE, check_helo, check_source_ip

MAX_PER_MINUTE = 1_000_000
MAX_RATE_LIMITS = 1000  # what one agent takes in one config
ANY = "*"
MAX_WEIGHT = 100
WEIGHT_RULE = f"a whole number from 1 to {MAX_WEIGHT}"


@dataclass(frozen=True)
class RateLimitInput:
    source_ip: str  # one of the server's IPs, or "*"
    domain: str  # a recipient domain, or "*"
    per_minute: int


def bump(server: Server) -> None:
    """Mark the server's settings as changed: the daemon pushes them on its next round."""
    server.config_version = (server.config_version or 0) + 1


def set_helo(server: Server, ip_id: int, helo: str) -> ServerIP:
    """Change the HELO name one source IP greets with."""
    item = next((ip for ip in server.ips if ip.id == ip_id), None)
    if item is None:
        raise ServerError(f"this server has no source IP #{ip_id}")
    name = check_helo(helo, item.ip)
    if name != item.helo:
        item.helo = name
        bump(server)
    db.session.flush()
    return item


@dataclass(frozen=True)
class IpUse:
    """How the daemon uses one source IP: its share of the server's letters, and whether it gets any."""

    weight: int
    active: bool


@dataclass(frozen=True)
class IpUseChange:
    ip: str
    before: IpUse
    after: IpUse

    def describe(self) -> str:
        """What changed, in words: "192.0.2.10: weight 1 → 3, made inactive, it gets no new letters"."""
        parts = []
        if self.after.weight != self.before.weight:
            parts.append(f"weight {self.before.weight} → {self.after.weight}")
        if self.after.active != self.before.active:
            parts.append("made active" if self.after.active else
                         "made inactive, it gets no new letters (those already on the agent still go out from it)")
        return f"{self.ip}: {', '.join(parts) or 'nothing changed'}"


def _check_weight(weight: object, where: str) -> int:
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
        raise ServerError(f"{where} must be {WEIGHT_RULE}")
    return weight


def _apply_ip_use(server: Server, wanted: dict[int, IpUse]) -> list[IpUseChange]:
    """Set the IPs' (checked) weight and active flag, once it is sure one IP stays active."""
    after = {ip.id: wanted.get(ip.id, IpUse(ip.weight, ip.active)) for ip in server.ips}
    if not any(use.active for use in after.values()):
        raise ServerError("at least one source IP must stay active: a server needs one to send from "
                          "(make another IP active first)")
    changes = []
    for ip in server.ips:
        if ip.id in wanted:
            changes.append(IpUseChange(ip.ip, IpUse(ip.weight, ip.active), after[ip.id]))
            ip.weight, ip.active = after[ip.id].weight, after[ip.id].active
    db.session.flush()
    return changes


def set_ip_use(server: Server, ip_id: int, use: IpUse) -> IpUseChange:
    """Change one source IP's weight and active flag (the server page). No config version bump:
    the agent does not need to know."""
    item = next((ip for ip in server.ips if ip.id == ip_id), None)
    if item is None:
        raise ServerError(f"this server has no source IP #{ip_id}")
    weight = _check_weight(use.weight, f"the weight of {item.ip}")
    if not use.active and item.active and not any(ip.active for ip in server.ips if ip is not item):
        raise ServerError(f"{item.ip} is the last active IP of this server: a server needs at least one to send "
                          "from (make another IP active first)")
    return _apply_ip_use(server, {item.id: IpUse(weight, bool(use.active))})[0]


def _check_ip_uses(server: Server, ips: dict[str, Any]) -> dict[int, IpUse]:
    """``{"<ip>": {"weight"?, "active"?}}`` (the JSON API) checked; IPs left out, and fields left out,
    keep theirs."""
    by_ip = {ip.ip: ip for ip in server.ips}
    wanted: dict[int, IpUse] = {}
    for ip, item in ips.items():
        try:
            key = str(ipaddress.ip_address(ip))
        except ValueError:
            raise ServerError(f"ips: {ip!r} is not an IP address") from None
        if key not in by_ip:
            raise ServerError(f"ips: {key} is not a source IP of this server (its IPs: {', '.join(by_ip)})")
        where = f"ips[{ip}]"
        if not isinstance(item, dict):
            raise ServerError(f'{where} must be an object {{"weight": 1-{MAX_WEIGHT}, "active": true or false}}')
        unknown = sorted(set(item) - {"weight", "active"})
        if unknown:
            raise ServerError(f"{where}: unknown field(s) {', '.join(map(str, unknown))} (give weight and/or active)")
        row = by_ip[key]
        weight = _check_weight(item["weight"], f"{where}.weight") if "weight" in item else row.weight
        active = item.get("active", row.active)
        if not isinstance(active, bool):
            raise ServerError(f"{where}.active must be true or false")
        wanted[row.id] = IpUse(weight, active)
    return wanted


def _check_rate_limit(server: Server, data: RateLimitInput) -> RateLimitInput:
    source_ip = check_source_ip(server, data.source_ip)
    domain = data.domain.strip().lower().rstrip(".") or ANY
    if domain != ANY and not HOSTNAME_RE.fullmatch(domain):
        raise ServerError(f"{data.domain.strip()!r} is not a domain name (e.g. gmail.com, or * for every domain)")
    per_minute = data.per_minute
    if isinstance(per_minute, bool) or not isinstance(per_minute, int) or not 1 <= per_minute <= MAX_PER_MINUTE:
        raise ServerError(f"letters per minute must be a whole number from 1 to {MAX_PER_MINUTE}")
    return RateLimitInput(source_ip, domain, per_minute)


def set_rate_limit(server: Server, data: RateLimitInput) -> tuple[ServerRateLimit, bool]:
    """Add a limit, or change the one for the same source IP and domain; (row, created)."""
    data = _check_rate_limit(server, data)
    existing = next((r for r in server.rate_limits if (r.source_ip, r.domain) == (data.source_ip, data.domain)), None)
    if existing is None:
        if len(server.rate_limits) >= MAX_RATE_LIMITS:
            raise ServerError(f"a server takes at most {MAX_RATE_LIMITS} rate limits: remove one first")
        existing = ServerRateLimit(source_ip=data.source_ip, domain=data.domain, per_minute=data.per_minute)
        server.rate_limits.append(existing)
        created = True
    else:
        created = False
        if existing.per_minute == data.per_minute:
            return existing, False
        existing.per_minute = data.per_minute
    bump(server)
    db.session.flush()
    return existing, created


def remove_rate_limit(server: Server, limit_id: int) -> ServerRateLimit:
    item = next((r for r in server.rate_limits if r.id == limit_id), None)
    if item is None:
        raise ServerError(f"this server has no rate limit #{limit_id}")
    server.rate_limits.remove(item)
    bump(server)
    db.session.flush()
    return item


def replace_settings(server: Server, *, helo: dict[str, str], rate_limits: list[RateLimitInput],
                     ips: dict[str, Any] | None = None) -> bool:
    """Set the whole config at once (the JSON API): every item is checked before anything changes.
    `ips` ({"<ip>": {"weight"?, "active"?}}) changes only those given, and bumps no version (the
    agent does not use them). True if the agent's settings changed (and the version was bumped)."""
    ip_uses = _check_ip_uses(server, ips or {})
    by_ip = {ip.ip: ip for ip in server.ips}
    names: dict[str, str] = {}
    for ip, name in helo.items():
        try:
            key = str(ipaddress.ip_address(ip))
        except ValueError:
            raise ServerError(f"helo: {ip!r} is not an IP address") from None
        if key not in by_ip:
            raise ServerError(f"helo: {key} is not a source IP of this server (its IPs: {', '.join(by_ip)})")
        names[key] = check_helo(name, key)
    rules: dict[tuple[str, str], RateLimitInput] = {}
    for n, item in enumerate(rate_limits):
        try:
            rule = _check_rate_limit(server, item)
        except ServerError as exc:
            raise ServerError(f"rate_limits[{n}]: {exc}") from None
        if (rule.source_ip, rule.domain) in rules:
            raise ServerError(f"rate_limits[{n}]: source IP {rule.source_ip} and domain {rule.domain} are given twice")
        rules[rule.source_ip, rule.domain] = rule
    if len(rules) > MAX_RATE_LIMITS:
        raise ServerError(f"a server takes at most {MAX_RATE_LIMITS} rate limits")
    _apply_ip_use(server, ip_uses)  # the last check (one IP stays active) is in here, before any change
    changed = False
    for key, name in names.items():
        changed |= by_ip[key].helo != name
        by_ip[key].helo = name
    current = {(r.source_ip, r.domain): r for r in server.rate_limits}
    for key, row in current.items():
        if key not in rules:
            server.rate_limits.remove(row)
            changed = True
        elif row.per_minute != rules[key].per_minute:
            row.per_minute = rules[key].per_minute
            changed = True
    for key, rule in rules.items():
        if key not in current:
            server.rate_limits.append(ServerRateLimit(source_ip=rule.source_ip, domain=rule.domain,
                                                      per_minute=rule.per_minute))
            changed = True
    if changed:
        bump(server)
    db.session.flush()
    return changed


def settings_json(server: Server) -> dict[str, Any]:
    """What the user sees and edits (the JSON API)."""
    return {
        "config_version": server.config_version,
        "config_applied": server.config_applied,
        "helo": {ip.ip: ip.helo for ip in server.ips},
        "ips": {ip.ip: {"weight": ip.weight, "active": ip.active} for ip in server.ips},
        "rate_limits": [{"id": r.id, "source_ip": r.source_ip, "domain": r.domain, "per_minute": r.per_minute}
                        for r in server.rate_limits],
    }


def agent_config(server: Server) -> dict[str, Any]:
    """The body of ``POST /v1/config`` (docs/agent-protocol.md) for the server's current settings."""
    from .warmup import agent_settings as warmup_settings  # warmup bumps the version through this module

    rules = db.session.scalars(
        select(ServerRateLimit).where(ServerRateLimit.server_id == server.id).order_by(ServerRateLimit.id)
    ).all()
    return {
        "version": server.config_version,
        "rate_limits": [{"source_ip": r.source_ip, "domain": r.domain, "per_minute": r.per_minute} for r in rules],
        "helo": {ip.ip: ip.helo for ip in server.ips},
        **provider_settings(server),
        **sending_domains(server),
        **warmup_settings(server),
    }


def provider_settings(server: Server) -> dict[str, Any]:
    """The provider table and the limits per (source IP, provider) in force: the server's own
    (services/provider_limits.py), else the agent's built-in ones, sent explicitly so that the
    panel's view is what every agent holds whatever version it runs."""
    from .provider_limits import provider_settings as in_force  # it bumps the version through this module

    return in_force(server)


def sending_domains(server: Server) -> dict[str, Any]:
    """The DKIM keys (private: for the agent only, sealed in transit), the bounce domains of the
    user's sending domains and each IP's HELO name in each (its host name there); nothing when
    there are none (the agent then holds no keys and only its Exim configuration's bounce domains)."""
    from .domains import host_name  # domains bumps the servers' settings through this module

    # The owner's, and those of the users the server is shared with (services/server_shares.py).
    senders = select(ServerShare.user_id).where(ServerShare.server_id == server.id)
    domains = db.session.scalars(select(Domain).where(
        or_(Domain.user_id == server.user_id, Domain.user_id.in_(senders)), Domain.kind == "sending")
        .order_by(Domain.name)).all()
    if not domains:
        return {}
    return {
        "dkim": {d.name: {"selector": d.dkim_selector, "private_key": secret_box.unseal(d.dkim_private_key)}
                 for d in domains if d.dkim_selector and d.dkim_private_key},
        "bounce_domains": [d.bounce_domain for d in domains],
        "helo_by_domain": {ip.ip: {d.name: host_name(d, ip.ip) for d in domains} for ip in server.ips},
    }


def bump_user_servers(user_id: int) -> None:
    """The user's sending domains changed: every server of theirs gets the new keys and bounce domains."""
    shared = select(ServerShare.server_id).where(ServerShare.user_id == user_id)
    for server in db.session.scalars(select(Server).where(or_(Server.user_id == user_id, Server.id.in_(shared)))):
        bump(server)


def record_applied(server: Server, version: int, reply: Any) -> None:
    server.config_applied = version
    counts = reply if isinstance(reply, dict) else {}

    def count(name: str) -> str:  # the agent's figures, shown only if they are figures
        value = counts.get(name)
        return str(value) if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**9 else "?"

    db.session.add(ServerEvent(
        server_id=server.id, kind="config",
        message=f"configuration version {version} applied: {count('rate_limits')} rate limits, {count('helo')} HELO names",
    ))


def record_refused(server: Server, version: int, error: str) -> None:
    message = f"configuration version {version} was not applied: {error}"
    server.last_error = message
    db.session.add(ServerEvent(server_id=server.id, kind="error", message=message))
