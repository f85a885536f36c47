"""Settings the panel pushes at run time (POST /v1/config): rate limits and HELO names.

The panel sends its whole view each time, tagged with a version; the agent checks all of it
(nothing is applied when one item is wrong), writes the HELO map Exim reads, then stores the
config in the queue DB, where the sender process looks for a new version every second.

Precedence: once a config has been pushed, its ``rate_limits`` replace the config file's list
entirely (an empty list means no limits); the file's list applies only to an agent that never
got one. HELO names: the map holds the panel's names; an IP missing from it greets with the name
the Exim configuration was rendered with (Ansible's ``exim_source_ips``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import AgentConfig, RateLimit
from .queue import QueueDB

STATE_KEY = "remote_config"
VERSION_KEY = "config_version"
MAX_RULES = 1000
MAX_PER_MINUTE = 1_000_000
# A host name: labels of letters, digits and hyphens. No whitespace, colon, quote or newline
# can get through, so a name cannot break out of its line in the HELO map.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
DOMAIN_RE = HOSTNAME_RE


class RemoteConfigError(Exception):
    """A pushed config that cannot be applied; the message names the item."""


@dataclass(frozen=True)
class RemoteConfig:
    version: int
    rate_limits: tuple[RateLimit, ...]
    helo: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "rate_limits": [{"source_ip": r.source_ip, "domain": r.domain, "per_minute": r.per_minute}
                            for r in self.rate_limits],
            "helo": dict(self.helo),
        }


def parse(data: Any, source_ips: tuple[str, ...]) -> RemoteConfig:
    """Check a pushed config against this node's source IPs; raise RemoteConfigError naming the item."""
    if not isinstance(data, dict):
        raise RemoteConfigError("the config must be a JSON object {\"version\", \"rate_limits\", \"helo\"}")
    unknown = sorted(set(data) - {"version", "rate_limits", "helo"})
    if unknown:
        raise RemoteConfigError(f"unknown key(s): {', '.join(unknown)} (known: helo, rate_limits, version)")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 2**63:
        raise RemoteConfigError(f"version must be a whole number of 1 or more, not {version!r}")
    own = {_ip(ip): ip for ip in source_ips}
    return RemoteConfig(version, _parse_rules(data.get("rate_limits", []), own), _parse_helo(data.get("helo", {}), own))


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
    return RemoteConfig(int(data["version"]), rules, dict(data["helo"]))


def stored(queue: QueueDB) -> RemoteConfig | None:
    data = queue.get_state(STATE_KEY)
    return None if data is None else from_json(data)


def stored_version(queue: QueueDB) -> int:
    """The version last applied (0: the panel never pushed one)."""
    return int(queue.get_state(VERSION_KEY) or 0)


def rate_limits(config: AgentConfig, remote: RemoteConfig | None) -> tuple[RateLimit, ...]:
    """The rules in force: the pushed ones once there are any, else the config file's."""
    return config.rate_limits if remote is None else remote.rate_limits


def apply(queue: QueueDB, config: AgentConfig, remote: RemoteConfig) -> None:
    """Write the HELO map, then record the config, in one queue transaction: if the map cannot be
    written nothing is recorded (and the old map stays, as the rename never happened)."""
    with queue.write(durable=True) as conn:
        write_helo_map(config.helo_map, remote.helo)
        QueueDB.set_state(conn, STATE_KEY, remote.to_json())
        QueueDB.set_state(conn, VERSION_KEY, remote.version)


def helo_map_text(helo: dict[str, str]) -> str:
    """Exim lsearch lines ``"<ip>": <name>``; the key is quoted because IPv6 addresses hold colons."""
    header = "# Written by the Mailfleet agent from the panel's settings; edits are overwritten.\n"
    return header + "".join(f'"{ip}": {name}\n' for ip, name in sorted(helo.items()))


def write_helo_map(path: Path, helo: dict[str, str]) -> None:
    """Replace the map atomically (temporary file, fsync, rename): Exim never reads half of it.
    Readable by everyone: Exim's delivery processes run as its own user."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(helo_map_text(helo))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise RemoteConfigError(f"cannot write the HELO map {path}: {exc.strerror}") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
