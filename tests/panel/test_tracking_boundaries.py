"""Tracking links among tenants (issue 12, points 7 and 8).

A token answers only on its campaign's tracking domains or the panel's public host (any other Host
is the 404 page: nothing counted, no redirect); VERP and unsubscribe tokens carry 64 bits of MAC,
the old 40-bit form only for letters that existed before the change; `/c`, `/o` and `/u` are
rate-limited per client address: a flood of forged tokens gets 429, genuine clicks from one office
behind one address are all answered and counted."""

from __future__ import annotations

import email
import email.policy
import hashlib
import hmac
import re

import pytest
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy import func, select

from panel import MIGRATIONS_DIR
from panel.daemon.dispatch import dispatch_server
from panel.daemon.outcomes import store_bounces
from panel.extensions import db
from panel.models import BounceMessage, Campaign, Click, Delivery, Domain, Open, Server, Suppression, User
from panel.services.letters import campaign_payload, recipient_payload
from panel.services.sending import start_campaign
from panel.services.servers import SourceIP, register_server
from panel.services.tokens import delivery_id_from_token, delivery_token
from worker_agent import tracking
from worker_agent.render import Renderer

from tests.panel.conftest import FERNET_KEY, FINGERPRINT, SECRET

PUBLIC = "http://panel.example.com"  # the tests' PUBLIC_URL
OFFICE = "203.0.113.5"
CUTOFF_REVISION = "6d1f0c3b8a27"  # the migration that made tokens longer and recorded the last short one
TEXT = "Hi {{ name }}\nSale: https://shop.example.com/sale\nBye: {{ unsubscribe_url }}\n"
HTML = ('<p>Hi {{ name }}: <a href="https://shop.example.com/sale">sale</a>, '
        '<a href="{{ unsubscribe_url }}">unsubscribe</a></p>')


def _tracking_domain(app, user_id: int, name: str) -> int:
    with app.app_context():
        domain = Domain(user_id=user_id, name=name, kind="tracking", zone=name, dns_host="192.0.2.53",
                        tsig_name="k", tsig_secret="sealed")
        db.session.add(domain)
        db.session.commit()
        return domain.id


def _started(app, seed, user_id: int, people: list[dict], tracking_domains: tuple[int, ...] = (),
             server_host: str = "worker1.example.net") -> int:
    """A started campaign of TEXT and HTML (clicks and opens tracked) to `people`."""
    list_id = seed.list(user_id, f"People {server_host}", people)
    with app.app_context():
        register_server(db.session.get(User, user_id), name=server_host, host=server_host, port=8443,
                        agent_key=FERNET_KEY, fingerprint=FINGERPRINT,
                        ips=[SourceIP(ip="192.0.2.10", helo="mx1.example.net")])
        db.session.commit()
    campaign_id = seed.campaign(user_id, [list_id], text=TEXT, html=HTML, track_opens=True,
                                tracking_domains=list(tracking_domains))
    with app.app_context():
        start_campaign(db.session.get(User, user_id), db.session.get(Campaign, campaign_id))
        db.session.commit()
    return campaign_id


def _letters(app, campaign_id: int) -> dict[str, dict]:
    """Each recipient's masked link, pixel and unsubscribe link as the agent's renderer writes them."""
    renderer = Renderer()
    out = {}
    with app.app_context():
        payload = campaign_payload(db.session.get(Campaign, campaign_id), app.config["PUBLIC_URL"],
                                   "bounces.example.com", SECRET)
        for delivery in db.session.scalars(select(Delivery).where(Delivery.campaign_id == campaign_id)):
            token = delivery_token(SECRET, delivery.id)
            letter = renderer.render(payload, recipient_payload(delivery, token, "192.0.2.10"))
            message = email.message_from_bytes(letter.data, policy=email.policy.default)
            html = message.get_body(("html",)).get_content()
            out[delivery.email] = {
                "id": delivery.id, "token": token,
                "link": re.search(r'href="(https?://[^"]+/c/[^"]+)"', html).group(1),
                "pixel": re.search(r'<img src="([^"]+/o/[^"]+)"', html).group(1),
                "unsubscribe": re.search(r'href="(https?://[^"]+/u/[^"]+)"', html).group(1),
            }
    return out


def _on(url: str, host: str) -> str:
    """The same path asked of another host."""
    return re.sub(r"^https?://[^/]+", f"http://{host}", url)


def _count(seed, model) -> int:
    return seed.query(lambda s: s.scalar(select(func.count()).select_from(model)))


def _suppressed(seed) -> list[str]:
    return seed.query(lambda s: list(s.scalars(select(Suppression.email))))


