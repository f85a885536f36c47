"""A From domain that is not one of the user's sending domains with its records published: the
composer, the campaign page and the API say that letters will fail DMARC alignment at Gmail, Yahoo
and Outlook and the one step that fixes it (issue 10 point 5, issue 11 point 2)."""

from __future__ import annotations

import pytest

from panel.extensions import db
from panel.models import Domain


@pytest.fixture
def token(seed, alice):
    return seed.token(alice)


def _domain(app, user_id, name, state):
    with app.app_context():
        db.session.add(Domain(user_id=user_id, name=name, kind="sending", zone=name, dns_host="127.0.0.1",
                              tsig_name="k", tsig_secret="x", dns_state=state))
        db.session.commit()


def _create(client, token, list_id, from_email):
    return client.post("/api/v1/campaigns", headers={"Authorization": f"Bearer {token}"}, json={
        "name": "n", "subject": "s", "from_email": from_email, "text": "hi {{ unsubscribe_url }}", "lists": [list_id]})


def test_the_api_warns_of_an_unaligned_from_and_not_of_an_aligned_one(app, client, token, seed, alice, bob):
    list_id = seed.list(alice, "readers", [{"email": "r@example.org"}])
    _domain(app, alice, "mail.example.com", "published")
    _domain(app, alice, "pending.example.com", "pending")
    _domain(app, bob, "bobs.example.net", "published")
    warnings = _create(client, token, list_id, "news@example.org").get_json()["warnings"]
    assert len(warnings) == 1
    assert "fail DMARC alignment at Gmail, Yahoo and Outlook" in warnings[0]
    assert "add example.org under Domains" in warnings[0] and "mail.example.com" in warnings[0]
    # another user's domain aligns nothing for alice
    assert _create(client, token, list_id, "news@bobs.example.net").get_json()["warnings"]
    # a sending domain whose records are not published yet: publish them
    warnings = _create(client, token, list_id, "news@pending.example.com").get_json()["warnings"]
    assert "not published" in warnings[0]
    # the domain itself and a sub-domain of it align
    assert _create(client, token, list_id, "news@mail.example.com").get_json()["warnings"] == []
    assert _create(client, token, list_id, "news@eu.mail.example.com").get_json()["warnings"] == []


def test_the_composer_and_the_page_show_the_warning(app, as_alice, seed, alice):
    list_id = seed.list(alice, "readers", [{"email": "r@example.org"}])
    campaign_id = seed.campaign(alice, [list_id], from_email="news@example.org", subject="News",
                                text="Hello\n{{ unsubscribe_url }}\n")
    for url in (f"/campaigns/{campaign_id}", f"/campaigns/{campaign_id}/edit"):
        page = as_alice.get(url).get_data(as_text=True)
        assert 'id="unaligned"' in page and "fail DMARC alignment at Gmail, Yahoo and Outlook" in page
    _domain(app, alice, "example.org", "published")
    assert 'id="unaligned"' not in as_alice.get(f"/campaigns/{campaign_id}").get_data(as_text=True)
