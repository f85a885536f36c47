"""The unsubscribe link in every letter: no login, the token in the URL is the proof.

GET shows a page with a button (mail scanners follow links; only a person presses the
button); POST unsubscribes, including the RFC 8058 one-click POST mail clients send with
the body `List-Unsubscribe=One-Click`. Both answer with a page, never a redirect.
"""

from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template

from ...extensions import db
from ...services.unsubscribe import delivery_for_token, unsubscribe

bp = Blueprint("unsubscribe", __name__, url_prefix="/u", template_folder="templates")


def _delivery(token: str):
    delivery = delivery_for_token(current_app.config["SECRET_KEY"], token)
    if delivery is None:
        abort(404)
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
