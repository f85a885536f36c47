"""Settings the panel pushes at run time (POST /v1/config): rate limits, HELO names, the DKIM keys
of the user's sending domains and their bounce domains.

The panel sends its whole view each time, tagged with a version; the agent checks all of it
(nothing is applied when one item is wrong), writes the HELO map Exim reads, then stores the
config in the queue DB, where the sender process looks for a new version every second.

Precedence: once a config has been pushed, its ``rate_limits`` replace the config file's list
entirely (an empty list means no limits); the file's list applies only to an agent that never
got one. HELO names: the map holds the panel's names; an IP missing from it greets with the name
the Exim configuration was rendered with (Ansible's ``exim_source_ips``). Providers: ``providers``
(the table grouping recipient domains by their MX hosts) and ``provider_limits`` (per source IP
and provider group) are optional; absent, the built-in table and default limits apply
(providers.py), an empty list of limits means none. Warm-up: ``warmup`` lists the source IPs on a warm-up
schedule (warmup.py); an IP not listed has no daily cap. DKIM: one private key
file per domain in ``dkim_dir`` (0640, group Debian-exim: Exim's delivery processes read them) and
the map Exim looks a letter's From domain up in; the private keys are never stored in the queue
DB nor echoed back. Bounce domains: a file of names Exim accepts bounce+/unsubscribe+ mail for,
besides those of its configuration.
"""

from __future__ import annotations

import contextlib
import grp
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import AgentConfig, RateLimit
from .providers import ProviderLimit, ProviderTable, ProviderTableError, default_limits
from .queue import QueueDB
from .warmup import WarmupError, WarmupPlan, parse_schedule

STATE_KEY = "remote_config"
VERSION_KEY = "config_version"
MAX_RULES = 1000
MAX_PER_MINUTE = 1_000_000
MAX_PER_HOUR = 60 * MAX_PER_MINUTE
MAX_CONNECTIONS = 1000
MAX_PER_CONNECTION = 100_000
# A host name: labels of letters, digits and hyphens. No whitespace, colon, quote or newline
# can get through, so a name cannot break out of its line in the HELO map.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
DOMAIN_RE = HOSTNAME_RE
SELECTOR_RE = re.compile(_LABEL)
MAX_DOMAINS = 1000
MAX_KEY_SIZE = 16384
KEY_GROUP = "Debian-exim"  # Exim's delivery processes read the DKIM keys


class RemoteConfigError(Exception):
    """A pushed config that cannot be applied; the message names the item."""


@dataclass(frozen=True)
class RemoteConfig:
    version: int
    rate_limits: tuple[RateLimit, ...]
    helo: dict[str, str]
    dkim: dict[str, tuple[str, str]] = field(default_factory=dict)  # domain -> (selector, private key PEM)
    bounce_domains: tuple[str, ...] = ()
    helo_by_domain: dict[str, dict[str, str]] = field(default_factory=dict)  # ip -> sending domain -> name
    providers: dict[str, tuple[str, ...]] | None = None  # None: the built-in table
    provider_limits: tuple[ProviderLimit, ...] | None = None  # None: the built-in defaults
    warmup: tuple[WarmupPlan, ...] = ()  # the source IPs warming up

    def to_json(self) -> dict[str, Any]:
        """What is stored in the queue DB: the private keys are not (they live in their files only)."""
        return {
            "version": self.version,
            "rate_limits": [{"source_ip": r.source_ip, "domain": r.domain, "per_minute": r.per_minute}
                            for r in self.rate_limits],
            "helo": dict(self.helo),
            "dkim": {domain: selector for domain, (selector, _) in self.dkim.items()},
            "helo_by_domain": {ip: dict(names) for ip, names in self.helo_by_domain.items()},
            "bounce_domains": list(self.bounce_domains),
            "providers": None if self.providers is None else {k: list(v) for k, v in self.providers.items()},
            "provider_limits": (None if self.provider_limits is None
                                else [rule.to_json() for rule in self.provider_limits]),
            "warmup": [plan.to_json() for plan in self.warmup],
        }


