"""The account page: change the password, make and revoke API tokens (on the `auth` blueprint)."""

from __future__ import annotations

from datetime import timedelta

from flask import abort, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user

from ...extensions import db
from ...models.base import utcnow
from ...services import login_throttle
from ...services.users import (UserError, change_password, create_api_token, get_api_token, revoke_api_token,
                               user_tokens)
from . import bp, reserve_attempt, too_many_failures
from .forms import PasswordForm, TokenForm


def _context(password_form: PasswordForm | None = None, token_form: TokenForm | None = None,
             new_token: str | None = None) -> dict:
    return {"tokens": user_tokens(current_user), "now": utcnow(), "new_token": new_token,
            "password_form": password_form or PasswordForm(formdata=None),
            "token_form": token_form or TokenForm(formdata=None)}  # fresh forms, not the one just posted


def _page(**kwargs):
    return render_template("auth/account.html", **_context(**kwargs))


@bp.get("/account")
@login_required
def account():
    return _page()


@bp.post("/account/password")
@login_required
def account_password():
    form = PasswordForm()
    if not form.validate_on_submit():
        return _page(password_form=form)
    user = current_user._get_current_object()
    # The current password is checked like a login: the same counts, so no guessing (nor hashing) spree here.
    wait = reserve_attempt(user.email)
    if wait:
        return too_many_failures("auth/account.html", wait, **_context(password_form=form))
    try:
        change_password(user, form.current_password.data, form.new_password.data)
    except UserError as exc:  # nothing changed; the attempt stays counted as a failure
        message = str(exc)
        form.current_password.errors = [message[:1].upper() + message[1:] + "."]
        return _page(password_form=form)
    login_throttle.succeeded(user.email, request.remote_addr)
    db.session.commit()
    remembered = current_app.config.get("REMEMBER_COOKIE_NAME", "remember_token") in request.cookies
    login_user(user, remember=remembered)  # this session (and its remember cookie) under the new generation
    flash("Your password was changed; every other session of your account was logged out.", "success")
    return redirect(url_for("auth.account"))


@bp.post("/account/tokens")
@login_required
def account_token_create():
    form = TokenForm()
    if not form.validate_on_submit():
        return _page(token_form=form)
    days = form.expires_days.data
    try:
        token = create_api_token(current_user, form.name.data, scope=form.scope.data,
                                 expires_in=timedelta(days=days) if days else None)
    except UserError as exc:
        db.session.rollback()
        form.name.errors = [str(exc)]
        return _page(token_form=form)
    db.session.commit()
    # Shown in this answer only (never flashed into the session cookie, never stored).
    return _page(new_token=token)


@bp.post("/account/tokens/<int:token_id>/revoke")
@login_required
def account_token_revoke(token_id: int):
    api_token = get_api_token(token_id, current_user)
    if api_token is None:
        abort(404)
    if revoke_api_token(api_token):
        flash(f"The token {api_token.name!r} is revoked: requests with it are refused from now on.", "success")
    db.session.commit()
    return redirect(url_for("auth.account"))
