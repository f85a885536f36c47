"""Composing, checking, previewing and controlling campaigns through the web pages."""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import select

from panel.models import Campaign, Delivery, Server, Suppression
from panel.services.templates import allowed_variables, check_template, starter_letter

from tests.panel.agents import hand_over

PEOPLE = [
    {"email": "ann@example.org", "name": "Ann", "city": "Oslo"},
    {"email": "bob@example.org", "name": "Bob <b>", "city": "Rome"},
]


@pytest.fixture
def lists(seed, alice):
    return {
        "people": seed.list(alice, "People", PEOPLE),
        "vips": seed.list(alice, "VIPs", [{"email": "vip@example.org", "tier": "gold"}]),
        "blocked": seed.list(alice, "Blocked", [{"email": "bob@example.org"}]),
    }


def form(ids, **overrides):
    data = {
        "name": "Spring news", "subject": "News for {{ name }}", "from_email": "News@Example.com",
        "from_name": "Example News", "reply_to": "", "format": "plain",
        "text": "Hello {{ name }} in {{ city }}\nUnsubscribe: {{ unsubscribe_url }}\n", "html": "",
        "encoding": "quoted-printable", "lists": [ids["people"]], "exclude_lists": [],
    }
    data.update(overrides)
    return data


def errors(response):
    return [html.unescape(m) for m in re.findall(r'<p class="error">(.*?)</p>', response.get_data(as_text=True))]


def test_compose_saves_a_draft(as_alice, seed, alice, lists):
    server = seed.server(alice)
    page = as_alice.get("/campaigns/new").get_data(as_text=True)
    assert "People (2)" in page and "worker 1" in page
    response = as_alice.post("/campaigns/new", form(lists, exclude_lists=[lists["blocked"]], servers=[server]))
    assert response.status_code == 302, errors(response)
    campaign = seed.query(lambda s: s.scalars(select(Campaign)).one())
    assert campaign.status == "draft"
    assert campaign.from_email == "news@example.com"
    assert campaign.html is None and campaign.text.startswith("Hello {{ name }}")
    assert seed.query(lambda s: (
        [x.id for x in s.get(Campaign, campaign.id).lists],
        [x.id for x in s.get(Campaign, campaign.id).exclude_lists],
        [x.id for x in s.get(Campaign, campaign.id).servers],
    )) == ([lists["people"]], [lists["blocked"]], [server])
    page = as_alice.get(response.headers["Location"]).get_data(as_text=True)
    assert "Spring news" in page and "Draft saved" in page


def test_a_new_campaign_starts_from_the_starter_newsletter_which_saves_as_it_is(as_alice, seed, lists):
    starter = starter_letter()
    page = as_alice.get("/campaigns/new").get_data(as_text=True)
    assert f'value="{starter.subject}"' in page
    for name in ("text", "html"):
        (shown,) = re.findall(rf'<textarea[^>]*name="{name}"[^>]*>\r?\n?(.*?)</textarea>', page, re.S)
        assert html.unescape(shown) == getattr(starter, name)
    assert re.search(r'<input[^>]*checked[^>]*value="multipart"|<input[^>]*value="multipart"[^>]*checked', page)
    response = as_alice.post("/campaigns/new", form(lists, subject=starter.subject, format="multipart",
                                                      text=starter.text, html=starter.html))
    assert response.status_code == 302, errors(response)
    campaign = seed.query(lambda s: s.scalars(select(Campaign)).one())
    assert (campaign.text, campaign.html) == (starter.text, starter.html)


@pytest.mark.parametrize("fmt,expect_text,expect_html", [
    ("plain", True, False), ("html", False, True), ("multipart", True, True),
])
def test_format_decides_which_bodies_are_kept(as_alice, seed, lists, fmt, expect_text, expect_html):
    response = as_alice.post("/campaigns/new", form(lists, format=fmt,
                                                    html="<p>Hi {{ name }}</p><a href=\"{{ unsubscribe_url }}\">Stop</a>"))
    assert response.status_code == 302, errors(response)
    campaign = seed.query(lambda s: s.scalars(select(Campaign)).one())
    assert (campaign.text is not None, campaign.html is not None) == (expect_text, expect_html)
    assert campaign.format == fmt


def test_format_needs_its_bodies(as_alice, seed, lists):
    response = as_alice.post("/campaigns/new", form(lists, format="multipart", html=""))
    assert response.status_code == 400
    assert "Write the HTML body." in errors(response)
    assert seed.query(lambda s: s.query(Campaign).count()) == 0


