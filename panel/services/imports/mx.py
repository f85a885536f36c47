"""The optional check that an address's domain takes mail: an MX record, or else an A/AAAA
record (RFC 5321's implicit MX), looked up once per domain for the whole import.

The resolver is the system's unless IMPORT_DNS_NAMESERVER (and IMPORT_DNS_PORT) name
another, which is how the tests point it at a DNS server of their own.
"""

from __future__ import annotations

from typing import Any, Mapping

import dns.exception
import dns.rdatatype
import dns.resolver

NO_MAIL = "the domain {domain} has no MX or A record: no mail can reach it"
NO_DOMAIN = "the domain {domain} does not exist"
NULL_MX = "the domain {domain} says it takes no mail (null MX)"
NO_ANSWER = ("the domain {domain} could not be checked (its DNS did not answer: {why}); "
             "import these rows again later, or without the MX check")


class MxChecker:
    """reason(domain) -> None when mail can go there, else why not; each domain asked once."""

    def __init__(self, nameserver: str | None = None, port: int = 53, timeout: float = 5.0) -> None:
        self.resolver = dns.resolver.Resolver(configure=not nameserver)
        if nameserver:
            self.resolver.nameservers = [nameserver]
            self.resolver.port = port
        self.resolver.lifetime = timeout
        self.cache: dict[str, str | None] = {}
        self.lookups = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> MxChecker:
        return cls(config.get("IMPORT_DNS_NAMESERVER") or None, int(config.get("IMPORT_DNS_PORT") or 53),
                   float(config.get("IMPORT_DNS_TIMEOUT") or 5.0))

    def reason(self, domain: str) -> str | None:
        if domain not in self.cache:
            self.lookups += 1
            self.cache[domain] = self._look_up(domain)
        return self.cache[domain]

    def _look_up(self, domain: str) -> str | None:
        try:
            answer = self._query(domain, "MX")
            if answer is not None:
                hosts = [str(record.exchange) for record in answer]
                if hosts == ["."]:
                    return NULL_MX.format(domain=domain)
                return None
            for kind in ("A", "AAAA"):
                if self._query(domain, kind) is not None:
                    return None
            return NO_MAIL.format(domain=domain)
        except dns.resolver.NXDOMAIN:
            return NO_DOMAIN.format(domain=domain)
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            why = "timed out" if isinstance(exc, dns.exception.Timeout) else "no server gave an answer"
            return NO_ANSWER.format(domain=domain, why=why)

    def _query(self, domain: str, kind: str) -> Any:
        try:
            return self.resolver.resolve(domain, kind, search=False)
        except dns.resolver.NoAnswer:
            return None
