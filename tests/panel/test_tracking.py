"""Masked links, clicks and opens: the letters the agent's renderer builds from the panel's payloads,
the /c/ and /o/ endpoints, the counts on the campaign page and in /stats."""

from __future__ import annotations

import email
import email.policy
import re

import pytest
from sqlalchemy import func, select, text

from panel.extensions import db
from panel.models import Campaign, Click, Delivery, Domain, Open, User
from panel.services.letters import campaign_payload, recipient_payload
from panel.services.sending import start_campaign
from panel.services.tokens import delivery_token
from worker_agent import tracking
from worker_agent.render import Renderer

from tests.panel.conftest import SECRET

PEOPLE = [
    {"email": "ann@example.org", "name": "Ann", "sku": "A1"},
    {"email": "bob@example.org", "name": "Bob", "sku": "B2"},
]
TEXT = "Hi {{ name }}\nSale: https://shop.example.com/sale?a=1&b=2\nBye: {{ unsubscribe_url }}\n"
HTML = ('<p>Hi {{ name }}: <a href="https://shop.example.com/sale?a=1&amp;b=2">sale</a>, '
        '<a href="https://blog.example.com/">blog</a>, <a href="https://shop.example.com/i/{{ sku }}">yours</a>, '
        '<a href="{{ unsubscribe_url }}">unsubscribe</a></p>')


def _letters(app, campaign_id: int) -> dict[str, tuple[str, str]]:
    """Each recipient's (text, html) as the agent's renderer builds them from the pushed payloads."""
    renderer = Renderer()
    out = {}
    with app.app_context():
        campaign = db.session.get(Campaign, campaign_id)
        payload = campaign_payload(campaign, app.config["PUBLIC_URL"], "bounces.example.com", SECRET)
        for delivery in db.session.scalars(select(Delivery).where(Delivery.campaign_id == campaign_id)):
            letter = renderer.render(payload, recipient_payload(delivery, delivery_token(SECRET, delivery.id), "192.0.2.10"))
            message = email.message_from_bytes(letter.data, policy=email.policy.default)
            plain, rich = message.get_payload()
            out[delivery.email] = (plain.get_content(), rich.get_content())
    return out


def _links(body: str) -> list[str]:
    return [url.rstrip(".") for url in re.findall(r"http://panel\.example\.com/c/[A-Za-z0-9._=-]+", body)]


def _start(app, seed, alice, **settings) -> int:
    """A started campaign of TEXT and HTML to PEOPLE, with the tracking `settings`."""
    list_id = seed.list(alice, "People", PEOPLE)
    seed.server(alice)
    campaign_id = seed.campaign(alice, [list_id], text=TEXT, html=HTML, **settings)
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        db.session.commit()
    return campaign_id


@pytest.fixture
def started(app, seed, alice) -> int:
    return _start(app, seed, alice, track_opens=True)


def _path(url: str) -> str:
    """The link as a recipient's browser asks for it: of the host the letter names (a token answers
    only on its campaign's tracking domains and the panel's public host)."""
    return url


def test_letters_have_masked_links_and_the_unsubscribe_link_as_it_was(app, started):
    letters = _letters(app, started)
    text, html = letters["ann@example.org"]
    assert "shop.example.com" not in text and "shop.example.com" not in html and "blog.example.com" not in html
    assert re.search(r"Bye: http://panel\.example\.com/u/\d+-[0-9a-f]{16}\r?\n", text)
    assert re.search(r'href="http://panel\.example\.com/u/\d+-[0-9a-f]{16}">unsubscribe', html)
    assert len(_links(text)) == 1 and len(_links(html)) == 3
    assert re.search(r'<img src="http://panel\.example\.com/o/[^"]+" width="1" height="1"', html)