@pytest.mark.parametrize("field,value,message", [
    ("text", "Hello\n{% foo %}\n", "line 2: Encountered unknown tag 'foo'"),
    ("text", "Hello {{ name }}\n\nRegards, {{ nmae }}\n", "line 3: unknown variable 'nmae'"),
    ("text", "Hi {{ tier }}", "line 1: unknown variable 'tier'"),  # a field of a list not chosen
    ("text", "one\ntwo {{ name \n", "line 2: unexpected end of template"),
    ("subject", "Hi {% if name %}", "line 1: Unexpected end of template"),
    ("subject", "Hi {{ surname }}", "line 1: unknown variable 'surname'"),
    ("text", "{{ ''.__class__.__mro__ }}", "'__class__' is not allowed"),
    ("text", "{{ name.__class__ }}", "'__class__' is not allowed"),
    ("text", "{{ email['__len__'] }}", "'__len__' is not allowed"),
])
def test_template_errors_name_the_part_line_and_culprit(as_alice, seed, lists, field, value, message):
    response = as_alice.post("/campaigns/new", form(lists, **{field: value}))
    assert response.status_code == 400
    found = errors(response)
    assert any(message in error for error in found), found
    assert seed.query(lambda s: s.query(Campaign).count()) == 0


def test_html_part_is_checked_too(as_alice, seed, lists):
    response = as_alice.post("/campaigns/new", form(lists, format="html", html="<p>\n\n{{ cty }}</p>"))
    assert response.status_code == 400
    assert any("line 3: unknown variable 'cty'" in e for e in errors(response))


@pytest.mark.parametrize("fmt,text,body_html,missing", [
    ("plain", "Hello {{ name }}\n", "", ["text"]),
    ("multipart", "Hello\nUnsubscribe: {{ unsubscribe_url }}\n", "<p>Hello</p>", ["html"]),
    ("multipart", "Hello\n", "<p>Hello</p>", ["text", "html"]),
    ("html", "", "<p>Hello</p><!-- unsubscribe_url -->", ["html"]),
])
def test_a_body_without_the_unsubscribe_link_is_refused_saying_what_to_add(as_alice, seed, lists, fmt, text,
                                                                            body_html, missing):
    response = as_alice.post("/campaigns/new", form(lists, format=fmt, text=text, html=body_html))
    assert response.status_code == 400
    wanted = {
        "text": "the text body has no unsubscribe link, which every letter must show: "
                "add a line such as: Unsubscribe: {{ unsubscribe_url }}",
        "html": "the HTML body has no unsubscribe link, which every letter must show: "
                'add a link such as <a href="{{ unsubscribe_url }}">Unsubscribe</a>',
    }
    assert [e for e in errors(response) if "unsubscribe link" in e] == [wanted[part] for part in missing]
    assert seed.query(lambda s: s.query(Campaign).count()) == 0


def test_the_unsubscribe_link_may_sit_anywhere_in_the_body(as_alice, seed, lists):
    response = as_alice.post("/campaigns/new", form(lists, format="multipart", text="{{ unsubscribe_url }} first",
                                                    html="{% if email %}<a href='{{ unsubscribe_url }}'>x</a>{% endif %}"))
    assert response.status_code == 302, errors(response)


def test_variables_come_from_all_chosen_lists(as_alice, seed, lists):
    response = as_alice.post("/campaigns/new", form(lists, lists=[lists["people"], lists["vips"]],
                                                    text="{{ name }} {{ city }} {{ tier }} {{ email }} {{ unsubscribe_url }}"))
    assert response.status_code == 302, errors(response)


@pytest.mark.parametrize("overrides,field_error", [
    ({"from_email": "not an address"}, "not a usable address"),
    ({"lists": []}, "choose at least one list"),
    ({"exclude_lists": "__people__"}, "both sent to and excluded"),
    ({"name": ""}, "This field is required."),
    ({"encoding": "8bit"}, "Not a valid choice."),
])
def test_other_field_problems(as_alice, seed, lists, overrides, field_error):
    if overrides.get("exclude_lists") == "__people__":
        overrides["exclude_lists"] = [lists["people"]]
    response = as_alice.post("/campaigns/new", form(lists, **overrides))
    assert response.status_code == 400
    assert any(field_error in e for e in errors(response)), errors(response)


def test_foreign_list_ids_are_not_choices(as_alice, seed, lists, bob):
    bobs = seed.list(bob, "Bob's", [{"email": "z@example.org"}])
    response = as_alice.post("/campaigns/new", form(lists, lists=[bobs]))
    assert response.status_code == 400
    assert seed.query(lambda s: s.query(Campaign).count()) == 0


