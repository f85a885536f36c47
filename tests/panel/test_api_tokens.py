"""API tokens: revoked and expired tokens are refused (401 saying so), a read-only token may only
GET and HEAD (anything else is a 403 saying why), a write token does what it always did."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from panel.extensions import db
from panel.models import ApiToken, MailingList, User
from panel.models.base import utcnow
from panel.services import users as user_service


def make_token(app, user_id: int, **options) -> tuple[str, int]:
    with app.app_context():
        token = user_service.create_api_token(db.session.get(User, user_id), "test", **options)
        db.session.commit()
        return token, db.session.scalar(select(ApiToken.id).order_by(ApiToken.id.desc()).limit(1))


def call(client, token, method="GET", url="/api/v1/lists", **kwargs):
    return client.open(url, method=method, headers={"Authorization": f"Bearer {token}"}, **kwargs)


def error(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"}
    return body["error"]


def test_a_revoked_token_gets_401_saying_so(app, client, alice, seed):
    token, token_id = make_token(app, alice)
    assert call(client, token).status_code == 200
    with app.app_context():
        user_service.revoke_api_token(db.session.get(ApiToken, token_id))
        db.session.commit()
    message = error(call(client, token), 401)
    assert "revoked" in message and "make a new one" in message
    assert error(call(client, token, "POST", json={"name": "x"}), 401)
    assert seed.query(lambda s: s.scalars(select(MailingList)).all()) == []


def test_an_expired_token_gets_401_saying_so(app, client, alice):
    token, token_id = make_token(app, alice, expires_in=timedelta(days=1))
    assert call(client, token).status_code == 200
    with app.app_context():
        db.session.execute(update(ApiToken).where(ApiToken.id == token_id)
                           .values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    assert "expired" in error(call(client, token), 401)


def test_a_read_only_token_can_get_but_not_change(app, client, alice, seed):
    list_id = seed.list(alice, "News")
    token, _ = make_token(app, alice, scope="read")
    assert call(client, token).status_code == 200
    assert call(client, token, url=f"/api/v1/lists/{list_id}").status_code == 200
    assert call(client, token, "HEAD").status_code == 200
    message = error(call(client, token, "POST", json={"name": "Sneaky"}), 403)
    assert "read-only" in message
    assert error(call(client, token, "DELETE", url=f"/api/v1/lists/{list_id}/recipients/1"), 403)
    assert error(call(client, token, "PATCH", url=f"/api/v1/lists/{list_id}/recipients/1", json={}), 403)
    assert seed.query(lambda s: s.scalars(select(MailingList.name)).all()) == ["News"]


def test_a_write_token_still_writes(app, client, alice, seed):
    token, _ = make_token(app, alice)
    assert call(client, token, "POST", json={"name": "News"}).status_code == 201


@pytest.mark.parametrize("options,message", [
    ({"scope": "admin"}, "read or write"),
    ({"expires_in": timedelta(0)}, "expiry"),
])
def test_bad_token_options_are_refused(app, alice, options, message):
    with app.app_context():
        with pytest.raises(user_service.UserError, match=message):
            user_service.create_api_token(db.session.get(User, alice), "x", **options)