def test_a_click_redirects_to_its_link_and_is_counted_per_link_and_recipient(app, started, client, seed):
    letters = _letters(app, started)
    ann_text, ann_html = letters["ann@example.org"]
    _bob_text, bob_html = letters["bob@example.org"]
    sale, blog, yours = _links(ann_html)
    assert _links(ann_text) == [sale]  # the same link in both parts: one token

    for url, target in ((sale, "https://shop.example.com/sale?a=1&b=2"), (blog, "https://blog.example.com/"),
                        (yours, "https://shop.example.com/i/A1"), (sale, "https://shop.example.com/sale?a=1&b=2")):
        response = client.get(_path(url))
        assert response.status_code == 302
        assert response.headers["Location"] == target
    bob_sale, _blog, bob_yours = _links(bob_html)
    assert client.get(_path(bob_sale)).status_code == 302
    assert client.get(_path(bob_yours)).headers["Location"] == "https://shop.example.com/i/B2"

    def per_link(session):
        return sorted(session.execute(
            select(Delivery.email, Click.link_idx, Click.url, func.count())
            .join(Delivery, Delivery.id == Click.delivery_id)
            .group_by(Delivery.email, Click.link_idx, Click.url)
        ).all(), key=str)
    assert seed.query(per_link) == sorted([
        ("ann@example.org", 0, None, 2), ("ann@example.org", 1, None, 1),
        ("ann@example.org", None, "https://shop.example.com/i/A1", 1),
        ("bob@example.org", 0, None, 1), ("bob@example.org", None, "https://shop.example.com/i/B2", 1),
    ], key=str)


def test_forged_tampered_and_foreign_tokens_are_404_without_redirect(app, seed, alice, started, client):
    _text, html = _letters(app, started)["ann@example.org"]
    sale, _blog, yours = (url.removeprefix("http://panel.example.com") for url in _links(html))
    campaign_id, delivery, ref, mac = sale.removeprefix("/c/").split(".")
    other_list = seed.list(alice, "Other", [{"email": "cy@example.org"}])
    other = seed.campaign(alice, [other_list], subject="Other", text="Hi https://other.example.com/x\nBye: {{ unsubscribe_url }}\n")
    with app.app_context():
        start_campaign(db.session.get(User, alice), db.session.get(Campaign, other))
        db.session.commit()
        other_delivery = db.session.scalar(select(Delivery.id).where(Delivery.campaign_id == other))
    key = tracking.campaign_key(SECRET, started)
    bad = [
        f"/c/{campaign_id}.{delivery}.{ref}.AAAAAAAAAAAAAAAA",  # forged signature
        f"/c/{campaign_id}.{int(delivery) + 1}.{ref}.{mac}",  # another recipient's
        f"/c/{other}.{delivery}.{ref}.{mac}",  # moved to another campaign
        "/c/" + tracking.make_token(key, started, int(delivery), 7),  # a link number the campaign lacks
        # a real link number of the other campaign, signed with this campaign's key
        "/c/" + tracking.make_token(key, other, other_delivery, 0),
        "/c/" + tracking.make_token("k" * 64, started, int(delivery), "https://evil.example/"),  # wrong key
        yours.rsplit(".", 2)[0] + "." + tracking.make_token(key, 1, 1, "https://evil.example/").split(".")[2]
        + "." + yours.rsplit(".", 1)[1],  # the carried URL swapped, the signature kept
        "/c/" + tracking.make_token(key, started, int(delivery), tracking.OPEN),  # an open token is no link
        "/c/nonsense", "/o/" + sale.removeprefix("/c/"),
    ]
    for path in bad:
        response = client.get("http://panel.example.com" + path)  # the host that answers genuine tokens
        assert response.status_code == 404, path
        assert "Location" not in response.headers
    assert seed.query(lambda s: s.scalar(select(func.count()).select_from(Click))) == 0
    assert seed.query(lambda s: s.scalar(select(func.count()).select_from(Open))) == 0