@pytest.fixture
def tenants(app, seed, alice, bob) -> dict:
    """Alice and Bob, each with a tracking domain and a started campaign whose links use it."""
    alice_domain = _tracking_domain(app, alice, "t.alice.example")
    bob_domain = _tracking_domain(app, bob, "t.bob.example")
    alice_campaign = _started(app, seed, alice, [{"email": "ann@example.org", "name": "Ann"}], (alice_domain,),
                              "worker-alice.example.net")
    bob_campaign = _started(app, seed, bob, [{"email": "bea@example.org", "name": "Bea"}], (bob_domain,),
                            "worker-bob.example.net")
    return {"alice": _letters(app, alice_campaign)["ann@example.org"],
            "bob": _letters(app, bob_campaign)["bea@example.org"]}


# --- hosts -------------------------------------------------------------------------------------


def test_another_tenants_token_on_your_tracking_domain_is_a_404_and_not_counted(client, seed, tenants):
    bob = tenants["bob"]
    assert bob["link"].startswith("https://t.bob.example/c/") and bob["pixel"].startswith("https://t.bob.example/o/")
    for host in ("t.alice.example", "evil.example.net", "t.bob.example.evil.example.net"):
        for url in (_on(bob["link"], host), _on(bob["pixel"], host)):
            for method in ("GET", "HEAD"):
                response = client.open(url, method=method)
                assert response.status_code == 404, (method, url)
                assert "Location" not in response.headers
    assert client.get(_on(bob["link"], "t.alice.example")).mimetype == "text/html"  # the 404 page
    assert (_count(seed, Click), _count(seed, Open)) == (0, 0)
    # on its own domain (any case, the default port) Bob's link leads on and counts
    assert client.get(bob["link"]).headers["Location"] == "https://shop.example.com/sale"
    assert client.get(_on(bob["link"], "T.Bob.Example:443")).status_code == 302
    assert client.get(bob["pixel"]).status_code == 200
    assert (_count(seed, Click), _count(seed, Open)) == (2, 1)


def test_a_token_on_the_panels_public_host_still_works_and_another_port_does_not(client, seed, tenants):
    link = tenants["alice"]["link"]
    assert client.get(_on(link, "panel.example.com")).headers["Location"] == "https://shop.example.com/sale"
    assert client.get(_on(link, "Panel.Example.COM:80")).status_code == 302
    assert client.get(_on(link, "panel.example.com:8080")).status_code == 404  # the links carry no port
    assert client.get(link.replace("https://t.alice.example", "http://localhost")).status_code == 404
    assert _count(seed, Click) == 2


def test_the_routes_behind_the_fast_path_refuse_foreign_hosts_too(app, client, seed, tenants):
    app.wsgi_app = app.wsgi_app.wsgi_app  # FastPath unwrapped
    bob = tenants["bob"]
    assert client.get(_on(bob["link"], "t.alice.example")).status_code == 404
    assert client.get(_on(bob["pixel"], "t.alice.example")).status_code == 404
    assert client.get(bob["link"]).status_code == 302
    assert (_count(seed, Click), _count(seed, Open)) == (1, 0)


def test_unsubscribe_answers_on_the_public_host_and_the_campaigns_own_domains_only(client, seed, tenants):
    alice = tenants["alice"]
    assert alice["unsubscribe"].startswith(PUBLIC + "/u/")  # what the letters carry
    for host in ("t.bob.example", "evil.example.net"):
        for method in ("GET", "POST"):
            assert client.open(_on(alice["unsubscribe"], host), method=method).status_code == 404, (host, method)
    assert _suppressed(seed) == []
    assert client.get(_on(alice["unsubscribe"], "t.alice.example")).status_code == 200
    assert client.get(alice["unsubscribe"]).status_code == 200
    assert client.post(alice["unsubscribe"]).status_code == 200
    assert _suppressed(seed) == ["ann@example.org"]


def test_a_tracking_domain_two_accounts_hold_answers_neither_of_them(client, seed, app, alice, bob):
    """Rows from before one account's tracking domain name was refused to the others: who pointed
    the name at the panel cannot be told, so neither campaign's tokens answer on it."""
    alice_domain = _tracking_domain(app, alice, "click.alice.example")
    bob_domain = _tracking_domain(app, bob, "Click.Alice.Example")  # as an old row may hold it
    alice = _letters(app, _started(app, seed, alice, [{"email": "ann@example.org", "name": "Ann"}], (alice_domain,),
                                   "worker-alice.example.net"))["ann@example.org"]
    bob = _letters(app, _started(app, seed, bob, [{"email": "bea@example.org", "name": "Bea"}], (bob_domain,),
                                 "worker-bob.example.net"))["bea@example.org"]
    for letter in (alice, bob):
        for url in (_on(letter["link"], "click.alice.example"), _on(letter["pixel"], "click.alice.example"),
                    _on(letter["unsubscribe"], "click.alice.example")):
            response = client.get(url)
            assert response.status_code == 404 and "Location" not in response.headers, url
    assert (_count(seed, Click), _count(seed, Open), _suppressed(seed)) == (0, 0, [])
    for letter in (alice, bob):  # both still answer on the panel's public host
        response = client.get(_on(letter["link"], "panel.example.com"))
        assert response.headers["Location"] == "https://shop.example.com/sale"
        assert client.get(_on(letter["pixel"], "panel.example.com")).status_code == 200
    assert (_count(seed, Click), _count(seed, Open)) == (2, 2)