def parse(data: Any, source_ips: tuple[str, ...]) -> RemoteConfig:
    """Check a pushed config against this node's source IPs; raise RemoteConfigError naming the item."""
    if not isinstance(data, dict):
        raise RemoteConfigError("the config must be a JSON object {\"version\", \"rate_limits\", \"helo\"}")
    known = {"version", "rate_limits", "helo", "helo_by_domain", "dkim", "bounce_domains", "providers",
             "provider_limits", "warmup"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RemoteConfigError(f"unknown key(s): {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**63:
        raise RemoteConfigError(f"version must be a whole number of 1 or more, not {version!r}")
    own = {_ip(ip): ip for ip in source_ips}
    table = None
    if data.get("providers") is not None:
        try:
            table = ProviderTable.from_json(data["providers"])
        except ProviderTableError as exc:
            raise RemoteConfigError(str(exc)) from None
    limits = data.get("provider_limits")
    return RemoteConfig(version, _parse_rules(data.get("rate_limits", []), own), _parse_helo(data.get("helo", {}), own),
                        _parse_dkim(data.get("dkim", {})), _parse_bounce_domains(data.get("bounce_domains", [])),
                        _parse_helo_by_domain(data.get("helo_by_domain", {}), own),
                        None if table is None else table.providers,
                        None if limits is None else _parse_provider_limits(limits, own, table or ProviderTable()),
                        _parse_warmup(data.get("warmup", []), own, table or ProviderTable()))


MAX_DAY_SECONDS = 7 * 86400


def _parse_warmup(value: Any, own: dict[str, str], table: ProviderTable) -> tuple[WarmupPlan, ...]:
    """``[{"source_ip", "start", "day_seconds"?, "schedule"}]`` (warmup.py), one entry per IP."""
    if not isinstance(value, list) or len(value) > len(own):
        raise RemoteConfigError(f"warmup must be a list of at most one {{\"source_ip\", \"start\", \"schedule\"}} "
                                f"per source IP ({len(own)})")
    plans: dict[str, WarmupPlan] = {}
    for i, item in enumerate(value):
        where = f"warmup[{i}]"
        if not isinstance(item, dict) or not {"source_ip", "start", "schedule"} <= set(item) or \
                set(item) - {"source_ip", "start", "schedule", "day_seconds"}:
            raise RemoteConfigError(f"{where} must be an object with source_ip, start, schedule and optionally "
                                    "day_seconds")
        ip = _own_ip(item["source_ip"], own, f"{where}.source_ip")
        if ip in plans:
            raise RemoteConfigError(f"{where}: source_ip {ip} is given twice")
        start = item["start"]
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 <= start < 2**40:
            raise RemoteConfigError(f"{where}.start must be a UNIX time (seconds), not {start!r}")
        day_seconds = item.get("day_seconds", 86400)
        if isinstance(day_seconds, bool) or not isinstance(day_seconds, int) or not 1 <= day_seconds <= MAX_DAY_SECONDS:
            raise RemoteConfigError(f"{where}.day_seconds must be a whole number from 1 to {MAX_DAY_SECONDS}")
        try:
            steps = parse_schedule(item["schedule"], f"{where}.schedule", lambda name: name in table.providers
                                   or ("." in name and DOMAIN_RE.fullmatch(name) is not None))
        except WarmupError as exc:
            raise RemoteConfigError(str(exc)) from None
        plans[ip] = WarmupPlan(ip, float(start), steps, day_seconds)
    return tuple(plans.values())


_LIMIT_KEYS = ("per_minute", "per_hour", "connections", "per_connection")


def _parse_provider_limits(value: Any, own: dict[str, str], table: ProviderTable) -> tuple[ProviderLimit, ...]:
    """``[{"source_ip", "provider", "per_minute"?, "per_hour"?, "connections"?, "per_connection"?}]``;
    a provider is "*", a name of the table or a domain name (a domain outside the table is its own group)."""
    if not isinstance(value, list) or len(value) > MAX_RULES:
        raise RemoteConfigError(f"provider_limits must be a list of at most {MAX_RULES} "
                                "{\"source_ip\", \"provider\", \"per_minute\", \"per_hour\", \"connections\", "
                                "\"per_connection\"}")
    rules: list[ProviderLimit] = []
    seen: dict[tuple[str, str], int] = {}
    for i, item in enumerate(value):
        where = f"provider_limits[{i}]"
        if not isinstance(item, dict):
            raise RemoteConfigError(f"{where} must be an object {{\"source_ip\", \"provider\", \"per_minute\", …}}")
        unknown = sorted(set(item) - {"source_ip", "provider", *_LIMIT_KEYS})
        if unknown:
            raise RemoteConfigError(f"{where} has unknown key(s): {', '.join(map(str, unknown))} "
                                    f"(known: source_ip, provider, {', '.join(_LIMIT_KEYS)})")
        if "source_ip" not in item or "provider" not in item:
            raise RemoteConfigError(f"{where} needs source_ip and provider")
        ip = item["source_ip"] if item["source_ip"] == "*" else _own_ip(item["source_ip"], own, f"{where}.source_ip")
        provider = item["provider"].lower() if isinstance(item["provider"], str) else item["provider"]
        if not isinstance(provider, str) or not (provider == "*" or provider in table.providers
                                                 or ("." in provider and DOMAIN_RE.fullmatch(provider))):
            raise RemoteConfigError(f"{where}.provider: {item['provider']!r} is neither \"*\", a provider of the table "
                                    f"({', '.join(sorted(table.providers)) or 'none'}) nor a domain name")
        per_minute = _number(item.get("per_minute"), f"{where}.per_minute", MAX_PER_MINUTE)
        per_hour = _number(item.get("per_hour"), f"{where}.per_hour", MAX_PER_HOUR)
        connections = _whole(item.get("connections"), f"{where}.connections", MAX_CONNECTIONS)
        per_connection = _whole(item.get("per_connection"), f"{where}.per_connection", MAX_PER_CONNECTION)
        if per_minute is None and per_hour is None and connections is None and per_connection is None:
            raise RemoteConfigError(f"{where} sets no limit: give {', '.join(_LIMIT_KEYS[:-1])} or {_LIMIT_KEYS[-1]}")
        if (ip, provider) in seen:
            raise RemoteConfigError(f"{where}: source_ip {ip} and provider {provider} are already limited by "
                                    f"provider_limits[{seen[ip, provider]}]")
        seen[ip, provider] = i
        rules.append(ProviderLimit(ip, provider, per_minute, per_hour, connections, per_connection))
    return tuple(rules)


def _number(value: Any, where: str, high: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= high:
        raise RemoteConfigError(f"{where} must be a number above 0 and at most {high}, not {value!r}")
    return float(value)


def _whole(value: Any, where: str, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise RemoteConfigError(f"{where} must be a whole number from 1 to {high}, not {value!r}")
    return value


def _parse_helo_by_domain(value: Any, own: dict[str, str]) -> dict[str, dict[str, str]]:
    """``{"<source IP>": {"<sending domain>": "<host name>"}}``: the HELO of letters for that domain."""
    if not isinstance(value, dict):
        raise RemoteConfigError("helo_by_domain must be an object {\"<source IP>\": {\"<domain>\": \"<host name>\"}}")
    result: dict[str, dict[str, str]] = {}
    for ip, names in value.items():
        where = f"helo_by_domain[{ip!r}]"
        key = _own_ip(ip, own, where)
        if not isinstance(names, dict) or len(names) > MAX_DOMAINS:
            raise RemoteConfigError(f"{where} must be an object of at most {MAX_DOMAINS} {{\"<domain>\": \"<host name>\"}}")
        result[key] = {_domain(domain, f"{where}[{domain!r}]"): _parse_helo({ip: name}, own)[key]
                       for domain, name in names.items()}
    return result


def _domain(value: Any, where: str) -> str:
    if not isinstance(value, str) or not DOMAIN_RE.fullmatch(value):
        raise RemoteConfigError(f"{where}: {value!r} is not a domain name")
    return value.lower()


def _parse_dkim(value: Any) -> dict[str, tuple[str, str]]:
    if not isinstance(value, dict) or len(value) > MAX_DOMAINS:
        raise RemoteConfigError(f"dkim must be an object of at most {MAX_DOMAINS} "
                                "{\"<domain>\": {\"selector\", \"private_key\"}}")
    keys: dict[str, tuple[str, str]] = {}
    for name, item in value.items():
        where = f"dkim[{name!r}]"
        domain = _domain(name, where)
        if not isinstance(item, dict) or set(item) != {"selector", "private_key"}:
            raise RemoteConfigError(f"{where} must be an object with exactly selector and private_key")
        selector = item["selector"]
        if not isinstance(selector, str) or not SELECTOR_RE.fullmatch(selector):
            raise RemoteConfigError(f"{where}.selector: {selector!r} is not a DNS label")
        pem = item["private_key"]
        if (not isinstance(pem, str) or len(pem) > MAX_KEY_SIZE or not pem.startswith("-----BEGIN ")
                or "PRIVATE KEY-----" not in pem):
            raise RemoteConfigError(f"{where}.private_key is not a PEM private key")  # never echo a key
        if domain in keys:
            raise RemoteConfigError(f"{where}: {domain} is given twice")
        keys[domain] = (selector.lower(), pem if pem.endswith("\n") else pem + "\n")
    return keys


def _parse_bounce_domains(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_DOMAINS:
        raise RemoteConfigError(f"bounce_domains must be a list of at most {MAX_DOMAINS} domain names")
    return tuple(sorted({_domain(name, f"bounce_domains[{i}]") for i, name in enumerate(value)}))


def _ip(text: str) -> str:
    return str(ipaddress.ip_address(text))


def _own_ip(value: Any, own: dict[str, str], where: str) -> str:
    """The node's own spelling of a source IP given in any spelling (``::1`` = ``0::1``)."""
    try:
        normal = _ip(value) if isinstance(value, str) else None
    except ValueError:
        normal = None
    if normal is None:
        raise RemoteConfigError(f"{where}: {value!r} is not an IP address")
    if normal not in own:
        listed = ", ".join(own.values()) or "none configured"
        raise RemoteConfigError(f"{where}: {value} is not a source IP of this node (its source IPs: {listed})")
    return own[normal]


def _parse_rules(value: Any, own: dict[str, str]) -> tuple[RateLimit, ...]:
    if not isinstance(value, list):
        raise RemoteConfigError("rate_limits must be a list of {\"source_ip\", \"domain\", \"per_minute\"}")
    if len(value) > MAX_RULES:
        raise RemoteConfigError(f"rate_limits: at most {MAX_RULES} rules, not {len(value)}")
    rules: list[RateLimit] = []
    seen: dict[tuple[str, str], int] = {}
    for i, item in enumerate(value):
        where = f"rate_limits[{i}]"
        if not isinstance(item, dict) or set(item) != {"source_ip", "domain", "per_minute"}:
            raise RemoteConfigError(f"{where} must be an object with exactly source_ip, domain and per_minute")
        ip = item["source_ip"] if item["source_ip"] == "*" else _own_ip(item["source_ip"], own, f"{where}.source_ip")
        domain = item["domain"]
        if domain != "*" and not (isinstance(domain, str) and DOMAIN_RE.fullmatch(domain)):
            raise RemoteConfigError(f"{where}.domain: {domain!r} is neither \"*\" nor a domain name")
        domain = domain.lower()
        rate = item["per_minute"]
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= MAX_PER_MINUTE:
            raise RemoteConfigError(f"{where}.per_minute must be a number above 0 and at most {MAX_PER_MINUTE}, "
                                    f"not {rate!r}")
        if (ip, domain) in seen:
            raise RemoteConfigError(f"{where}: source_ip {ip} and domain {domain} are already limited by "
                                    f"rate_limits[{seen[ip, domain]}]")
        seen[ip, domain] = i
        rules.append(RateLimit(ip, domain, float(rate)))
    return tuple(rules)


def _parse_helo(value: Any, own: dict[str, str]) -> dict[str, str]:
    if not isinstance(value, dict):
        raise RemoteConfigError("helo must be an object {\"<source IP>\": \"<host name>\"}")
    helo: dict[str, str] = {}
    for ip, name in value.items():
        where = f"helo[{ip!r}]"
        ip = _own_ip(ip, own, where)
        if ip in helo:
            raise RemoteConfigError(f"{where}: {ip} is given twice")
        if not isinstance(name, str) or not HOSTNAME_RE.fullmatch(name):
            raise RemoteConfigError(f"{where}: {name!r} is not a host name (letters, digits, hyphens and dots; "
                                    "no spaces, colons or line breaks)")
        helo[ip] = name.lower()
    return helo


def from_json(data: dict[str, Any]) -> RemoteConfig:
    """A config as stored by ``apply`` (already checked)."""
    rules = tuple(RateLimit(r["source_ip"], r["domain"], float(r["per_minute"])) for r in data["rate_limits"])
    dkim = {domain: (selector, "") for domain, selector in data.get("dkim", {}).items()}
    providers = data.get("providers")
    limits = data.get("provider_limits")
    return RemoteConfig(int(data["version"]), rules, dict(data["helo"]), dkim, tuple(data.get("bounce_domains", ())),
                        {ip: dict(names) for ip, names in data.get("helo_by_domain", {}).items()},
                        None if providers is None else {k: tuple(v) for k, v in providers.items()},
                        None if limits is None else tuple(ProviderLimit(**rule) for rule in limits),
                        tuple(WarmupPlan.from_json(plan) for plan in data.get("warmup", ())))


def stored(queue: QueueDB) -> RemoteConfig | None:
    data = queue.get_state(STATE_KEY)
    return None if data is None else from_json(data)


def stored_version(queue: QueueDB) -> int:
    """The version last applied (0: the panel never pushed one)."""
    return int(queue.get_state(VERSION_KEY) or 0)


def rate_limits(config: AgentConfig, remote: RemoteConfig | None) -> tuple[RateLimit, ...]:
    """The rules in force: the pushed ones once there are any, else the config file's."""
    return config.rate_limits if remote is None else remote.rate_limits


def provider_table(remote: RemoteConfig | None) -> ProviderTable:
    """The table in force: the pushed one, else the built-in one."""
    return ProviderTable(None if remote is None else remote.providers)


def provider_limits(remote: RemoteConfig | None) -> tuple[ProviderLimit, ...]:
    """The limits per (source IP, provider) in force: the pushed ones, else the built-in defaults."""
    return default_limits() if remote is None or remote.provider_limits is None else remote.provider_limits


def warmup_plans(remote: RemoteConfig | None) -> dict[str, WarmupPlan]:
    """The warm-up plans in force, by source IP (none until the panel pushed some)."""
    return {} if remote is None else {plan.source_ip: plan for plan in remote.warmup}


def apply(queue: QueueDB, config: AgentConfig, remote: RemoteConfig) -> None:
    """Write the HELO map, the DKIM keys and map and the bounce domains, then record the config,
    in one queue transaction: if a file cannot be written nothing is recorded (each file is
    replaced by a rename, so Exim sees the old one or the new one)."""
    with queue.write(durable=True) as conn:
        write_helo_map(config.helo_map, remote.helo, remote.helo_by_domain)
        write_dkim(config.dkim_dir, remote.dkim)
        write_file(config.bounce_domains_file, _HEADER + "".join(f"{d}\n" for d in remote.bounce_domains),
                   "bounce domains")
        QueueDB.set_state(conn, STATE_KEY, remote.to_json())
        QueueDB.set_state(conn, VERSION_KEY, remote.version)


_HEADER = "# Written by the Mailfleet agent from the panel's settings; edits are overwritten.\n"


def helo_map_text(helo: dict[str, str], by_domain: dict[str, dict[str, str]] | None = None) -> str:
    """Exim lsearch lines ``"<ip>": <name>`` and ``"<ip>/<domain>": <name>``; keys are quoted
    because IPv6 addresses hold colons."""
    lines = [f'"{ip}": {name}\n' for ip, name in sorted(helo.items())]
    lines += [f'"{ip}/{domain}": {name}\n' for ip, names in sorted((by_domain or {}).items())
              for domain, name in sorted(names.items())]
    return _HEADER + "".join(lines)


def write_helo_map(path: Path, helo: dict[str, str], by_domain: dict[str, dict[str, str]] | None = None) -> None:
    write_file(path, helo_map_text(helo, by_domain), "HELO map")


def write_dkim(directory: Path, keys: dict[str, tuple[str, str]]) -> None:
    """One ``<domain>.key`` per domain (0640, group Debian-exim when it exists) and ``domains``, the
    map Exim reads (``"<domain>": <domain> <selector>``); keys of domains no longer listed go."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o750)
        group = _key_group()
        if group is not None:
            os.chown(directory, -1, group)
    except OSError as exc:
        raise RemoteConfigError(f"cannot prepare the DKIM key directory {directory}: {exc.strerror}") from None
    for domain, (_, pem) in sorted(keys.items()):
        write_file(directory / f"{domain}.key", pem, "DKIM key", mode=0o640, group=_key_group())
    write_file(directory / "domains", _HEADER + "".join(
        f'"{domain}": {domain} {selector}\n' for domain, (selector, _) in sorted(keys.items())), "DKIM map")
    for old in directory.glob("*.key"):
        if old.name[:-4] not in keys:
            with contextlib.suppress(OSError):
                old.unlink()


def _key_group() -> int | None:
    try:
        return grp.getgrnam(KEY_GROUP).gr_gid
    except KeyError:
        return None


def write_file(path: Path, text: str, what: str, mode: int = 0o644, group: int | None = None) -> None:
    """Replace `path` atomically (temporary file, fsync, rename): Exim never reads half of it.
    Readable by everyone by default: Exim's delivery processes run as its own user."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            if group is not None:
                os.fchown(f.fileno(), -1, group)
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise RemoteConfigError(f"cannot write the {what} {path}: {exc.strerror}") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
