"""Where the panel may connect on a tenant's behalf: SSH hosts of servers and DNS servers of domains.

A tenant names a host; the panel resolves it once, checks every address, and then connects to
the checked address only (never the name again: a second lookup could answer differently,
DNS rebinding). Refused: loopback, link-local, unspecified, multicast, reserved addresses and
the networks of the panel's own interfaces (its databases, its daemon's ports), unless the
admin allows a network in ALLOWED_HOST_NETWORKS (MAILFLEET_ALLOWED_HOST_NETWORKS, CIDRs
separated by commas; the local stack and the tests allow their own loopback/test networks).
A DNS server must listen on port 53 unless its address is allowed that way.

Errors say what was refused and why, for the tenant; they never hold what a port answered.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import time
from collections.abc import Iterable

from flask import current_app, has_app_context

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DNS_PORT = 53
_OWN_CACHE_SECONDS = 30.0
_own_cache: tuple[float, list[Network]] | None = None


class HostRefused(Exception):
    """The panel will not connect there; the message says why and what to do."""


def allowed_networks(value: str | Iterable[str] | None = None) -> list[Network]:
    """The admin's allow-list (ALLOWED_HOST_NETWORKS): CIDRs as a comma-separated string or a list."""
    if value is None:
        value = current_app.config.get("ALLOWED_HOST_NETWORKS", "") if has_app_context() else ""
    items = value.split(",") if isinstance(value, str) else list(value)
    networks = []
    for item in (i.strip() for i in items):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"ALLOWED_HOST_NETWORKS: {item!r} is not a network (CIDR such as 10.0.0.0/8)") from None
    return networks


def own_networks() -> list[Network]:
    """The networks of this machine's interfaces (`ip -j addr`), cached for a few seconds."""
    global _own_cache
    now = time.monotonic()
    if _own_cache is not None and now - _own_cache[0] < _OWN_CACHE_SECONDS:
        return _own_cache[1]
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=10, check=True).stdout
        links = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        # Fail closed: without knowing its own networks the panel cannot tell what is internal.
        raise HostRefused("the panel cannot read its own network addresses (is iproute2's `ip` installed?), "
                          "so it connects nowhere; ask the admin") from None
    networks = []
    for link in links:
        for info in link.get("addr_info", []):
            try:
                networks.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
            except (KeyError, ValueError):
                continue
    _own_cache = (now, networks)
    return networks


def _forbidden(address: Address) -> str | None:
    """Why the panel does not connect to this address on its own (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for test, what in ((address.is_loopback, "loopback"), (address.is_link_local, "link-local"),
                       (address.is_unspecified, "unspecified"), (address.is_multicast, "multicast"),
                       (address.is_reserved, "reserved")):
        if test:
            return f"a {what} address"
    if any(address in network for network in own_networks() if network.version == address.version):
        return "in a network of the panel's own"
    return None


def resolve(host: str) -> list[Address]:
    """Every address of `host` (an IP address is itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        raise HostRefused(f"{host} does not resolve to an address: check the name") from None
    seen: list[Address] = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if address not in seen:
            seen.append(address)
    if not seen:
        raise HostRefused(f"{host} does not resolve to an address: check the name")
    return seen


def check(host: str, port: int, *, dns: bool = False, allowed: str | Iterable[str] | None = None) -> str:
    """The address to connect to for `host`:`port`, after checking every address it resolves to.

    `dns`: a DNS server, which must be on port 53 unless its address is allowed.
    HostRefused says why it may not be used.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise HostRefused(f"port {port} is out of range (1-65535)")
    allow = allowed_networks(allowed)
    addresses = resolve(host)
    for address in addresses:
        if any(address in network for network in allow if network.version == address.version):
            continue
        why = _forbidden(address)
        if why is not None:
            shown = host if str(address) == host else f"{host} ({address})"
            raise HostRefused(f"{shown} is {why}, a network the panel does not probe: use the server's public "
                              "address, or ask the admin to allow that network (ALLOWED_HOST_NETWORKS)")
        if dns and port != DNS_PORT:
            raise HostRefused(f"a DNS server must answer on port {DNS_PORT} (not {port}) unless the admin allows "
                              f"its network (ALLOWED_HOST_NETWORKS)")
    return str(addresses[0])


def same_host(host_a: str, port_a: int, host_b: str, port_b: int) -> bool:
    """Whether two SSH endpoints are the same machine as far as the panel can tell: the same port
    and a name or an address in common (a name that does not resolve counts by its name alone)."""
    if port_a != port_b:
        return False
    a, b = host_a.strip().lower().rstrip("."), host_b.strip().lower().rstrip(".")
    if a == b:
        return True

    def addresses(host: str) -> set[Address]:
        try:
            return set(resolve(host))
        except HostRefused:
            return set()

    return bool(addresses(a) & addresses(b))
