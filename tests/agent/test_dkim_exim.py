"""DKIM keys pushed to a running agent: a real Exim signs each letter with the key of its From
domain, and dkimpy verifies the signature as delivered against the public key published in a real
BIND, with both List-Unsubscribe headers signed. Bounce domains pushed the same way are accepted."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import dkim
import dns.query
import dns.update
import pytest

from devserver.bind import BindServer
from devserver.exim import EXIM_BIN, EXIM_USER, Exim
from devserver.mail_capture import CaptureServer
from panel.services.domains import desired_records, make_dkim_key
from tests.helpers import wait_for
from worker_agent.api import create_app
from worker_agent.setup_node import init_node

from .conftest import make_recipient
from .test_api import Panel
from .test_sender_exim import campaign, make_agent  # noqa: F401  (make_agent is a fixture)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a real Exim and BIND need root")

DOMAIN = "example.com"  # the test campaign's From domain
SECOND = "second.example.com"  # another sending domain (relaxed DMARC alignment with the From domain)
SELECTOR = "mf1"


class FakeDomain:
    """The fields of a panel Domain that desired_records reads."""

    kind = "sending"
    dkim_selector = SELECTOR
    dmarc_policy = "none"
    dmarc_rua = "postmaster@example.com"

    def __init__(self, public_key: str, name: str = DOMAIN) -> None:
        self.dkim_public_key = public_key
        self.name = name


def publish_key(bind: BindServer, name: str) -> str:
    """A key pair for `name`: the public half published in BIND as the panel publishes it."""
    private, public = make_dkim_key()
    update = dns.update.UpdateMessage(DOMAIN, keyring=bind.keyring)
    for record in desired_records(FakeDomain(public, name), ["127.0.0.2"]):  # type: ignore[arg-type]
        if record.name.endswith("._domainkey." + name):
            update.replace(record.name + ".", 300, record.rdtype, *record.values)
    assert dns.query.tcp(update, bind.host, port=bind.port).rcode() == 0
    return private


@pytest.fixture
def bind() -> Iterator[BindServer]:
    with BindServer([DOMAIN]) as server:
        yield server


@pytest.fixture
def dkim_key(bind: BindServer) -> str:
    """The private half of the From domain's key pair, whose public half is published in BIND."""
    return publish_key(bind, DOMAIN)


@pytest.fixture
def node(make_agent: Callable[..., tuple], exim: Exim) -> tuple[Any, Any, Any, Panel]:  # noqa: F811
    """An agent whose files are those the Exim fixture reads (its sender not started), and the panel's side."""
    config, sender, db = make_agent(helo_map=str(exim.helo_map))
    init_node(config)
    sender.log_path.touch()  # the fixture reads the sender's log at the end, started or not
    return config, sender, db, Panel(create_app(config).test_client(), config.read_key())


def test_letters_are_signed_with_the_from_domains_key_and_verify(node, capture: CaptureServer, exim: Exim,
                                                                  bind: BindServer, dkim_key: str) -> None:
    config, sender, db, panel = node
    sender.start()
    status, reply = panel.call("/v1/config", {"version": 1, "rate_limits": [], "helo": {},
                                              "dkim": {DOMAIN: {"selector": SELECTOR, "private_key": dkim_key}}})
    assert status == 200, reply
    key_file = config.dkim_dir / f"{DOMAIN}.key"
    mode = key_file.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o640 and mode.st_gid == int(subprocess.check_output(
        ["id", "-g", EXIM_USER], text=True))
    assert "PRIVATE KEY" not in str(db.get_state("remote_config"))  # the key lives in its file only
    db.queue_batch("b1", campaign(), [make_recipient(1, email="a1@example.org"),
                                      make_recipient(2, email="a2@example.org", source_ip="127.0.0.3")])
    wait_for(lambda: capture.count() == 2, "two signed letters")
    for message in capture.messages():
        raw = message.raw.replace(b"\n", b"\r\n")
        assert dkim.verify(raw, dnsfunc=bind.dkim_dnsfunc), raw[:2000]
        signature = message.message["DKIM-Signature"]
        tags = dict(part.strip().split("=", 1) for part in re.sub(r"\s+", "", str(signature)).split(";") if part)
        assert tags["d"] == DOMAIN and tags["s"] == SELECTOR and tags["a"] == "rsa-sha256"
        signed = {h.lower() for h in tags["h"].split(":")}
        assert {"from", "to", "subject", "date", "message-id", "list-unsubscribe",
                "list-unsubscribe-post"} <= signed, signed
        # Altered after signing: the signature no longer holds.
        assert not dkim.verify(raw.replace(b"Subject: News", b"Subject: Nows", 1), dnsfunc=bind.dkim_dnsfunc)

    # Another From domain has no key: its letters leave unsigned; a key withdrawn is deleted.
    db.queue_batch("b2", campaign(from_email="news@unsigned.example"), [make_recipient(3, email="a3@example.org")])
    wait_for(lambda: capture.count() == 3, "the third letter")
    (third,) = [m for m in capture.messages() if m.rcpt_to == "a3@example.org"]
    assert third.message["DKIM-Signature"] is None
    status, reply = panel.call("/v1/config", {"version": 2, "rate_limits": [], "helo": {}, "dkim": {}})
    assert status == 200 and not key_file.exists()


