"""Sending domains through the real system: two domains added on the panel's Domains page publish
their records in a real BIND; the daemon pushes their DKIM keys, bounce domains and HELO names to
the running agent; a campaign sending for both domains from both IPs delivers letters whose
Return-Path domain and HELO follow each letter's (IP, domain) pair and whose DKIM signature
dkimpy verifies against the key published in BIND."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import dkim
import pytest
import requests

from devserver.bind import BindServer
from tests.helpers import wait_for

from .conftest import Api
from .test_remote_config_end_to_end import CSRF_RE, server_row, web  # noqa: F401  (web is a fixture)

DOMAINS = ("mail-one.test", "mail-two.test")


@pytest.fixture(scope="module")
def bind() -> Iterator[BindServer]:
    with BindServer(list(DOMAINS)) as server:
        yield server


def add_domain(stack, web: requests.Session, bind: BindServer, name: str) -> int:  # noqa: F811
    page = web.get(stack.panel_url + "/domains/", timeout=30).text
    answer = web.post(stack.panel_url + "/domains/", timeout=30, allow_redirects=False, data={
        "csrf_token": CSRF_RE.search(page).group(1), "name": name, "kind": "sending", "zone": "",
        "dns_host": bind.host, "dns_port": bind.port, "tsig_name": bind.key_name,
        "tsig_algorithm": bind.algorithm, "tsig_secret": bind.secret, "dkim_selector": "mf",
        "dmarc_policy": "none", "dmarc_rua": ""})
    assert answer.status_code == 302, answer.text
    return int(answer.headers["Location"].rstrip("/").rsplit("/", 1)[1])


def test_letters_leave_for_their_domain_and_ip_signed(stack, web, api: Api, bind: BindServer,  # noqa: F811
                                                      panel_rows) -> None:
    domain_ids = [add_domain(stack, web, bind, name) for name in DOMAINS]
    for name in DOMAINS:
        assert bind.query(f"mf._domainkey.{name}", "TXT"), name  # published at once
        assert bind.query(f"bounces.{name}", "MX")
    # The daemon pushes the keys, bounce domains and HELO names: the agent holds the new version.
    wait_for(lambda: server_row(stack, panel_rows)[0] == server_row(stack, panel_rows)[1] > 0,
             "the agent to hold the settings with the domains", timeout=30)

    emails = [f"reader{n}@recipients.example" for n in range(16)]
    list_id = api.post("/lists", {"name": "domains e2e"})["id"]
    api.post(f"/lists/{list_id}/recipients", [{"email": e} for e in emails])
    campaign = api.post("/campaigns", {"name": "domains e2e", "subject": "Hello", "from_email": "news@mail-one.test",
                                       "text": "Hi\n{{ unsubscribe_url }}\n", "lists": [list_id],
                                       "domains": domain_ids})
    api.post(f"/campaigns/{campaign['id']}/start", {})
    wait_for(lambda: len([m for m in stack.capture.messages() if m.rcpt_to in emails]) == len(emails),
             "every letter at the capture", timeout=60)

    pairs: Counter[tuple[str, str]] = Counter()
    for message in [m for m in stack.capture.messages() if m.rcpt_to in emails]:
        domain = message.mail_from.rpartition("@bounces.")[2]
        assert domain in DOMAINS, message.mail_from
        assert message.helo == f"ip-{message.peer_ip.replace('.', '-')}.{domain}", (message.peer_ip, message.helo)
        signature = re.sub(r"\s+", "", str(message.message["DKIM-Signature"]))
        assert f"d={domain};" in signature and "s=mf;" in signature
        assert "list-unsubscribe:list-unsubscribe-post" in signature.lower() or {
            "list-unsubscribe", "list-unsubscribe-post"} <= set(
            re.search(r"h=([^;]+)", signature).group(1).lower().split(":"))
        assert dkim.verify(message.raw.replace(b"\n", b"\r\n"), dnsfunc=bind.dkim_dnsfunc), message.rcpt_to
        pairs[message.peer_ip, domain] += 1
    # Rotation: every source IP sent for every domain, evenly.
    assert sorted(pairs.values()) == [4, 4, 4, 4], pairs
