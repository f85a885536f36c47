"""Which hosts answer a campaign's tokens: its tracking domains and the panel's public host.

Masked links, the open pixel and unsubscribe links are asked of the host the letter named (the
request's Host header: nginx passes it on). A token asked of any other host — another tenant's
tracking domain, a name pointed at the panel by a stranger — is refused like a forged one, so one
tenant's letters never redirect from another tenant's domain. Hosts compare without case and
without a trailing dot; the links carry no port (tracking domains) or PUBLIC_URL's, so a port is
ignored only when it is the scheme's default (80, 443), as a client may name it or not.

A tracking domain name belongs to one account (services.domains refuses it to the others). Rows
from before that rule, or two adds that raced, may give two accounts the same name: who pointed it
at the panel cannot be told, so it answers neither account's tokens (their public-host links still do).
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from sqlalchemy import and_, bindparam, exists, func, select

from ..models import Domain, campaign_tracking_domains

REMEMBER_FOR = 60.0  # seconds a campaign's hosts are kept (a domain deleted meanwhile answers that much longer)
CACHE_SIZE = 10_000

# A name another account also holds as a tracking domain is left out. No index on lower(name): the
# domains table holds a few rows per account and this runs once per campaign a minute (cached below).
_domain = Domain.__table__
_other = _domain.alias("other")
_CAMPAIGN_HOSTS = (
    select(_domain.c.name)
    .join(campaign_tracking_domains, campaign_tracking_domains.c.domain_id == _domain.c.id)
    .where(campaign_tracking_domains.c.campaign_id == bindparam("campaign_id"))
    .where(~exists().where(and_(func.lower(_other.c.name) == func.lower(_domain.c.name),
                                _other.c.kind == "tracking", _other.c.user_id != _domain.c.user_id)))
)


def normal_host(host: str | None) -> str:
    """`Track.Example.com.:443` → `track.example.com`: no case, no trailing dot, no default port."""
    host = (host or "").strip().lower()
    name, colon, port = host.rpartition(":")
    if colon and port in ("80", "443") and not name.endswith(":"):  # not the tail of a bare IPv6 address
        host = name
    return host.rstrip(".")


class TrackingHosts:
    """One app's answer to "may this host answer this campaign's tokens?", with the hosts of
    campaigns recently asked about remembered (a click needs no query for them)."""

    def __init__(self, public_url: str) -> None:
        self.public = normal_host(urlsplit(public_url).netloc)
        self._known: dict[int, tuple[frozenset[str], float]] = {}

    def allows(self, connection, campaign_id: int, host: str | None, remember: bool = True) -> bool:
        """`connection`: a Connection or Session to read the campaign's tracking domains from."""
        host = normal_host(host)
        if host == self.public:
            return True
        now = time.monotonic()
        known = self._known.get(campaign_id)
        if known is None or known[1] < now:
            hosts = frozenset(normal_host(name) for name in
                              connection.execute(_CAMPAIGN_HOSTS, {"campaign_id": campaign_id}).scalars())
            if remember:  # not a draft's preview: its domains may change at the next save
                if len(self._known) >= CACHE_SIZE:
                    self._known.clear()
                self._known[campaign_id] = (hosts, now + REMEMBER_FOR)
        else:
            hosts = known[0]
        return bool(host) and host in hosts