# --- token strength ----------------------------------------------------------------------------


def _short_token(delivery_id: int) -> str:
    """A token the old way: 40 bits (10 hex) of the same HMAC."""
    mac = hmac.new(SECRET.encode(), f"delivery:{delivery_id}".encode(), hashlib.sha256).hexdigest()
    return f"{delivery_id}-{mac[:10]}"


def _record_short_token_cutoff(app, max_id: int) -> None:
    """What the migration records: the last letter that existed before tokens grew."""
    from panel.models import ShortTokenCutoff

    with app.app_context():
        db.session.merge(ShortTokenCutoff(kind="delivery", max_id=max_id))
        db.session.commit()


def test_delivery_tokens_carry_64_bits_and_survive_case_folding():
    token = delivery_token(SECRET, 4711)
    assert re.fullmatch(r"4711-[0-9a-f]{16}", token)
    assert delivery_id_from_token(SECRET, token) == 4711
    assert delivery_id_from_token(SECRET, token.upper()) == 4711  # an MTA that case-folds local parts
    assert delivery_id_from_token(SECRET, token[:-1] + ("0" if token[-1] != "0" else "1")) is None
    for bad in ("²-0123456789abcdef", "4711-", "-0123456789abcdef", "4711-" + "0" * 16, token + "0"):
        assert delivery_id_from_token(SECRET, bad) is None, bad


class _AcceptingAgent:
    """Takes every push (the letters are then the server's, whose agent may report mail for them)."""

    def call(self, path: str, payload: dict, **_: object) -> dict:
        return {}


@pytest.fixture
def letter(app, seed, alice) -> dict:
    campaign = _started(app, seed, alice, [{"email": "ann@example.org", "name": "Ann"}])
    with app.app_context():
        dispatch_server(_AcceptingAgent(), db.session.scalar(select(Server)))
    return _letters(app, campaign)["ann@example.org"]


def _mailed(app, token: str, seq: int = 1) -> None:
    """The daemon storing a mail the letter's server got at unsubscribe+<token>@."""
    with app.app_context():
        store_bounces(db.session.scalar(select(Server)), [
            {"seq": seq, "kind": "unsubscribe", "token": token, "raw": "Subject: unsubscribe\n\nstop\n"}])
        db.session.commit()


def test_a_40_bit_token_of_a_letter_made_after_the_change_is_refused(app, client, seed, letter):
    short = _short_token(letter["id"])
    assert client.get(f"{PUBLIC}/u/{short}").status_code == 404
    assert client.post(f"{PUBLIC}/u/{short}").status_code == 404
    _mailed(app, short)
    assert _suppressed(seed) == []
    assert seed.query(lambda s: s.scalar(select(BounceMessage.delivery_id))) is None
    assert client.get(letter["unsubscribe"]).status_code == 200  # the letter's own 64-bit token works
    _mailed(app, letter["token"], seq=2)  # and its unsubscribe+ address
    assert _suppressed(seed) == ["ann@example.org"]


def test_a_40_bit_token_of_a_letter_sent_before_the_change_still_unsubscribes(app, client, seed, letter):
    _record_short_token_cutoff(app, letter["id"])
    short = _short_token(letter["id"])
    assert client.get(f"{PUBLIC}/u/{short}").status_code == 200
    assert client.get(f"{PUBLIC}/u/{short[:-1]}{'0' if short[-1] != '0' else '1'}").status_code == 404
    _record_short_token_cutoff(app, letter["id"] - 1)
    assert client.get(f"{PUBLIC}/u/{short}").status_code == 404  # a letter after the recorded one
    _record_short_token_cutoff(app, letter["id"])
    _mailed(app, short)  # the old letter's unsubscribe+ address
    assert _suppressed(seed) == ["ann@example.org"]
    assert client.post(f"{PUBLIC}/u/{short}").status_code == 200
    with app.app_context():  # what the daemon reads from the old letter's bounce+ address
        assert delivery_id_from_token(SECRET, short) == letter["id"]


