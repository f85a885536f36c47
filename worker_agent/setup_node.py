"""`init`: the data dir, the Fernet key and the self-signed TLS certificate, made once."""

from __future__ import annotations

import datetime
import grp
import hashlib
import ipaddress
import os
import pwd
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import protocol
from .config import AgentConfig

EXIM_USER = "Debian-exim"  # Exim's pipe transport runs the bounce intake as this user


def init_node(config: AgentConfig) -> dict[str, str]:
    """Create what is missing (never replaces an existing key or cert) and describe the result."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.data_dir, 0o711)  # others may pass through to the bounce spool, not list
    if not config.key_file.exists():
        _write_private(config.key_file, protocol.new_key() + b"\n")
    if not config.cert_file.exists() or not config.cert_key_file.exists():
        key_pem, cert_pem = self_signed_cert(config.hostname, config.listen_host_port[0])
        _write_private(config.cert_key_file, key_pem)
        _write_private(config.cert_file, cert_pem)
    prepare_bounce_spool(config.bounce_spool)
    return {
        "fingerprint": cert_fingerprint(config.cert_file.read_bytes()),
        "key_file": str(config.key_file),
        "cert_file": str(config.cert_file),
    }


def _write_private(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def self_signed_cert(hostname: str, listen_host: str) -> tuple[bytes, bytes]:
    """An EC P-256 key and a 10-year self-signed cert: the panel pins it, so no CA is involved."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64] or "mailfleet-agent")])
    alt: list[x509.GeneralName] = [x509.DNSName(hostname)] if hostname else []
    for host in {listen_host, "127.0.0.1"}:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            pass
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def cert_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the DER certificate, lower-case hex without colons (what the panel pins)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def prepare_bounce_spool(spool: Path) -> None:
    """Maildir-like tmp/ and new/; Exim's user must be able to write them, the agent to delete."""
    for sub in (spool, spool / "tmp", spool / "new"):
        sub.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return  # a non-root agent owns the spool itself; Exim's write access is then the admin's call
    try:
        uid = pwd.getpwnam(EXIM_USER).pw_uid
        gid = grp.getgrnam(EXIM_USER).gr_gid
    except KeyError:
        return
    for sub in (spool, spool / "tmp", spool / "new"):
        os.chown(sub, uid, gid)
        os.chmod(sub, 0o2770)  # setgid: the files keep Exim's group, which the agent reads as root