def test_head_is_answered_but_not_counted(app, started, client, seed):
    _text, html = _letters(app, started)["ann@example.org"]
    link = _path(_links(html)[0])
    pixel = _path(re.search(r'<img src="([^"]+)"', html).group(1))
    assert client.head(link).status_code == 302
    assert client.head(pixel).status_code == 200
    assert seed.query(lambda s: s.scalar(select(func.count()).select_from(Click))) == 0
    assert seed.query(lambda s: s.scalar(select(func.count()).select_from(Open))) == 0


def test_the_pixel_is_a_gif_that_counts_an_open(app, started, client, seed):
    _text, html = _letters(app, started)["ann@example.org"]
    pixel = _path(re.search(r'<img src="([^"]+)"', html).group(1))
    for _ in range(2):
        response = client.get(pixel)
        assert response.status_code == 200
        assert response.mimetype == "image/gif" and response.data.startswith(b"GIF89a")
        assert "no-store" in response.headers["Cache-Control"]
    assert seed.query(lambda s: s.scalar(select(func.count()).select_from(Open))) == 2


def test_a_click_counts_after_the_database_dropped_the_connection(app, started, client, seed, db_backend):
    """Counting skips the pool's pre-ping on PostgreSQL: a connection the server closed fails once
    and the click is counted on a fresh one, never lost nor answered with an error."""
    if db_backend != "postgresql":
        pytest.skip("SQLite has no server to drop a connection")
    _text, html = _letters(app, started)["ann@example.org"]
    link, pixel = _path(_links(html)[0]), _path(re.search(r'<img src="([^"]+)"', html).group(1))
    assert client.get(link).status_code == 302  # the counting pool now holds an idle connection
    with app.app_context():
        engine = app.extensions["mailfleet_counting_engine"]
        with engine.connect() as connection:
            own = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        db.session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": own})
        db.session.commit()
    assert client.get(link).status_code == 302
    assert client.get(pixel).status_code == 200
    assert seed.query(lambda s: s.scalar(select(func.count()).select_from(Click))) == 2
    assert seed.query(lambda s: s.scalar(select(func.count()).select_from(Open))) == 1