def test_the_migration_records_the_last_letter_that_existed_before_it(app, seed, letter, migrating):
    from panel.models import ShortTokenCutoff

    mine = ScriptDirectory(MIGRATIONS_DIR).get_revision(CUTOFF_REVISION)
    with app.app_context(), migrating():
        downgrade(revision=mine.down_revision)
        upgrade()
        assert db.session.get(ShortTokenCutoff, "delivery").max_id == letter["id"]
        db.session.remove()


def test_a_click_token_with_a_40_bit_mac_is_refused(client, seed, letter):
    head, _mac = letter["link"].rsplit(".", 1)
    campaign_id, delivery_id, ref = head.rsplit("/c/", 1)[1].split(".")
    key = tracking.campaign_key(SECRET, int(campaign_id))
    short = tracking._b64(hmac.digest(key.encode(), f"{campaign_id}.{delivery_id}.{ref}".encode(), "sha256")[:5])
    assert client.get(f"{head}.{short}").status_code == 404
    assert len(_mac) * 6 >= 64 + 2  # the genuine token's MAC: base64url of at least 64 bits
    assert client.get(letter["link"]).status_code == 302


# --- rate limits -------------------------------------------------------------------------------


def test_a_flood_of_forged_tokens_from_one_address_gets_429_and_genuine_clicks_still_pass(app, client, seed, letter):
    head = letter["link"].rsplit(".", 1)[0]
    statuses = [client.get(f"{head}.forged{n:010d}", environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code
                for n in range(100)]
    assert set(statuses[:10]) == {404} and set(statuses[-50:]) == {429}
    assert statuses.count(404) <= app.config["TRACKING_FORGED_PER_MINUTE"] + 5  # a few more refill meanwhile
    refused = client.get(f"{head}.forgedmore", environ_base={"REMOTE_ADDR": "198.51.100.7"})
    assert refused.headers["Retry-After"] and "Location" not in refused.headers
    # the same address's genuine click still leads on and counts; another address is not held back
    assert client.get(letter["link"], environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 302
    assert client.get(f"{head}.forgedmore", environ_base={"REMOTE_ADDR": "198.51.100.8"}).status_code == 404
    # /o and /u share the address's budget for refused tokens
    assert client.get(f"{PUBLIC}/o/1.1.o.forged", environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 429
    assert client.post(f"{PUBLIC}/u/1-{'0' * 16}", environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 429
    assert client.get(letter["unsubscribe"], environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 200
    assert _count(seed, Click) == 1


def test_forged_unsubscribe_tokens_from_one_ipv6_network_share_a_limit(app, client, seed, letter):
    statuses = [client.post(f"{PUBLIC}/u/1-{n:016x}", environ_base={"REMOTE_ADDR": f"2001:db8:1:2::{n:x}"}).status_code
                for n in range(60)]
    assert statuses[0] == 404 and set(statuses[-20:]) == {429}
    assert _suppressed(seed) == []


@pytest.mark.parametrize("app_config", [{}, {"TRACKING_CLICKS_PER_MINUTE": 60}], ids=["default", "tight"])
def test_300_genuine_clicks_of_300_recipients_from_one_office_address_are_all_counted(app, client, seed, alice):
    people = [{"email": f"p{n}@office.example", "name": f"P{n}"} for n in range(300)]
    letters = _letters(app, _started(app, seed, alice, people))
    for letter in letters.values():
        response = client.get(letter["link"], environ_base={"REMOTE_ADDR": OFFICE})
        assert response.status_code == 302 and response.headers["Location"] == "https://shop.example.com/sale"
        assert client.get(letter["pixel"], environ_base={"REMOTE_ADDR": OFFICE}).status_code == 200
    assert seed.query(lambda s: s.execute(select(func.count(), func.count(func.distinct(Click.delivery_id)))).one()) \
        == (300, 300)
    assert _count(seed, Open) == 300


@pytest.mark.parametrize("app_config", [{"TRACKING_CLICKS_PER_MINUTE": 5, "TRACKING_REPEATS_PER_LETTER": 3}])
def test_one_letters_repeats_beyond_the_limits_are_redirected_but_not_counted(app, client, seed, letter):
    for _ in range(20):
        response = client.get(letter["link"], environ_base={"REMOTE_ADDR": OFFICE})
        assert response.status_code == 302 and response.headers["Location"] == "https://shop.example.com/sale"
    assert _count(seed, Click) == 5 + 3  # the address's budget, then the letter's repeats
    assert client.get(letter["link"], environ_base={"REMOTE_ADDR": "198.51.100.9"}).status_code == 302
    assert _count(seed, Click) == 9  # another address is counted