def test_edit_a_draft(as_alice, seed, alice, lists):
    campaign_id = seed.campaign(alice, [lists["people"]], text="Old {{ name }} {{ unsubscribe_url }}")
    page = as_alice.get(f"/campaigns/{campaign_id}/edit").get_data(as_text=True)
    assert "Old {{ name }} {{ unsubscribe_url }}" in html.unescape(page)
    assert f'<option selected value="{lists["people"]}">' in page
    response = as_alice.post(f"/campaigns/{campaign_id}/edit", form(lists, name="Renamed",
                                                                          text="New {{ city }} {{ unsubscribe_url }}"))
    assert response.status_code == 302, errors(response)
    campaign = seed.get(Campaign, campaign_id)
    assert (campaign.name, campaign.text) == ("Renamed", "New {{ city }} {{ unsubscribe_url }}")


def test_only_drafts_can_be_edited(as_alice, seed, alice, lists):
    seed.server(alice)
    campaign_id = seed.campaign(alice, [lists["people"]])
    assert as_alice.post(f"/campaigns/{campaign_id}/start").status_code == 302
    response = as_alice.get(f"/campaigns/{campaign_id}/edit")
    assert response.status_code == 302
    response = as_alice.post(f"/campaigns/{campaign_id}/edit", form(lists, name="Changed"))
    assert response.status_code == 302
    assert seed.get(Campaign, campaign_id).name == "Spring news"
    assert "only a draft can be edited" in as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)


def test_campaign_list_page(as_alice, seed, alice, lists):
    seed.campaign(alice, [lists["people"]], name="First")
    seed.campaign(alice, [lists["people"]], name="Second")
    page = as_alice.get("/campaigns/").get_data(as_text=True)
    assert page.index("Second") < page.index("First")  # newest first


# -- start / pause / resume / cancel, live counts ------------------------------------------------

def test_start_pause_resume_cancel(as_alice, seed, alice, lists):
    seed.server(alice, ips=("192.0.2.10", "192.0.2.11"))
    campaign_id = seed.campaign(alice, [lists["people"], lists["vips"]], exclude_lists=[lists["blocked"]])
    with seed.app.app_context():
        from panel.extensions import db

        db.session.add(Suppression(user_id=alice, email="vip@example.org", reason="unsubscribe"))
        db.session.commit()
    assert as_alice.post(f"/campaigns/{campaign_id}/start").status_code == 302
    campaign = seed.get(Campaign, campaign_id)
    assert campaign.status == "running" and campaign.total == 1  # bob excluded, vip suppressed
    page = as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert "Campaign started." in page
    stats = as_alice.get(f"/campaigns/{campaign_id}/stats").get_json()["stats"]
    assert stats["status"] == "running" and stats["total"] == 1 and stats["queued"] == 1

    as_alice.post(f"/campaigns/{campaign_id}/pause")
    assert seed.get(Campaign, campaign_id).status == "paused"
    response = as_alice.post(f"/campaigns/{campaign_id}/pause")
    assert "cannot pause a campaign that is paused" in as_alice.get(response.headers["Location"]).get_data(as_text=True)
    as_alice.post(f"/campaigns/{campaign_id}/resume")
    assert seed.get(Campaign, campaign_id).status == "running"
    as_alice.post(f"/campaigns/{campaign_id}/cancel")
    assert seed.get(Campaign, campaign_id).status == "cancelled"
    assert as_alice.get(f"/campaigns/{campaign_id}/stats").get_json()["stats"]["cancelled"] == 1


def test_start_without_a_server_says_what_to_do(as_alice, seed, alice, lists):
    campaign_id = seed.campaign(alice, [lists["people"]])
    response = as_alice.post(f"/campaigns/{campaign_id}/start")
    page = as_alice.get(response.headers["Location"]).get_data(as_text=True)
    assert "add a server first" in page
    assert seed.get(Campaign, campaign_id).status == "draft"
    assert seed.query(lambda s: s.query(Delivery).count()) == 0


def _set_server_status(seed, server_id: int, status: str) -> None:
    with seed.app.app_context():
        from panel.extensions import db

        db.session.get(Server, server_id).status = status
        db.session.commit()


