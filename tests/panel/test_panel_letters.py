"""The campaign/recipient JSON pushed to the agents, and the preview built by the agent's renderer."""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import select

from panel.extensions import db
from panel.models import Campaign, Delivery, Recipient
from panel.services.letters import PREVIEW_DELIVERY_ID, campaign_payload, recipient_payload
from panel.services.sending import start_campaign
from panel.services.tokens import delivery_id_from_token, delivery_token

from tests.panel.agents import hand_over

PEOPLE = [
    {"email": "ann@example.org", "name": "Ann", "city": "Oslo"},
    {"email": "bob@example.org", "name": "Bob", "city": "Rome"},
]
BYE = '<a href="{{ unsubscribe_url }}">Bye</a>'  # every body must show the unsubscribe link


def test_campaign_payload_has_the_protocol_shape(app, seed, alice):
    list_id = seed.list(alice, "People", PEOPLE)
    campaign_id = seed.campaign(alice, [list_id], from_email="News@Mail.Example.COM",
                                html="<p>{{ name }}</p>" + BYE,
                                reply_to="answers@example.com")
    with app.app_context():
        payload = campaign_payload(db.session.get(Campaign, campaign_id), "http://panel.example.com/", "bounces.example.com")
    assert payload == {
        "id": campaign_id,
        "subject": "News for {{ name }}",
        "from_email": "news@mail.example.com",
        "from_name": "Example News",
        "reply_to": "answers@example.com",
        "text": "Hello {{ name }}\nBye: {{ unsubscribe_url }}\n",
        "html": "<p>{{ name }}</p>" + BYE,
        "encoding": "quoted-printable",
        "message_id_domain": "mail.example.com",
        "bounce_domain": "bounces.example.com",
        "unsubscribe_url": "http://panel.example.com/u/",
    }


def test_campaign_payload_nulls_the_missing_part(app, seed, alice):
    list_id = seed.list(alice, "People", PEOPLE)
    campaign_id = seed.campaign(alice, [list_id], text=None, html="<p>hi</p>" + BYE, from_name=None)
    with app.app_context():
        payload = campaign_payload(db.session.get(Campaign, campaign_id), "http://p", "b.example")
    assert payload["text"] is None and payload["html"] == "<p>hi</p>" + BYE
    assert payload["from_name"] is None and payload["reply_to"] is None
    assert payload["unsubscribe_url"] == "http://p/u/"


def test_recipient_payload_for_a_delivery_and_for_a_preview(app, seed, alice):
    list_id = seed.list(alice, "People", PEOPLE)
    server_id = seed.server(alice)
    campaign_id = seed.campaign(alice, [list_id])
    with app.app_context():
        from panel.models import User

        start_campaign(db.session.get(User, alice), db.session.get(Campaign, campaign_id))
        db.session.commit()
        hand_over(server_id)  # the server takes the letters and chooses their IPs
        delivery = db.session.scalars(select(Delivery).where(Delivery.email == "ann@example.org")).one()
        token = delivery_token("s3cret", delivery.id)
        payload = recipient_payload(delivery, token, delivery.source_ip)
        assert payload == {
            "id": delivery.id, "email": "ann@example.org", "fields": {"name": "Ann", "city": "Oslo"},
            "source_ip": "192.0.2.10", "token": token,
        }
        assert delivery_id_from_token("s3cret", payload["token"]) == delivery.id
        # fields given: no lookup; a recipient deleted since: {}
        assert recipient_payload(delivery, token, "192.0.2.10", fields={"name": "X"})["fields"] == {"name": "X"}
        delivery.recipient_id = None
        assert recipient_payload(delivery, token, "192.0.2.10")["fields"] == {}
        recipient = db.session.scalars(select(Recipient).where(Recipient.email == "bob@example.org")).one()
        preview = recipient_payload(recipient, "0-abc", "192.0.2.10")
        assert preview == {"id": PREVIEW_DELIVERY_ID, "email": "bob@example.org",
                           "fields": {"name": "Bob", "city": "Rome"}, "source_ip": "192.0.2.10", "token": "0-abc"}