def test_campaign_page_and_stats_show_the_clicks(app, started, client, as_alice, alice, seed):
    letters = _letters(app, started)
    ann = _links(letters["ann@example.org"][1])
    bob = _links(letters["bob@example.org"][1])
    for url in (ann[0], ann[0], bob[0], ann[1], ann[2]):
        assert client.get(_path(url)).status_code == 302
    client.get(_path(re.search(r'<img src="([^"]+)"', letters["bob@example.org"][1]).group(1)))

    page = as_alice.get(f"/campaigns/{started}").get_data(as_text=True)
    rows = re.findall(r'<tr><td class="url">(.*?)</td><td class="num" data-link-clicks>(\d+)</td>'
                      r'<td class="num" data-link-recipients>(\d+)</td></tr>', page)
    assert rows == [
        ("https://shop.example.com/sale?a=1&amp;b=2", "3", "2"),
        ("https://blog.example.com/", "1", "1"),
        ('https://shop.example.com/i/A1 <span class="hint">(built from fields)</span>', "1", "1"),
    ]
    assert re.search(r'data-stat="clicks">5<', page) and re.search(r'data-stat="clickers">2<', page)
    token = seed.token(alice)
    stats = client.get(f"/api/v1/campaigns/{started}/stats", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert (stats["clicks"], stats["clickers"], stats["opens"], stats["openers"]) == (5, 2, 1, 1)
    links = client.get(f"/api/v1/campaigns/{started}/links", headers={"Authorization": f"Bearer {token}"}).get_json()
    assert links == [
        {"url": "https://shop.example.com/sale?a=1&b=2", "built": False, "clicks": 3, "recipients": 2},
        {"url": "https://blog.example.com/", "built": False, "clicks": 1, "recipients": 1},
        {"url": "https://shop.example.com/i/A1", "built": True, "clicks": 1, "recipients": 1},
    ]
    other = seed.token(seed.user("eve@example.com"))
    assert client.get(f"/api/v1/campaigns/{started}/links", headers={"Authorization": f"Bearer {other}"}).status_code == 404
    polled = as_alice.get(f"/campaigns/{started}/stats").get_json()
    assert polled["links"][0] == {"url": "https://shop.example.com/sale?a=1&b=2", "clicks": 3, "recipients": 2}


def test_the_preview_link_leads_on_without_counting(app, seed, alice, as_alice, client):
    list_id = seed.list(alice, "People", PEOPLE)
    campaign_id = seed.campaign(alice, [list_id], text=TEXT, html=None)
    page = as_alice.get(f"/campaigns/{campaign_id}/preview").get_data(as_text=True)
    link = _path(_links(page)[0])
    assert client.get(link).headers["Location"] == "https://shop.example.com/sale?a=1&b=2"
    assert seed.query(lambda s: s.scalar(select(func.count()).select_from(Click))) == 0


def test_campaigns_choose_tracking_domains_and_switches_over_the_api(app, seed, alice, client):
    list_id = seed.list(alice, "People", PEOPLE)
    with app.app_context():
        for name, kind in (("t.example.com", "tracking"), ("mail.example.com", "sending")):
            db.session.add(Domain(user_id=alice, name=name, kind=kind, zone="example.com", dns_host="127.0.0.1",
                                  tsig_name="k", tsig_secret="sealed"))
        db.session.commit()
        ids = dict(db.session.execute(select(Domain.name, Domain.id)).all())
    headers = {"Authorization": f"Bearer {seed.token(alice)}"}
    body = {"name": "n", "subject": "s", "from_email": "a@example.com", "text": TEXT, "lists": [list_id]}
    refused = client.post("/api/v1/campaigns", json={**body, "tracking_domains": [ids["mail.example.com"]]}, headers=headers)
    assert refused.status_code == 400 and "sending domain" in refused.get_json()["error"]
    assert client.post("/api/v1/campaigns", json={**body, "track_opens": "yes"}, headers=headers).status_code == 400
    made = client.post("/api/v1/campaigns", json={**body, "tracking_domains": [ids["t.example.com"]], "track_opens": True},
                       headers=headers)
    assert made.status_code == 201
    data = made.get_json()
    assert (data["tracking_domains"], data["track_clicks"], data["track_opens"]) == ([ids["t.example.com"]], True, True)
    with app.app_context():
        payload = campaign_payload(db.session.get(Campaign, data["id"]), "http://panel.example.com", "b.example", SECRET)
    assert payload["tracking"] == {
        "clicks": True, "opens": True, "key": tracking.campaign_key(SECRET, data["id"]),
        "base_urls": ["https://t.example.com"], "links": ["https://shop.example.com/sale?a=1&b=2"],
    }
    off = client.post("/api/v1/campaigns", json={**body, "track_clicks": False}, headers=headers).get_json()
    with app.app_context():
        payload = campaign_payload(db.session.get(Campaign, off["id"]), "http://panel.example.com", "b.example", SECRET)
    assert "tracking" not in payload


def test_the_routes_answer_as_the_fast_path_does(app, started, client, seed):
    """The blueprint's routes (what FastPath stands in front of) give the same answers."""
    _text, html = _letters(app, started)["ann@example.org"]
    link, pixel = _path(_links(html)[0]), _path(re.search(r'<img src="([^"]+)"', html).group(1))
    fast = [client.get(link), client.get(pixel)]
    app.wsgi_app = app.wsgi_app.wsgi_app  # FastPath unwrapped
    routed = [client.get(link), client.get(pixel)]
    for one, other in zip(fast, routed):
        assert (one.status_code, one.headers.get("Location"), one.data if one.mimetype == "image/gif" else b"") == \
            (other.status_code, other.headers.get("Location"), other.data if other.mimetype == "image/gif" else b"")
        assert one.headers["Cache-Control"] == other.headers["Cache-Control"]
        assert one.headers["X-Content-Type-Options"] == other.headers["X-Content-Type-Options"] == "nosniff"
    assert seed.query(lambda s: s.scalar(select(func.count()).select_from(Click))) == 2
    assert seed.query(lambda s: s.scalar(select(func.count()).select_from(Open))) == 2


def test_an_edited_drafts_preview_links_lead_to_the_new_targets(app, seed, alice, as_alice, client):
    from panel.services.campaigns import CampaignInput, save_campaign

    list_id = seed.list(alice, "People", PEOPLE)
    campaign_id = seed.campaign(alice, [list_id], text=TEXT, html=None)
    link = _path(_links(as_alice.get(f"/campaigns/{campaign_id}/preview").get_data(as_text=True))[0])
    assert client.get(link).headers["Location"] == "https://shop.example.com/sale?a=1&b=2"
    with app.app_context():
        save_campaign(db.session.get(User, alice), CampaignInput(
            name="Spring news", subject="News", from_email="news@example.com", lists=[list_id],
            text="New: https://new.example.com/\nBye: {{ unsubscribe_url }}\n"), db.session.get(Campaign, campaign_id))
        db.session.commit()
    assert client.get(link).headers["Location"] == "https://new.example.com/"


def test_a_campaign_without_click_tracking_says_so_and_its_letters_keep_their_links(app, seed, alice, as_alice):
    campaign_id = _start(app, seed, alice, track_clicks=False)
    text, html = _letters(app, campaign_id)["ann@example.org"]
    assert "Sale: https://shop.example.com/sale?a=1&b=2" in text and "/c/" not in text + html
    assert 'href="https://shop.example.com/i/A1"' in html
    page = as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert "Links are not tracked in this campaign." in page and 'id="links"' not in page


def _domains(app, alice) -> dict[str, int]:
    with app.app_context():
        for name, kind in (("t.example.com", "tracking"), ("mail.example.com", "sending")):
            db.session.add(Domain(user_id=alice, name=name, kind=kind, zone="example.com", dns_host="127.0.0.1",
                                  tsig_name="k", tsig_secret="sealed"))
        db.session.commit()
        return dict(db.session.execute(select(Domain.name, Domain.id)).all())


def test_the_composer_chooses_tracking_domains_and_switches(app, seed, alice, as_alice):
    list_id = seed.list(alice, "People", PEOPLE)
    ids = _domains(app, alice)
    page = as_alice.get("/campaigns/new").get_data(as_text=True)
    assert re.search(r'<input[^>]*checked[^>]*name="track_clicks"|<input[^>]*name="track_clicks"[^>]*checked', page)
    assert f'value="{ids["t.example.com"]}"' in page  # offered as a tracking domain
    data = {"name": "n", "subject": "s", "from_email": "a@example.com", "format": "plain", "text": TEXT, "html": "",
            "encoding": "quoted-printable", "lists": [list_id], "track_opens": "y",
            "tracking_domains": [ids["t.example.com"]]}  # track_clicks left unticked
    response = as_alice.post("/campaigns/new", data)
    assert response.status_code == 302, response.get_data(as_text=True)
    campaign_id = int(response.headers["Location"].rstrip("/").rsplit("/", 1)[1])

    def saved(session):
        item = session.get(Campaign, campaign_id)
        return item.track_clicks, item.track_opens, [d.name for d in item.tracking_domains]
    assert seed.query(saved) == (False, True, ["t.example.com"])
    page = as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
    assert "t.example.com" in page and "Links are not tracked in this campaign." in page
    edit = as_alice.get(f"/campaigns/{campaign_id}/edit").get_data(as_text=True)
    assert not re.search(r'<input[^>]*checked[^>]*name="track_clicks"|<input[^>]*name="track_clicks"[^>]*checked', edit)
    refused = as_alice.post("/campaigns/new", {**data, "tracking_domains": [ids["mail.example.com"]]})
    assert refused.status_code == 400  # a sending domain is not offered as a tracking domain
