"""The unsubscribe link in every letter: no login, the token in the URL is the proof.

GET shows a page with a button (mail scanners follow links; only a person presses the
button); POST unsubscribes, including the RFC 8058 one-click POST mail clients send with
the body `List-Unsubscribe=One-Click`. Both answer with a page, never a redirect. A token
answers only on the panel's public host (where the letters' links point) or its campaign's
tracking domains; a refused token is the 404 page, or 429 for an address that sent too many
(as on /c/ and /o/). A genuine token is never held back: repeating it changes nothing.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, request

from ...extensions import db
from ...services.tracking import tracking_state
from ...services.unsubscribe import delivery_for_token, unsubscribe
from ..tracking import refuse_token

bp = Blueprint("unsubscribe", __name__, url_prefix="/u", template_folder="templates")


def _delivery(token: str):
    delivery = delivery_for_token(current_app.config["SECRET_KEY"], token, request.environ.get("HTTP_HOST"),
                                  tracking_state(current_app).hosts)
    if delivery is None:
        refuse_token()
    return delivery


@bp.get("/<token>")
def confirm(token: str):
    delivery = _delivery(token)
    return render_template("unsubscribe/confirm.html", email=delivery.email, token=token,
                           done=delivery.unsubscribed_at is not None)


@bp.post("/<token>")
def unsubscribe_now(token: str):
    delivery = _delivery(token)
    unsubscribe(delivery)
    db.session.commit()
    return render_template("unsubscribe/done.html", email=delivery.email)
