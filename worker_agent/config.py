"""The agent's settings: one JSON file, named by ``--config`` or $MAILFLEET_AGENT_CONFIG."""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_VAR = "MAILFLEET_AGENT_CONFIG"


class ConfigError(Exception):
    """A config that cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class RateLimit:
    """At most ``per_minute`` letters per (source IP, recipient domain); "*" matches any."""

    source_ip: str
    domain: str
    per_minute: float


@dataclass(frozen=True)
class EximRetries:
    """The sender forces Exim's deferred letters (``command`` + ["-M", id]) through the limits
    (exim_retry.py); Exim's retry rule must then never retry before giving up (docs/shaping.md)."""

    command: tuple[str, ...]
    delays: tuple[int, ...] = (60, 300, 900, 1800, 3600)  # s after attempt 1, 2, … (the last repeats)
    parallel: int = 4  # `exim -M` processes at once


@dataclass(frozen=True)
class AgentConfig:
    data_dir: Path
    key_file: Path
    cert_file: Path
    cert_key_file: Path
    bounce_spool: Path
    exim_mainlog: Path
    exim_spool: Path  # Exim's spool_directory: its queue, searched after a crash (reconcile.py)
    helo_map: Path  # HELO name per source IP, written from the panel's pushes, read by Exim
    dkim_dir: Path  # DKIM private keys and the domain -> selector map, from the panel's pushes
    bounce_domains_file: Path  # the bounce domains Exim accepts besides its configured ones
    listen: str = "127.0.0.1:8443"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_connections: int = 4
    source_ips: tuple[str, ...] = ()
    rate_limits: tuple[RateLimit, ...] = ()
    hostname: str = field(default_factory=socket.gethostname)
    max_attempts: int = 5  # submissions tried per letter before it is reported failed
    key_grace: int = 300  # seconds an old key still opens after the panel first used a new one (keyring.py)
    # DNS server the MX lookups of provider grouping ask (providers.py); None: the system's resolver
    dns_server: str | None = None
    dns_port: int = 53
    # automatic backoff (backoff.py): seconds a throttled (IP, provider) pair sends nothing, and
    # seconds of deliveries per step back up (a tenth of its limit each)
    backoff_cooling: int = 60
    backoff_step_every: int = 60
    exim_retries: EximRetries | None = None  # None: Exim retries on its own schedule
    path: Path | None = None  # the file this came from, so `serve` can hand it on

    @property
    def queue_db(self) -> Path:
        return self.data_dir / "queue.sqlite3"

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    def read_key(self) -> bytes:
        """The newest key (the file may hold older ones while the panel replaces it: keyring.py)."""
        try:
            return (self.key_file.read_bytes().split() or [b""])[0]
        except OSError as exc:
            raise ConfigError(f"cannot read key_file {self.key_file}: {exc.strerror}; run `python -m worker_agent init`") from None

    def rate_for(self, source_ip: str, domain: str) -> float | None:
        """Letters per minute for this pair under the file's rules (see ``rate_for``)."""
        return rate_for(self.rate_limits, source_ip, domain)


def rate_for(rules: tuple[RateLimit, ...], source_ip: str, domain: str) -> float | None:
    """Letters per minute for this pair: the most specific rule wins, None = unlimited."""
    best: tuple[int, float] | None = None
    for rule in rules:
        if rule.source_ip not in ("*", source_ip) or rule.domain not in ("*", domain):
            continue
        rank = (rule.source_ip != "*") * 2 + (rule.domain != "*")
        if best is None or rank > best[0]:
            best = (rank, rule.per_minute)
    return None if best is None else best[1]


def config_path_from(arg: str | None) -> Path:
    raw = arg or os.environ.get(ENV_VAR)
    if not raw:
        raise ConfigError(f"no config file: pass --config PATH or set {ENV_VAR}")
    return Path(raw)


def load_config(path: str | os.PathLike[str] | None = None) -> AgentConfig:
    """Read and check the config; raise ConfigError (never a traceback) when unusable."""
    file = config_path_from(str(path) if path is not None else None).absolute()
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"config file {file} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {file} must hold a JSON object")
    return parse_config(raw, base=file.parent, path=file)


_KNOWN = {
    "data_dir", "key_file", "cert_file", "cert_key_file", "bounce_spool", "exim_mainlog", "helo_map", "dkim_dir",
    "bounce_domains_file", "listen", "exim_spool",
    "smtp_host", "smtp_port", "smtp_connections", "source_ips", "rate_limits", "hostname", "max_attempts",
    "key_grace", "dns_server", "backoff_cooling", "backoff_step_every",
    "exim_retries",
}