def test_letters_go_only_to_servers_that_can_send(as_alice, seed, alice, lists):
    ready = seed.server(alice, name="ready", ips=("192.0.2.10",))
    busy = seed.server(alice, name="still provisioning", ips=("192.0.2.20",))
    _set_server_status(seed, busy, "provisioning")
    campaign_id = seed.campaign(alice, [lists["people"], lists["vips"]])
    as_alice.post(f"/campaigns/{campaign_id}/start")
    used = seed.query(lambda s: {row.server_id for row in s.query(Delivery).filter_by(campaign_id=campaign_id)})
    assert used == {None}  # started: the letters wait for a server with room
    with seed.app.app_context():
        hand_over(ready)  # a round in which the ready server answers: it takes them all
    used = seed.query(lambda s: {row.server_id for row in s.query(Delivery).filter_by(campaign_id=campaign_id)})
    assert used == {ready}


def test_start_refuses_a_chosen_server_that_cannot_send_yet(as_alice, seed, alice, lists):
    busy = seed.server(alice, name="still provisioning")
    _set_server_status(seed, busy, "provisioning")
    campaign_id = seed.campaign(alice, [lists["people"]], servers=[busy])
    response = as_alice.post(f"/campaigns/{campaign_id}/start")
    page = as_alice.get(response.headers["Location"]).get_data(as_text=True)
    assert "still provisioning (provisioning)" in page and "cannot send yet" in page
    assert seed.get(Campaign, campaign_id).status == "draft"
    assert seed.query(lambda s: s.query(Delivery).count()) == 0


def test_actions_need_csrf(as_alice, seed, alice, lists):
    seed.server(alice)
    campaign_id = seed.campaign(alice, [lists["people"]])
    assert as_alice.post(f"/campaigns/{campaign_id}/start", csrf=False).status_code == 400
    assert seed.get(Campaign, campaign_id).status == "draft"


def test_page_shows_counts_and_latest_failures(as_alice, seed, alice, lists):
    seed.server(alice)
    campaign_id = seed.campaign(alice, [lists["people"]])
    as_alice.post(f"/campaigns/{campaign_id}/start")
    with seed.app.app_context():
        from panel.extensions import db

        ann, bob = db.session.scalars(select(Delivery).order_by(Delivery.email)).all()
        ann.status, ann.code, ann.reply = "failed", 550, "550 5.1.1 <ann@example.org>: no such user"
        bob.status, bob.code, bob.reply = "deferred", 451, "451 4.7.1 greylisted, try later"
        db.session.commit()
    page = as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert "550 5.1.1 &lt;ann@example.org&gt;: no such user" in page
    assert "451 4.7.1 greylisted" in page
    assert 'data-stat="failed">1<' in page and 'data-stat="deferred">1<' in page
    assert 'data-url="/campaigns/%d/stats"' % campaign_id in page
    data = as_alice.get(f"/campaigns/{campaign_id}/stats").get_json()
    assert data["stats"]["failed"] == 1 and data["stats"]["deferred"] == 1 and data["stats"]["sent"] == 2
    assert {f["email"]: f["code"] for f in data["failures"]} == {"ann@example.org": 550, "bob@example.org": 451}


def test_campaign_page_script_is_served(as_alice):
    response = as_alice.get("/static/campaign.js")
    assert response.status_code == 200 and b"setTimeout(poll, 2000)" in response.data
    response.close()


# -- the template checker, directly -----------------------------------------------------------

def test_checker_collects_every_problem_in_line_order():
    problems = check_template("text", "{{ a }}\n{{ b }}\n{{ name }}", allowed_variables([["name"]]))
    assert [(p.line, p.message.split(" (")[0]) for p in problems] == [
        (1, "unknown variable 'a'"), (2, "unknown variable 'b'"),
    ]
    assert str(problems[0]).startswith("text, line 1: unknown variable 'a' (you can use: email, name, unsubscribe_url)")


def test_checker_accepts_loops_and_local_variables():
    source = "{% for x in [1, 2] %}{{ x }}{% endfor %}{% set y = name | upper %}{{ y }}{{ email }}"
    assert check_template("html", source, allowed_variables([["name"]])) == []


def test_buttons_fit_the_status(as_alice, seed, alice, lists):
    seed.server(alice)
    campaign_id = seed.campaign(alice, [lists["people"]])
    page = as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert '<span data-when="draft">' in page and '<span data-when="running" hidden>' in page
    as_alice.post(f"/campaigns/{campaign_id}/start")
    page = as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert '<span data-when="draft" hidden>' in page and '<span data-when="running">' in page
    assert '<span data-when="draft running paused">' in page
