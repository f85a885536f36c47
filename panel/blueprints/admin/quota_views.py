"""A user's quotas on their admin page (on the `admin` blueprint)."""

from __future__ import annotations

from flask import flash, redirect, url_for

from ...extensions import db
from ...models import QUOTA_FIELDS
from ...services import quotas
from . import _user, _user_page, bp
from .forms import QuotaForm


@bp.post("/users/<int:user_id>/quota")
def user_quota(user_id: int):
    user = _user(user_id)
    form = QuotaForm()
    if not form.validate_on_submit():
        return _user_page(user, quota_form=form, status=400)
    try:
        quotas.set_quota(user.id, {name: getattr(form, name).data for name in QUOTA_FIELDS})
    except quotas.QuotaError as exc:
        db.session.rollback()
        return _user_page(user, error=str(exc), quota_form=form, status=400)
    db.session.commit()
    flash(f"The quotas of {user.email} were saved.", "success")
    return redirect(url_for("admin.user_view", user_id=user.id))
