"""Tenancy over every route (issue 10 point 12).

Every page and API route of the app (app.url_map, not a list kept by hand) is requested by Alice,
an ordinary user, with each method it takes:

- a route under /admin or /api/v1/admin answers her 404;
- a route naming an object (its URL variables) is given Bob's objects and answers her 404;
- a page naming no object does not show Bob's objects' names.

A route added later is requested like the others: one that forgets its check fails here, and
one with a URL variable this file does not know how to fill fails until OBJECTS learns it. The
only routes left out are the public ones below, each named.
"""

from __future__ import annotations

import re

import pytest
from flask import Flask

from panel.extensions import db
from panel.models import ImportJob, ProvisionJob, ServerIP, ServerRateLimit, User
from panel.services.domains import DomainInput, add_domain
from panel.services.suppressions import add_suppression
from tests.panel.conftest import Browser

# Reached by anyone: the login page, the home redirect, the static files, and the links in the
# letters (their token is the proof, not a session).
PUBLIC = {"static", "auth.home", "auth.login", "tracking.click_link", "tracking.open_letter",
          "unsubscribe.confirm", "unsubscribe.unsubscribe_now"}
ADMIN_PREFIXES = ("/admin/", "/api/v1/admin/")
MARK = "zqbobsecret"  # in the names of Bob's objects: a page of Alice's must not show it
FAIL_ON = {"GET", "POST", "PUT", "PATCH", "DELETE"}


@pytest.fixture
def app_config() -> dict:
    return {"ALLOWED_HOST_NETWORKS": "127.0.0.0/8"}  # Bob's domain names a DNS server on loopback


@pytest.fixture
def bobs(seed, bob) -> dict[str, object]:
    """One of everything of Bob's, by the URL variable that names it."""
    list_id = seed.list(bob, f"{MARK} list", [{"email": f"{MARK}@example.org", "name": "Carol"}])
    server_id = seed.server(bob, f"{MARK} worker")
    campaign_id = seed.campaign(bob, [list_id], name=f"{MARK} campaign")
    token_id = seed.query(lambda s: s.get(User, bob).tokens[0].id) if seed.token(bob) else None

    def more(session) -> dict[str, int]:
        user = session.get(User, bob)
        domain = add_domain(user, DomainInput(name=f"{MARK}.example", dns_host="127.0.0.1", tsig_name="k",
                                              tsig_secret="c2VjcmV0"))
        suppression, _ = add_suppression(user, f"{MARK}-gone@example.org")
        job = ImportJob(user_id=bob, list_id=list_id, filename=f"{MARK}.csv")
        provision = ProvisionJob(server_id=server_id, kind="reconfigure")
        limit = ServerRateLimit(server_id=server_id, source_ip="192.0.2.10", domain="example.org", per_minute=5)
        session.add_all([job, provision, limit])
        session.flush()
        ip_id = session.query(ServerIP.id).filter_by(server_id=server_id).scalar()
        ids = {"domain_id": domain.id, "entry_id": suppression.id, "import_job": job.id, "provision_job": provision.id,
               "limit_id": limit.id, "ip_id": ip_id}
        session.commit()
        return ids

    extra = seed.query(more)
    return {"user_id": bob, "list_id": list_id, "server_id": server_id, "campaign_id": campaign_id,
            "token_id": token_id, "key": f"{MARK}@example.org", **extra}


def _value(rule, name: str, bobs: dict) -> object:
    """Bob's object for the URL variable `name` of `rule`."""
    if name == "job_id":
        return bobs["provision_job"] if rule.rule.startswith("/servers/") else bobs["import_job"]
    if name == "key" and "suppressions" in rule.rule:
        return f"{MARK}-gone@example.org"
    choice = re.search(rf"<any\(([^)]*)\):{name}>", rule.rule)
    if choice:
        return choice.group(1).split(",")[0].strip()
    if name not in bobs:
        raise LookupError(name)
    return bobs[name]


def _routes(app: Flask):
    # Logging out last: it ends Alice's session, which the other requests need.
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.endpoint == "auth.logout", r.rule)):
        if rule.endpoint in PUBLIC:
            continue
        for method in sorted(rule.methods & FAIL_ON):
            yield rule, method


def _request(app: Flask, page: Browser, token: str, rule, method: str, values: dict):
    with app.test_request_context():
        url = app.url_map.bind("localhost").build(rule.endpoint, values, method=method)
    if rule.rule.startswith("/api/"):
        return page.client.open(url, method=method, headers={"Authorization": f"Bearer {token}"}, json={})
    if method == "GET":
        return page.get(url)
    if method == "POST":
        return page.post(url, {})
    return page.client.open(url, method=method)


def test_every_route_refuses_another_users_objects_and_admin_routes_to_an_ordinary_user(app, as_alice, alice, bobs, seed):
    assert walk(app, as_alice, seed.token(alice), bobs) == []
    # Bob's things are all still there, unchanged by her attempts.
    assert seed.query(lambda s: s.get(User, bobs["user_id"]).disabled_at) is None
    assert seed.query(lambda s: len(s.get(User, bobs["user_id"]).tokens)) == 1


def walk(app: Flask, as_alice: Browser, token: str, bobs: dict) -> list[str]:
    """What answered Alice otherwise than it should, one line a route and method."""
    wrong: list[str] = []
    for rule, method in _routes(app):
        names = sorted(rule.arguments)
        try:
            values = {name: _value(rule, name, bobs) for name in names}
        except LookupError as exc:
            wrong.append(f"{rule.rule}: no object of Bob's for <{exc.args[0]}>: teach this test to make one")
            continue
        admin_only = rule.rule.startswith(ADMIN_PREFIXES) or rule.rule in ("/admin", "/api/v1/admin")
        response = _request(app, as_alice, token, rule, method, values)
        if admin_only or names:
            if response.status_code != 404:
                what = "an admin route" if admin_only else "Bob's object"
                wrong.append(f"{method} {rule.rule} ({what}): {response.status_code}, not 404")
        elif method == "GET" and MARK in response.get_data(as_text=True):
            wrong.append(f"GET {rule.rule} shows Bob's objects to Alice")
    return wrong


def test_the_route_walk_sees_a_route_added_without_a_check(database_url, app_config, alice, bobs, seed):
    """The walk is not a list: a careless route added to the app is found and fails it."""
    from flask import Blueprint

    from tests.panel.conftest import make_app

    careless = Blueprint("careless", __name__)

    @careless.get("/careless/<int:list_id>")
    def show(list_id: int):
        from panel.models import MailingList
        return db.session.get(MailingList, list_id).name

    @careless.get("/careless/<int:thing_id>/thing")
    def thing(thing_id: int):
        return "?"

    other = make_app(database_url, **app_config)
    other.register_blueprint(careless)
    page = Browser(other.test_client())
    page.login("alice@example.com")
    try:
        wrong = walk(other, page, seed.token(alice), bobs)
    finally:
        with other.app_context():
            db.session.remove()
            db.engine.dispose()
    assert wrong == ["GET /careless/<int:list_id> (Bob's object): 200, not 404",
                     "/careless/<int:thing_id>/thing: no object of Bob's for <thing_id>: teach this test to make one"]