def parse_config(raw: dict[str, Any], *, base: Path, path: Path | None = None) -> AgentConfig:
    unknown = sorted(set(raw) - _KNOWN)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)} (known: {', '.join(sorted(_KNOWN))})")
    if not isinstance(raw.get("data_dir"), str) or not raw["data_dir"]:
        raise ConfigError("config needs \"data_dir\": the directory for the queue database and keys")

    def a_path(key: str, default: Path) -> Path:
        value = raw.get(key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config \"{key}\" must be a path string")
        return (base / value).absolute()  # relative paths are relative to the config file

    def an_int(key: str, default: int, low: int, high: int) -> int:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"config \"{key}\" must be a whole number from {low} to {high}, not {value!r}")
        return value

    data_dir = a_path("data_dir", base)
    listen = raw.get("listen", "127.0.0.1:8443")
    if not isinstance(listen, str) or not listen.rpartition(":")[2].isdigit():
        raise ConfigError(f"config \"listen\" must look like \"127.0.0.1:8443\", not {listen!r}")
    source_ips = raw.get("source_ips", [])
    if not isinstance(source_ips, list) or not all(isinstance(ip, str) for ip in source_ips):
        raise ConfigError("config \"source_ips\" must be a list of IP address strings")
    for ip in source_ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ConfigError(f"config \"source_ips\": {ip!r} is not an IP address") from None
    hostname = raw.get("hostname") or socket.gethostname()
    if not isinstance(hostname, str):
        raise ConfigError("config \"hostname\" must be a string")
    smtp_host = raw.get("smtp_host", "127.0.0.1")
    if not isinstance(smtp_host, str) or not smtp_host:
        raise ConfigError("config \"smtp_host\" must be a host name or address")
    helo_map = a_path("helo_map", data_dir / "helo-map")
    return AgentConfig(
        data_dir=data_dir,
        key_file=a_path("key_file", data_dir / "agent.key"),
        cert_file=a_path("cert_file", data_dir / "agent-cert.pem"),
        cert_key_file=a_path("cert_key_file", data_dir / "agent-cert-key.pem"),
        bounce_spool=a_path("bounce_spool", data_dir / "bounces"),
        exim_mainlog=a_path("exim_mainlog", Path("/var/log/exim4/mainlog")),
        exim_spool=a_path("exim_spool", Path("/var/spool/exim4")),
        helo_map=helo_map,
        # Next to the HELO map by default, where the Exim role's defaults look for them too.
        dkim_dir=a_path("dkim_dir", helo_map.parent / "dkim"),
        bounce_domains_file=a_path("bounce_domains_file", helo_map.parent / "bounce-domains"),
        listen=listen,
        smtp_host=smtp_host,
        smtp_port=an_int("smtp_port", 25, 1, 65535),
        smtp_connections=an_int("smtp_connections", 4, 1, 64),
        source_ips=tuple(source_ips),
        rate_limits=_rate_limits(raw.get("rate_limits")),
        hostname=hostname,
        max_attempts=an_int("max_attempts", 5, 1, 100),
        key_grace=an_int("key_grace", 300, 0, 86400),
        backoff_cooling=an_int("backoff_cooling", 60, 1, 3600),
        backoff_step_every=an_int("backoff_step_every", 60, 1, 3600),
        exim_retries=_exim_retries(raw.get("exim_retries")),
        **_dns_server(raw.get("dns_server")),
        path=path,
    )


def _dns_server(value: Any) -> dict[str, Any]:
    """``"192.0.2.53"``, ``"127.0.0.1:5353"`` or ``"[::1]:53"``: an IP address and an optional port."""
    if value is None:
        return {}
    host, port = (value if isinstance(value, str) else ""), "53"
    if isinstance(value, str) and (value.startswith("[") or value.count(":") == 1):
        host, _, port = value.rpartition(":")
        host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        number = int(port)
        if not 1 <= number <= 65535:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"config \"dns_server\" must be an IP address with an optional port "
                          f"(\"127.0.0.1:5353\", \"[::1]:53\"), not {value!r}") from None
    return {"dns_server": host, "dns_port": number}


def _exim_retries(value: Any) -> EximRetries | None:
    """``{"command": ["/usr/sbin/exim4"], "delays": [60, 300], "parallel": 4}``; null: off."""
    if value is None:
        return None
    usage = ('config "exim_retries" must be {"command": ["/usr/sbin/exim4", …], "delays": [seconds, …], '
             '"parallel": 1-32} or null')
    if not isinstance(value, dict) or set(value) - {"command", "delays", "parallel"}:
        raise ConfigError(usage)
    command, delays = value.get("command"), value.get("delays", list(EximRetries.delays))
    parallel = value.get("parallel", EximRetries.parallel)
    if not (isinstance(command, list) and command and all(isinstance(c, str) and c for c in command)
            and isinstance(delays, list) and delays
            and all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 86400 for d in delays)
            and isinstance(parallel, int) and not isinstance(parallel, bool) and 1 <= parallel <= 32):
        raise ConfigError(usage)
    return EximRetries(tuple(command), tuple(delays), parallel)


def _rate_limits(value: Any) -> tuple[RateLimit, ...]:
    """``[{"source_ip": "*", "domain": "gmail.com", "per_minute": 600}, …]``; missing keys mean "*"."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("config \"rate_limits\" must be a list of {\"source_ip\", \"domain\", \"per_minute\"}")
    rules = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) - {"source_ip", "domain", "per_minute"}:
            raise ConfigError(f"config \"rate_limits\"[{i}] must be {{\"source_ip\", \"domain\", \"per_minute\"}}")
        rate = item.get("per_minute")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0:
            raise ConfigError(f"config \"rate_limits\"[{i}].per_minute must be a number above 0")
        ip, domain = item.get("source_ip", "*"), item.get("domain", "*")
        if not isinstance(ip, str) or not isinstance(domain, str):
            raise ConfigError(f"config \"rate_limits\"[{i}]: source_ip and domain must be strings")
        rules.append(RateLimit(ip, domain.lower(), float(rate)))
    return tuple(rules)