def test_payloads_render_with_the_agent_renderer(app, seed, alice):
    render = pytest.importorskip("worker_agent.render")
    list_id = seed.list(alice, "People", PEOPLE)
    seed.server(alice)
    campaign_id = seed.campaign(alice, [list_id], html="<p>Hi {{ name }}</p>" + BYE)
    with app.app_context():
        campaign = db.session.get(Campaign, campaign_id)
        recipient = db.session.scalars(select(Recipient).where(Recipient.email == "ann@example.org")).one()
        letter = render.Renderer().render(
            campaign_payload(campaign, "http://panel.example.com", "bounces.example.com"),
            recipient_payload(recipient, "7-0123456789", "192.0.2.10"),
        )
    text = letter.data.decode()
    assert letter.envelope_from == "bounce+7-0123456789@bounces.example.com"
    assert "Subject: News for Ann" in text
    assert "<http://panel.example.com/u/7-0123456789>" in text


# -- the preview page --------------------------------------------------------------------------

@pytest.fixture
def campaign_id(seed, alice):
    list_id = seed.list(alice, "People", PEOPLE + [{"email": "eve@example.org", "name": "<script>alert(1)</script>",
                                                      "city": "\" onload=\"alert(2)"}])
    seed.server(alice)
    return seed.campaign(
        alice, [list_id], subject="Weather for {{ name }}",
        text="Hello {{ name }}, it is sunny in {{ city }}.\nUnsubscribe: {{ unsubscribe_url }}\n",
        html='<p>Hello <b>{{ name }}</b> from {{ city }}</p><script>alert("in letter")</script>'
             '<a href="{{ unsubscribe_url }}">Unsubscribe</a>',
    )


def test_preview_shows_headers_and_both_parts_for_the_first_recipient(as_alice, campaign_id):
    pytest.importorskip("worker_agent.render")
    response = as_alice.get(f"/campaigns/{campaign_id}/preview")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert "<strong>ann@example.org</strong>" in page
    assert "<th>Subject</th><td>Weather for Ann</td>" in page
    assert "<th>From</th><td>Example News &lt;news@example.com&gt;</td>" in page
    assert "<th>List-Unsubscribe-Post</th><td>List-Unsubscribe=One-Click</td>" in page
    assert "http://panel.example.com/u/0-" in page
    assert "Hello Ann, it is sunny in Oslo." in page
    # The HTML part only inside a sandboxed iframe's srcdoc, escaped; never raw in the page.
    iframe = re.search(r'<iframe class="letter-html" sandbox title="[^"]*" srcdoc="([^"]*)"></iframe>', page)
    assert iframe, "sandboxed iframe with srcdoc"
    assert html.unescape(iframe.group(1)).startswith("<p>Hello <b>Ann</b> from Oslo</p>")
    assert '<script>alert("in letter")</script>' not in page
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]


def test_preview_for_a_chosen_recipient_escapes_their_fields(as_alice, campaign_id):
    pytest.importorskip("worker_agent.render")
    page = as_alice.get(f"/campaigns/{campaign_id}/preview?email=EVE@example.org").get_data(as_text=True)
    assert "<strong>eve@example.org</strong>" in page
    assert "<script>alert(1)</script>" not in page
    srcdoc = html.unescape(re.search(r'srcdoc="([^"]*)"', page).group(1))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in srcdoc  # the renderer escaped the field in HTML
    assert 'onload="alert(2)' not in page


def test_preview_for_an_unknown_address(as_alice, campaign_id):
    page = as_alice.get(f"/campaigns/{campaign_id}/preview?email=nobody@example.org").get_data(as_text=True)
    assert "no recipient &#39;nobody@example.org&#39;" in page
    assert "<iframe" not in page


def test_sandbox_escape_saved_behind_the_checks_renders_nothing_dangerous(as_alice, app, seed, alice, campaign_id):
    """Refused at save (see test_panel_campaigns); were one stored anyway, the renderer's sandbox stops it."""
    pytest.importorskip("worker_agent.render")
    with app.app_context():
        db.session.get(Campaign, campaign_id).text = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
        db.session.get(Campaign, campaign_id).html = None
        db.session.commit()
    page = as_alice.get(f"/campaigns/{campaign_id}/preview").get_data(as_text=True)
    assert "The letter cannot be built: text template tried something the sandbox forbids" in page
    assert "&lt;class" not in page and "<class" not in page
