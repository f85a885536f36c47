"""A server's limits per (source IP, mailbox provider) and its provider table (issue 9 point 4).

The provider table (MX host suffixes -> provider name) is per server, with the built-in one
(worker_agent/providers.py) until the user edits it: users of one panel are separate tenants, so
a panel-wide table one of them edits would regroup everybody's letters; and the limits that name
its providers are per server too, like the rate limits.

Limits: the built-in defaults per provider (``*`` source IP) apply until the user sets their own
for the same (source IP, provider); one set for a single IP is more specific and wins for that IP
(the agent takes the most specific rule: IP and provider, then provider, then IP, then ``*``). A
rule replaces the default whole: a kind of limit left empty is no limit of that kind.

Every change bumps the server's config version; the agent gets the table and the limits in force
with its next config (``provider_settings``), and applies them on the fly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import select

from worker_agent.providers import BUILTIN_PROVIDERS, DEFAULT_LIMITS, ProviderTable, ProviderTableError

from ..extensions import db
from ..models import Server, ServerProviderLimit, ServerProviderTable
from .servers import HOSTNAME_RE, ServerError, check_source_ip

ANY = "*"
MAX_LIMITS = 1000  # what one agent takes in one config
# The agent's ranges (worker_agent/remote_config.py), in whole numbers.
RANGES = {"per_minute": 1_000_000, "per_hour": 60_000_000, "connections": 1000, "per_connection": 100_000}
WORDS = {"per_minute": "letters per minute", "per_hour": "letters per hour", "connections": "concurrent connections",
         "per_connection": "letters per connection"}


@dataclass(frozen=True)
class ProviderLimitInput:
    source_ip: str  # one of the server's IPs, or "*"
    provider: str  # a provider of the server's table, a recipient domain, or "*"
    per_minute: int | None = None
    per_hour: int | None = None
    connections: int | None = None
    per_connection: int | None = None

    def numbers(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in RANGES}


LIMIT_FIELDS = tuple(f.name for f in fields(ProviderLimitInput))


# -- the provider table ------------------------------------------------------------------------

def provider_table(server: Server) -> dict[str, list[str]]:
    row = db.session.get(ServerProviderTable, server.id)
    if row is None:
        return {name: list(suffixes) for name, suffixes in BUILTIN_PROVIDERS.items()}
    return json.loads(row.providers)


def table_is_built_in(server: Server) -> bool:
    return db.session.get(ServerProviderTable, server.id) is None


def check_table(data: Any) -> dict[str, list[str]]:
    try:
        return ProviderTable.from_json(data).to_json()
    except ProviderTableError as exc:
        raise ServerError(str(exc)) from None


_LINE = re.compile(r"^\s*([^:\s]+)\s*:(.*)$")


def parse_table_text(text: str) -> dict[str, list[str]]:
    """``name: suffix, suffix`` one provider a line (the server page's text box); blank lines and # comments skipped."""
    table: dict[str, list[str]] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = _LINE.match(line)
        if found is None:
            raise ServerError(f"line {n}: write a provider as “name: mx-suffix, mx-suffix” (e.g. “google: google.com”)")
        name = found[1].lower()
        if name in table:
            raise ServerError(f"line {n}: provider {name} is given twice")
        table[name] = [s.strip() for s in found[2].replace(",", " ").split()]
    return check_table(table)


def table_text(table: dict[str, list[str]]) -> str:
    return "".join(f"{name}: {', '.join(suffixes)}\n" for name, suffixes in table.items())


def _check_table_keeps_limited(server: Server, table: dict[str, list[str]]) -> None:
    for rule in _rules(server):
        if rule.provider != ANY and "." not in rule.provider and rule.provider not in table:
            raise ServerError(f"{rule.provider} is limited on this server: remove its limit first "
                              "(or keep the provider in the table)")


def set_provider_table(server: Server, table: dict[str, list[str]] | None) -> bool:
    """Use this table on the server (None: the built-in one again); True if it changed."""
    changed = _store_table(server, None if table is None else check_table(table))
    if changed:
        _bump(server)
    db.session.flush()
    return changed


def _store_table(server: Server, table: dict[str, list[str]] | None) -> bool:
    if table is not None and table == provider_table_builtin():
        table = None  # the same as the built-in table: follow it (and its updates)
    _check_table_keeps_limited(server, table if table is not None else provider_table_builtin())
    row = db.session.get(ServerProviderTable, server.id)
    text = None if table is None else json.dumps(table)
    if (row.providers if row is not None else None) == text:
        return False
    if row is None:
        db.session.add(ServerProviderTable(server_id=server.id, providers=text))
    elif text is None:
        db.session.delete(row)
    else:
        row.providers = text
    return True


def provider_table_builtin() -> dict[str, list[str]]:
    return {name: list(suffixes) for name, suffixes in BUILTIN_PROVIDERS.items()}


# -- limits -----------------------------------------------------------------------------------

def _rules(server: Server) -> list[ServerProviderLimit]:
    return list(db.session.scalars(select(ServerProviderLimit).where(ServerProviderLimit.server_id == server.id)
                                   .order_by(ServerProviderLimit.source_ip, ServerProviderLimit.provider)))


def user_limits(server: Server) -> list[ServerProviderLimit]:
    return _rules(server)


def check_limit(server: Server, data: ProviderLimitInput, table: dict[str, list[str]] | None = None) -> ProviderLimitInput:
    source_ip = check_source_ip(server, data.source_ip or "")
    table = provider_table(server) if table is None else table
    provider = (data.provider or "").strip().lower().rstrip(".")
    if not provider:
        raise ServerError("name a provider of this server's table (e.g. google), a recipient domain, or *")
    if provider != ANY and provider not in table and not ("." in provider and HOSTNAME_RE.fullmatch(provider)):
        raise ServerError(f"{data.provider.strip()!r} is not a provider of this server's table "
                          f"({', '.join(sorted(table)) or 'none'}), nor a recipient domain (a domain outside "
                          "the table is its own provider): add it to the table first")
    numbers = {}
    for name, high in RANGES.items():
        value = getattr(data, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high):
            raise ServerError(f"{name} must be a whole number from 1 to {high} ({WORDS[name]}), not {value!r}")
        numbers[name] = value
    if all(v is None for v in numbers.values()):
        raise ServerError("give at least one limit: letters per minute or per hour, concurrent connections, "
                          "or letters per connection")
    return ProviderLimitInput(source_ip, provider, **numbers)


def set_provider_limit(server: Server, data: ProviderLimitInput) -> tuple[ServerProviderLimit, bool]:
    """Add a limit, or replace the one for the same source IP and provider; (row, created)."""
    data = check_limit(server, data)
    rules = _rules(server)
    row = next((r for r in rules if (r.source_ip, r.provider) == (data.source_ip, data.provider)), None)
    created = row is None
    if row is None:
        if len(rules) >= MAX_LIMITS:
            raise ServerError(f"a server takes at most {MAX_LIMITS} provider limits: remove one first")
        row = ServerProviderLimit(server_id=server.id, source_ip=data.source_ip, provider=data.provider)
        db.session.add(row)
    elif all(getattr(row, k) == v for k, v in data.numbers().items()):
        return row, False
    for name, value in data.numbers().items():
        setattr(row, name, value)
    _bump(server)
    db.session.flush()
    return row, created


def remove_provider_limit(server: Server, limit_id: int) -> ServerProviderLimit:
    row = db.session.get(ServerProviderLimit, limit_id)
    if row is None or row.server_id != server.id:
        raise ServerError(f"this server has no provider limit #{limit_id}")
    db.session.delete(row)
    _bump(server)
    db.session.flush()
    return row


def replace_provider_settings(server: Server, *, table: Any = ..., limits: list[Any] | None = None) -> bool:
    """The JSON API: the table (``...``: kept, None: the built-in one) and the whole list of limits
    (None: kept), all checked before anything changes; True if anything changed."""
    new_table = provider_table(server) if table is ... else (provider_table_builtin() if table is None
                                                             else _api_table(table))
    if limits is not None:
        if not isinstance(limits, list):
            raise ServerError("provider_limits must be a list of {\"source_ip\"?, \"provider\", \"per_minute\"?, "
                              "\"per_hour\"?, \"connections\"?, \"per_connection\"?}")
        wanted: dict[tuple[str, str], ProviderLimitInput] = {}
        for n, item in enumerate(limits):
            where = f"provider_limits[{n}]"
            if not isinstance(item, dict):
                raise ServerError(f"{where} must be an object {{\"source_ip\"?, \"provider\", \"per_minute\"?, …}}")
            unknown = sorted(set(item) - set(LIMIT_FIELDS))
            if unknown:
                raise ServerError(f"{where}: unknown field(s) {', '.join(map(str, unknown))} "
                                  f"(known: {', '.join(LIMIT_FIELDS)})")
            if not isinstance(item.get("source_ip", ANY), str) or not isinstance(item.get("provider", ""), str):
                raise ServerError(f"{where}: source_ip and provider must be strings")
            try:
                rule = check_limit(server, ProviderLimitInput(item.get("source_ip", ANY), item.get("provider", ""),
                                                              **{k: item.get(k) for k in RANGES}), new_table)
            except ServerError as exc:
                raise ServerError(f"{where}: {exc}") from None
            if (rule.source_ip, rule.provider) in wanted:
                raise ServerError(f"{where}: source IP {rule.source_ip} and provider {rule.provider} are given twice")
            wanted[rule.source_ip, rule.provider] = rule
        if len(wanted) > MAX_LIMITS:
            raise ServerError(f"a server takes at most {MAX_LIMITS} provider limits")
    else:
        wanted = {(r.source_ip, r.provider): ProviderLimitInput(r.source_ip, r.provider, r.per_minute, r.per_hour,
                                                                r.connections, r.per_connection)
                  for r in _rules(server)}
        for rule in wanted.values():  # a new table must still hold the providers limited
            try:
                check_limit(server, rule, new_table)
            except ServerError:
                raise ServerError(f"{rule.provider} is limited on this server: remove its limit first "
                                  "(or keep the provider in the table)") from None
    changed = False
    current = {(r.source_ip, r.provider): r for r in _rules(server)}
    for key, row in current.items():
        if key not in wanted:
            db.session.delete(row)
            changed = True
    db.session.flush()
    for key, rule in wanted.items():
        row = current.get(key)
        if row is None:
            row = ServerProviderLimit(server_id=server.id, source_ip=rule.source_ip, provider=rule.provider)
            db.session.add(row)
        if row.id is None or any(getattr(row, k) != v for k, v in rule.numbers().items()):
            changed = True
        for name, value in rule.numbers().items():
            setattr(row, name, value)
    db.session.flush()
    if table is not ...:
        changed |= _store_table(server, None if table is None else new_table)
    if changed:
        _bump(server)
    db.session.flush()
    return changed


def _api_table(table: Any) -> dict[str, list[str]]:
    try:
        return check_table(table)
    except ServerError as exc:
        raise ServerError(f"providers: {exc}") from None


# -- what is shown and pushed --------------------------------------------------------------------

def default_limits(table: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The built-in defaults of the providers in this table."""
    return [rule.to_json() for name, rule in DEFAULT_LIMITS.items() if name in table]


def limits_in_force(server: Server) -> list[dict[str, Any]]:
    """The user's limits, and the defaults of the providers the user set no ``*`` limit for; each with
    "default": whether it is a built-in one (and "id" for the user's)."""
    table = provider_table(server)
    rules = _rules(server)
    own = {(r.source_ip, r.provider) for r in rules}
    shown = [dict(rule, default=True) for rule in default_limits(table) if (ANY, rule["provider"]) not in own]
    shown += [{"id": r.id, "source_ip": r.source_ip, "provider": r.provider, "per_minute": r.per_minute,
               "per_hour": r.per_hour, "connections": r.connections, "per_connection": r.per_connection,
               "default": False} for r in rules]
    return shown  # the defaults in the built-in order, then the user's by source IP and provider


def limits_shown(server: Server) -> list[dict[str, Any]]:
    """``limits_in_force`` for people: the user's own first."""
    return sorted(limits_in_force(server), key=lambda rule: rule["default"])


def provider_settings(server: Server) -> dict[str, Any]:
    """The provider table and the limits in force, for the agent's config (``POST /v1/config``)."""
    return {
        "providers": provider_table(server),
        "provider_limits": [{k: v for k, v in rule.items() if v is not None and k not in ("id", "default")}
                            for rule in limits_in_force(server)],
    }


def settings_json(server: Server) -> dict[str, Any]:
    """The API's view: the user's limits, the defaults, the table and whether it is the built-in one."""
    table = provider_table(server)
    return {
        "providers": table,
        "providers_built_in": table_is_built_in(server),
        "provider_limits": [{"id": r.id, "source_ip": r.source_ip, "provider": r.provider, "per_minute": r.per_minute,
                             "per_hour": r.per_hour, "connections": r.connections, "per_connection": r.per_connection}
                            for r in _rules(server)],
        "default_provider_limits": default_limits(table),
    }


def _bump(server: Server) -> None:
    from .server_config import bump  # server_config pushes what this module holds

    bump(server)
