"""Sending and tracking domains: their DNS records, published by RFC 2136 updates signed with
the user's TSIG key, and checked against what the user's DNS server serves.

For a sending domain D and every source IP of the user's servers (an inactive one too: it gets no new
letters, but those already given to it still go out from it):
- ``ip-a-b-c-d.D`` A (AAAA for IPv6): the IP's host name, its HELO name when sending for D;
- ``bounces.D`` MX 10 to each of those hosts: the Return-Path domain, where bounces come back;
- ``D`` and ``bounces.D`` TXT ``v=spf1 ip4:… -all``: every source IP may send for them;
- ``<selector>._domainkey.D`` TXT ``v=DKIM1; k=rsa; p=…``: the public half of the domain's key;
- ``_dmarc.D`` TXT ``v=DMARC1; p=none; rua=mailto:<the user>``.
A tracking domain gets an A (or CNAME) record pointing at the panel's public host.

Each RRset is replaced whole (delete, then add: the same update twice changes nothing); RRsets
published before and no longer wanted (an IP removed) are deleted in the same update. PTR
records belong to whoever owns the IPs (the hosting provider): the page checks them only.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename
import dns.tsig
import dns.tsigkeyring
import dns.update
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select

from ..extensions import db
from ..models import DMARC_POLICIES, DOMAIN_KINDS, TSIG_ALGORITHMS, Domain, Server, ServerIP, User
from ..models.base import utcnow
from ..models.domain import bounce_domain_of
from . import network_policy, secret_box, server_config
from .servers import HOSTNAME_RE

TTL = 300
DNS_TIMEOUT = 5.0
DKIM_BITS = 2048
SELECTOR_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
EMAIL_RE = re.compile(r"[^@\s<>\"]+@[A-Za-z0-9.-]+")


class DomainError(Exception):
    """A request about domains that cannot be carried out; the message says why and what to do."""


class DomainTaken(DomainError):
    """The user already has a domain of that name (or another account has it as a tracking domain)."""


@dataclass(frozen=True)
class DomainInput:
    name: str
    dns_host: str
    tsig_name: str
    tsig_secret: str
    kind: str = "sending"
    zone: str = ""  # empty: the name itself
    dns_port: int = 53
    tsig_algorithm: str = "hmac-sha256"
    dkim_selector: str = "mailfleet"
    dmarc_policy: str = "none"
    dmarc_rua: str = ""  # empty: the user's address


@dataclass(frozen=True)
class Record:
    """One wanted RRset: absolute name (no trailing dot), type, values in zone-file text."""

    name: str
    rdtype: str
    values: tuple[str, ...]
    purpose: str

    def rdatas(self) -> set[dns.rdata.Rdata]:
        return {dns.rdata.from_text(dns.rdataclass.IN, self.rdtype, v, origin=dns.name.root, relativize=False)
                for v in self.values}


@dataclass(frozen=True)
class RecordCheck:
    record: Record
    state: str  # ok | missing | different | unknown
    found: tuple[str, ...]
    detail: str = ""


@dataclass(frozen=True)
class ReverseCheck:
    ip: str
    host: str
    ptr: tuple[str, ...]
    forward: tuple[str, ...]
    state: str  # ok | missing | different | unknown
    detail: str


# -- the user's domains ----------------------------------------------------------------------

def user_domains(user: User) -> list[Domain]:
    return list(db.session.scalars(select(Domain).where(Domain.user_id == user.id).order_by(Domain.name)))


def get_domain(user: User, domain_id: int) -> Domain | None:
    """The user's domain with this id; None for a missing one or another user's."""
    domain = db.session.get(Domain, domain_id)
    return domain if domain is not None and domain.user_id == user.id else None


def _check_name(value: str, what: str) -> str:
    name = value.strip().lower().rstrip(".")
    if not name or not HOSTNAME_RE.fullmatch(name) or "." not in name:
        raise DomainError(f"{what}: {value.strip()!r} is not a domain name (e.g. example.com)")
    return name


def _check_input(user: User, data: DomainInput) -> dict:
    name = _check_name(data.name, "domain")
    if data.kind not in DOMAIN_KINDS:
        raise DomainError(f"kind must be one of {', '.join(DOMAIN_KINDS)}")
    zone = _check_name(data.zone, "zone") if data.zone.strip() else name
    if not (name == zone or name.endswith("." + zone)):
        raise DomainError(f"the zone {zone} does not hold {name}: give the zone the domain is in (e.g. {name.split('.', 1)[-1]})")
    host = data.dns_host.strip()
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError:
        if not HOSTNAME_RE.fullmatch(host):
            raise DomainError(f"DNS server: {host!r} is neither an IP address nor a host name") from None
    if isinstance(data.dns_port, bool) or not isinstance(data.dns_port, int) or not 1 <= data.dns_port <= 65535:
        raise DomainError("DNS server port must be a number from 1 to 65535")
    _dns_address(host, data.dns_port)  # refused before anything is stored or sent (network_policy)
    tsig_name = data.tsig_name.strip().rstrip(".")
    if not tsig_name or not HOSTNAME_RE.fullmatch(tsig_name):
        raise DomainError(f"TSIG key name: {tsig_name!r} is not a key name (letters, digits, hyphens, dots)")
    if data.tsig_algorithm not in TSIG_ALGORITHMS:
        raise DomainError(f"TSIG algorithm must be one of {', '.join(TSIG_ALGORITHMS)}")
    secret = data.tsig_secret.strip()
    try:
        dns.tsigkeyring.from_text({tsig_name: (data.tsig_algorithm, secret)})
        if not secret:
            raise ValueError
    except Exception:  # noqa: BLE001 (dnspython raises binascii.Error, ValueError …)
        raise DomainError("TSIG secret: not a base64 secret (as in the key file's secret \"…\" line)") from None
    selector = data.dkim_selector.strip().lower()
    if not SELECTOR_RE.fullmatch(selector):
        raise DomainError(f"DKIM selector: {selector!r} is not a DNS label (letters, digits, hyphens)")
    if data.dmarc_policy not in DMARC_POLICIES:
        raise DomainError(f"DMARC policy must be one of {', '.join(DMARC_POLICIES)}")
    rua = data.dmarc_rua.strip() or user.email
    if not EMAIL_RE.fullmatch(rua):
        raise DomainError(f"DMARC reports: {rua!r} is not an e-mail address")
    return dict(name=name, kind=data.kind, zone=zone, dns_host=host, dns_port=data.dns_port, tsig_name=tsig_name,
                tsig_algorithm=data.tsig_algorithm, tsig_secret=secret, dkim_selector=selector,
                dmarc_policy=data.dmarc_policy, dmarc_rua=rua)


def make_dkim_key() -> tuple[str, str]:
    """A fresh RSA key pair: (private key PEM, public key as base64 DER for the TXT record's p=)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=DKIM_BITS)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(public).decode()


def add_domain(user: User, data: DomainInput) -> Domain:
    """Check and store a domain (a sending domain gets its DKIM key pair); publish() sends its records."""
    values = _check_input(user, data)
    if db.session.scalar(select(Domain.id).where(Domain.user_id == user.id, Domain.name == values["name"])):
        raise DomainTaken(f"you already have the domain {values['name']}")
    if values["kind"] == "tracking" and _tracking_elsewhere(user.id, values["name"]):
        raise DomainTaken(
            f"{values['name']} is already a tracking domain of another account on this panel, and a tracking "
            "domain answers the links of one account only. If the name is yours, ask the panel's administrator "
            "to remove it from the other account; otherwise choose a name under a domain of your own "
            "(e.g. click.<your domain>)")
    values["tsig_secret"] = secret_box.seal(values["tsig_secret"])
    domain = Domain(user_id=user.id, **values)
    if domain.kind == "sending":
        private, public = make_dkim_key()
        domain.dkim_private_key = secret_box.seal(private)
        domain.dkim_public_key = public
    else:
        domain.dkim_selector = None
    db.session.add(domain)
    if domain.kind == "sending":
        server_config.bump_user_servers(user.id)  # the workers get its DKIM key and bounce domain
    db.session.flush()
    return domain


def _tracking_elsewhere(user_id: int, name: str) -> bool:
    """Whether another account holds `name` (normal form) as a tracking domain. Its tokens answer on
    the hosts of the name, so a second holder would answer on a host the first pointed at the panel.
    Two adds racing past this check are caught when answering: tracking_hosts serves neither."""
    return db.session.scalar(select(Domain.id).where(
        func.lower(Domain.name) == name, Domain.kind == "tracking", Domain.user_id != user_id).limit(1)) is not None


def dkim_private_key(domain: Domain) -> str | None:
    """The domain's DKIM private key (PEM), for the workers only."""
    return secret_box.unseal(domain.dkim_private_key) if domain.dkim_private_key else None


# -- the records ---------------------------------------------------------------------------

def host_label(ip: str) -> str:
    """The label of an IP's host name: ip-10-0-0-1, or ip6-2001-0db8-…-0001 for IPv6."""
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        return "ip-" + str(address).replace(".", "-")
    return "ip6-" + address.exploded.replace(":", "-")


def host_name(domain: Domain | str, ip: str) -> str:
    """The host name (and HELO name) of `ip` in a sending domain."""
    return f"{host_label(ip)}.{domain if isinstance(domain, str) else domain.name}"


def user_ips(user_id: int) -> list[str]:
    """Every source IP of the user's servers, active or not, each once, in a stable order."""
    rows = db.session.scalars(
        select(ServerIP.ip).join(Server, Server.id == ServerIP.server_id)
        .where(Server.user_id == user_id).order_by(ServerIP.ip)
    ).all()
    return sorted(set(rows), key=lambda ip: (ipaddress.ip_address(ip).version, ipaddress.ip_address(ip)))


def _txt(text: str) -> str:
    """A TXT value in zone-file form, split into strings of at most 255 characters."""
    return " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))


def spf_text(ips: list[str]) -> str:
    mechanisms = [f"ip{ipaddress.ip_address(ip).version}:{ip}" for ip in ips]
    return " ".join(["v=spf1", *mechanisms, "-all"])


def desired_records(domain: Domain, ips: list[str], public_url: str = "") -> list[Record]:
    """The RRsets the domain should have, given the user's source IPs (and, for a tracking
    domain, the panel's public URL)."""
    name = domain.name
    if domain.kind == "tracking":
        host = urlsplit(public_url).hostname or ""
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return [Record(name, "CNAME", (host.rstrip(".") + ".",), "points the tracking links at the panel")]
        return [Record(name, "A" if address.version == 4 else "AAAA", (str(address),),
                       "points the tracking links at the panel")]
    records: list[Record] = []
    for ip in ips:
        version = ipaddress.ip_address(ip).version
        records.append(Record(host_name(name, ip), "A" if version == 4 else "AAAA", (ip,),
                              f"host name of {ip}: its HELO name when sending for {name}"))
    bounce = bounce_domain_of(name)
    if ips:
        records.append(Record(bounce, "MX", tuple(f"10 {host_name(name, ip)}." for ip in ips),
                              "bounces come back to the workers"))
    spf = _txt(spf_text(ips))
    records.append(Record(name, "TXT", (spf,), "SPF: the source IPs may send as this domain"))
    records.append(Record(bounce, "TXT", (spf,), "SPF of the Return-Path domain"))
    if domain.dkim_selector and domain.dkim_public_key:
        records.append(Record(f"{domain.dkim_selector}._domainkey.{name}", "TXT",
                              (_txt(f"v=DKIM1; k=rsa; p={domain.dkim_public_key}"),),
                              "DKIM public key: receivers check the letters' signatures with it"))
    rua = f"; rua=mailto:{domain.dmarc_rua}" if domain.dmarc_rua else ""
    records.append(Record(f"_dmarc.{name}", "TXT", (_txt(f"v=DMARC1; p={domain.dmarc_policy}{rua}"),),
                          f"DMARC: policy {domain.dmarc_policy}, reports to {domain.dmarc_rua or 'nobody'}"))
    return records


def domain_records(domain: Domain, public_url: str = "") -> list[Record]:
    return desired_records(domain, user_ips(domain.user_id), public_url)


# -- sending updates ---------------------------------------------------------------------------

def _keyring(domain: Domain) -> dict:
    return dns.tsigkeyring.from_text({domain.tsig_name: (domain.tsig_algorithm, secret_box.unseal(domain.tsig_secret))})


def refusal(rcode: int, *, server: str, zone: str, key: str | None) -> str:
    """What a DNS server's answer code to an update means, in plain words."""
    signed = f"the key {key}" if key else "an unsigned update"
    meanings = {
        dns.rcode.REFUSED: f"refused the update (REFUSED): {signed} may not change the zone {zone}. "
                           "Allow the key in the zone's update-policy (BIND: grant KEY zonesub ANY;)",
        dns.rcode.NOTAUTH: f"is not authoritative for the zone {zone} (NOTAUTH): check the zone's name and the server",
        dns.rcode.NOTZONE: f"says a name is outside the zone {zone} (NOTZONE): check the zone's name",
        dns.rcode.SERVFAIL: "failed to apply the update (SERVFAIL): see the DNS server's log",
        dns.rcode.NOTIMP: "does not take dynamic updates (NOTIMP)",
    }
    return f"The DNS server {server} " + meanings.get(rcode, f"answered {dns.rcode.to_text(rcode)}")


def _dns_address(host: str, port: int) -> str:
    """The checked address to send to (network_policy: never loopback, link-local, the panel's own
    networks or a port other than 53 unless the admin allows it); DomainError otherwise."""
    try:
        return network_policy.check(host, port, dns=True)
    except network_policy.HostRefused as exc:
        raise DomainError(f"DNS server: {exc}") from None


def send_update(update: dns.update.UpdateMessage, address: str, port: int, *, zone: str, key: str | None,
                name: str | None = None) -> None:
    """Send one update over TCP to `address` (checked by the caller: _dns_address); DomainError in
    plain words if it was not applied. The messages name what failed, never what the port sent back."""
    server = f"{name or address} port {port}"
    try:
        reply = dns.query.tcp(update, address, port=port, timeout=DNS_TIMEOUT)
    except dns.tsig.PeerBadSignature:
        raise DomainError(f"The DNS server {server} refused the update's signature (BADSIG): the TSIG secret "
                          f"does not match the key {key} on the server. Enter the key's secret again") from None
    except dns.tsig.PeerBadKey:
        raise DomainError(f"The DNS server {server} does not know the TSIG key {key} (BADKEY): check the key's "
                          "name and algorithm against the server's key file") from None
    except dns.tsig.PeerBadTime:
        raise DomainError(f"The DNS server {server} refused the update's time (BADTIME): the clocks of the panel "
                          "and the DNS server differ by more than five minutes") from None
    except dns.tsig.PeerError:
        raise DomainError(f"The DNS server {server} refused the update's TSIG signature") from None
    except dns.exception.Timeout:
        raise DomainError(f"The DNS server {server} did not answer within {DNS_TIMEOUT:g} s: check the address "
                          "and that TCP port is open to the panel") from None
    except (OSError, EOFError):
        raise DomainError(f"The DNS server {server} could not be reached over TCP: check the address and "
                          "port, and that it takes TCP from the panel") from None
    except dns.exception.DNSException:
        raise DomainError(f"The DNS server {server} gave an answer that is not DNS: check the address and port") from None
    if reply.rcode() != dns.rcode.NOERROR:
        raise DomainError(refusal(reply.rcode(), server=server, zone=zone, key=key))


def _relative(domain: Domain, name: str) -> dns.name.Name:
    return dns.name.from_text(name).relativize(dns.name.from_text(domain.zone))


def _published(domain: Domain) -> set[tuple[str, str]]:
    try:
        return {(n, t) for n, t in json.loads(domain.published or "[]")}
    except (ValueError, TypeError):
        return set()


def records_digest(records: list[Record]) -> str:
    return hashlib.sha256(json.dumps(sorted([r.name, r.rdtype, sorted(r.values)] for r in records)).encode()).hexdigest()


def publish(domain: Domain, public_url: str = "") -> bool:
    """Send the domain's records in one signed update (RRsets no longer wanted deleted, every
    wanted one replaced). Records the outcome on the domain (state, error); True if applied."""
    records = domain_records(domain, public_url)
    wanted = {(r.name, r.rdtype) for r in records}
    domain.dns_attempt_at = utcnow()
    try:
        update = dns.update.UpdateMessage(domain.zone, keyring=_keyring(domain))
        for name, rdtype in sorted(_published(domain) - wanted):
            update.delete(_relative(domain, name), rdtype)
        for record in records:
            update.replace(_relative(domain, record.name), TTL, record.rdtype, *record.values)
        send_update(update, _dns_address(domain.dns_host, domain.dns_port), domain.dns_port, zone=domain.zone,
                    key=domain.tsig_name, name=domain.dns_host)
    except (DomainError, secret_box.SecretBoxError) as exc:
        domain.dns_state = "failed"
        domain.dns_error = str(exc)
        db.session.flush()
        return False
    domain.published = json.dumps(sorted([list(item) for item in wanted]))
    domain.published_digest = records_digest(records)
    domain.dns_state = "published"
    domain.dns_error = None
    db.session.flush()
    return True


def unpublish(domain: Domain, public_url: str = "") -> None:
    """Delete every RRset Mailfleet published (or would publish) for the domain; DomainError if refused."""
    names = _published(domain) | {(r.name, r.rdtype) for r in domain_records(domain, public_url)}
    update = dns.update.UpdateMessage(domain.zone, keyring=_keyring(domain))
    for name, rdtype in sorted(names):
        update.delete(_relative(domain, name), rdtype)
    send_update(update, _dns_address(domain.dns_host, domain.dns_port), domain.dns_port, zone=domain.zone,
                key=domain.tsig_name, name=domain.dns_host)


def delete_domain(user: User, domain: Domain, public_url: str = "", *, keep_records: bool = False) -> None:
    """Remove the domain's records from its DNS server, then forget it. If the server refuses,
    nothing is forgotten (DomainError) unless `keep_records` says to leave the records behind."""
    if domain.user_id != user.id:
        raise DomainError("there is no such domain")
    if not keep_records:
        unpublish(domain, public_url)
    if domain.kind == "sending":
        server_config.bump_user_servers(user.id)
    db.session.delete(domain)
    db.session.flush()


def publish_stale(public_url: str = "", retry_after: float = 60.0) -> int:
    """The daemon's part: publish every domain whose wanted records differ from those last
    published (the user added or removed an IP; a new domain), a failed one again after
    `retry_after` seconds. Returns how many updates were applied."""
    applied = 0
    now = utcnow()
    ips_of: dict[int, list[str]] = {}
    for domain in db.session.scalars(select(Domain).order_by(Domain.id)).all():
        ips = ips_of.setdefault(domain.user_id, user_ips(domain.user_id))
        if records_digest(desired_records(domain, ips, public_url)) == domain.published_digest:
            continue
        if (domain.dns_state == "failed" and domain.dns_attempt_at is not None
                and (now - domain.dns_attempt_at).total_seconds() < retry_after):
            continue
        if domain.dns_state == "published":
            domain.dns_state = "pending"
        applied += publish(domain, public_url)
    return applied


# -- checking what the DNS serves ------------------------------------------------------------

def _ask(name: str, rdtype: str, address: str, port: int) -> set[dns.rdata.Rdata]:
    query = dns.message.make_query(name, rdtype)
    reply = dns.query.tcp(query, address, port=port, timeout=DNS_TIMEOUT)
    return {rd for rrset in reply.answer if rrset.rdtype == dns.rdatatype.from_text(rdtype) for rd in rrset}


def check_records(domain: Domain, public_url: str = "") -> list[RecordCheck]:
    """Each wanted RRset against what the domain's DNS server answers (asked directly)."""
    checks = []
    try:
        address = _dns_address(domain.dns_host, domain.dns_port)
    except DomainError as exc:
        return [RecordCheck(record, "unknown", (), str(exc)) for record in domain_records(domain, public_url)]
    for record in domain_records(domain, public_url):
        try:
            found = _ask(record.name, record.rdtype, address, domain.dns_port)
        except dns.exception.Timeout:
            checks.append(RecordCheck(record, "unknown", (), f"the DNS server did not answer within {DNS_TIMEOUT:g} s"))
            continue
        except (dns.exception.DNSException, OSError, EOFError):
            checks.append(RecordCheck(record, "unknown", (), "the DNS server could not be asked over TCP "
                                      "(no DNS answer on that address and port)"))
            continue
        texts = tuple(sorted(rd.to_text() for rd in found))
        if not found:
            checks.append(RecordCheck(record, "missing", texts, "not published"))
        elif found == record.rdatas():
            checks.append(RecordCheck(record, "ok", texts, "published"))
        else:
            checks.append(RecordCheck(record, "different", texts, "the server has other values"))
    return checks


def _resolver(nameserver: str) -> dns.resolver.Resolver:
    """The resolver for reverse lookups: `host[:port]` (setting DNS_RESOLVER), or the system's."""
    if not nameserver:
        return dns.resolver.Resolver()
    resolver = dns.resolver.Resolver(configure=False)
    host, _, port = nameserver.rpartition(":") if nameserver.count(":") == 1 else (nameserver, "", "")
    resolver.nameservers = [host]
    resolver.port = int(port) if port else 53
    return resolver


def check_reverse(domain: Domain, nameserver: str = "") -> list[ReverseCheck]:
    """Forward-confirmed reverse DNS of every source IP: the PTR of the IP must name its host
    name in this domain, and that name's A/AAAA record must give the IP back."""
    if domain.kind != "sending":
        return []
    resolver = _resolver(nameserver)
    resolver.lifetime = DNS_TIMEOUT
    results = []
    for ip in user_ips(domain.user_id):
        host = host_name(domain, ip)
        try:
            ptr = tuple(sorted(rd.target.to_text().rstrip(".").lower()
                               for rd in resolver.resolve(dns.reversename.from_address(ip), "PTR")))
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            ptr = ()
        except dns.exception.DNSException as exc:
            results.append(ReverseCheck(ip, host, (), (), "unknown", f"the reverse lookup failed: {exc}"))
            continue
        rdtype = "A" if ipaddress.ip_address(ip).version == 4 else "AAAA"
        try:
            forward = tuple(sorted(rd.to_text() for rd in _ask(host, rdtype, domain.dns_host, domain.dns_port)))
        except (dns.exception.DNSException, OSError, EOFError):
            forward = ()
        if not ptr:
            state, detail = "missing", (f"{ip} has no PTR record. Only the owner of the IP can set it: ask your "
                                        f"hosting provider to set the reverse DNS (PTR) of {ip} to {host}")
        elif host not in ptr:
            state, detail = "different", (f"the PTR of {ip} names {', '.join(ptr)}, not {host}: ask your hosting "
                                          f"provider to change the reverse DNS (PTR) of {ip} to {host}")
        elif ip not in forward:
            state, detail = "different", (f"the PTR of {ip} names {host}, but {host} does not resolve to {ip} "
                                          "yet: publish the domain's records")
        else:
            state, detail = "ok", f"forward and reverse DNS agree: {ip} ⇄ {host}"
        results.append(ReverseCheck(ip, host, ptr, forward, state, detail))
    return results