def test_a_wrong_dkim_item_changes_nothing_and_names_no_key(node, dkim_key: str) -> None:
    config, sender, db, panel = node
    status, reply = panel.call("/v1/config", {"version": 1, "rate_limits": [], "helo": {}, "dkim": {
        DOMAIN: {"selector": SELECTOR, "private_key": dkim_key},
        "bad.example": {"selector": SELECTOR, "private_key": "not a key"}}})
    assert status == 400 and "dkim['bad.example'].private_key is not a PEM private key" in reply["error"]
    assert "not a key" not in reply["error"]
    assert not (config.dkim_dir / f"{DOMAIN}.key").exists()


def test_pushed_bounce_domains_are_accepted_by_exim(node, exim: Exim) -> None:
    config, sender, db, panel = node

    def routes(address: str) -> str:
        result = subprocess.run([EXIM_BIN, "-C", str(exim.config_path), "-bt", address],
                                capture_output=True, text=True, check=False)
        return result.stdout + result.stderr

    assert "mailfleet_bounces" not in routes("bounce+1-abc@bounces.new.example")
    status, _ = panel.call("/v1/config", {"version": 1, "rate_limits": [], "helo": {},
                                          "bounce_domains": ["bounces.new.example"]})
    assert status == 200
    assert "router = mailfleet_bounces" in routes("bounce+1-abc@bounces.new.example")
    assert "router = mailfleet_bounces" in routes(f"bounce+1-abc@{exim.settings.bounce_domains[0]}")  # still


def test_letters_follow_their_sending_domain_and_ip(node, capture: CaptureServer, exim: Exim, bind: BindServer,
                                                     dkim_key: str) -> None:
    """Return-Path, Message-ID, DKIM d= and HELO follow the (IP, domain) pair each letter was given."""
    config, sender, db, panel = node
    second_key = publish_key(bind, SECOND)
    sender.start()
    status, reply = panel.call("/v1/config", {
        "version": 1, "rate_limits": [], "helo": {},
        "dkim": {DOMAIN: {"selector": SELECTOR, "private_key": dkim_key},
                 SECOND: {"selector": SELECTOR, "private_key": second_key}},
        "bounce_domains": [f"bounces.{DOMAIN}", f"bounces.{SECOND}"],
        "helo_by_domain": {ip: {d: f"ip-{ip.replace('.', '-')}.{d}" for d in (DOMAIN, SECOND)}
                           for ip in ("127.0.0.2", "127.0.0.3")}})
    assert status == 200, reply
    pairs = [(ip, d) for ip in ("127.0.0.2", "127.0.0.3") for d in (DOMAIN, SECOND)] * 3
    db.queue_batch("b1", campaign(), [
        make_recipient(n, email=f"r{n}@example.org", source_ip=ip, domain=d, bounce_domain=f"bounces.{d}")
        for n, (ip, d) in enumerate(pairs, start=1)])
    wait_for(lambda: capture.count() == len(pairs), "every letter")
    for n, (ip, d) in enumerate(pairs, start=1):
        (message,) = [m for m in capture.messages() if m.rcpt_to == f"r{n}@example.org"]
        assert (message.peer_ip, message.helo) == (ip, f"ip-{ip.replace('.', '-')}.{d}"), n
        assert message.mail_from == f"bounce+{n}-3f2a9c1b7e@bounces.{d}"
        headers = message.message
        assert headers["Message-ID"].endswith(f"@{d}>")
        assert f"mailto:unsubscribe+{n}-3f2a9c1b7e@bounces.{d}" in str(headers["List-Unsubscribe"])
        assert headers["X-Mailfleet-Domain"] is None  # the control header does not leave the node
        assert f"d={d};" in re.sub(r"\s+", "", str(headers["DKIM-Signature"]))
        assert dkim.verify(message.raw.replace(b"\n", b"\r\n"), dnsfunc=bind.dkim_dnsfunc)
