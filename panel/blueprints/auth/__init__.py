"""Logging in and out (session cookies, Flask-Login), failed logins throttled, and the account
page (password change, API tokens: account.py).

A session's user id is "<user id>:<session generation>" (User.get_id); logout and a password
change bump the generation, so a session or remember cookie copied before is refused after.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy.exc import SQLAlchemyError

from ...extensions import db, login_manager
from ...services import audit, login_throttle
from ...services.dashboard import dashboard
from ...services.users import authenticate, end_sessions, load_session_user
from .forms import LoginForm

bp = Blueprint("auth", __name__, template_folder="templates")


def init_login() -> None:
    login_manager.user_loader(load_session_user)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Log in to see that page."
    login_manager.login_message_category = "info"


@bp.after_app_request
def _strict_transport_security(response: Response) -> Response:
    """HSTS on every response of a panel served over https: browsers then never try http again."""
    if current_app.config["PUBLIC_URL"].lower().startswith("https://"):
        response.headers.setdefault("Strict-Transport-Security", f"max-age={int(current_app.config['HSTS_MAX_AGE'])}")
    return response


def _safe_next(target: str | None) -> str | None:
    """Only a path on this site: never an open redirect."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


def reserve_attempt(email: str) -> float:
    """Count a password check before it is made (login_throttle.reserve), committed so every worker
    sees it; old counts are then pruned in a transaction of their own, whose failure is harmless."""
    wait = login_throttle.reserve(email, request.remote_addr)
    db.session.commit()
    try:
        login_throttle.prune()
        db.session.commit()
    except SQLAlchemyError:  # a deadlock with another prune: the next attempt prunes
        db.session.rollback()
    return wait


def too_many_failures(template: str, wait: float, **context) -> tuple[str, int, dict[str, str]]:
    """The page again with a 429 and Retry-After, answered without checking any password."""
    seconds = login_throttle.retry_after(wait)
    flash(f"Too many failed logins: try again in {seconds} s.", "error")
    return render_template(template, **context), 429, {"Retry-After": str(seconds)}


@bp.get("/")
def home():
    """The dashboard (services/dashboard.py); the campaign list is at /campaigns/."""
    if not current_user.is_authenticated:
        return redirect(url_for("auth.login"))
    return render_template("dashboard.html", board=dashboard(current_user))


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("auth.home"))
    form = LoginForm()
    if form.validate_on_submit():
        wait = reserve_attempt(form.email.data)
        if wait:
            _note_failure(form.email.data, "throttled: no password was checked")
            return too_many_failures("auth/login.html", wait, form=form)
        user = authenticate(form.email.data, form.password.data)
        if user is not None and user.disabled_at is not None:  # told only to whoever knows the password
            _note_failure(form.email.data, "the account is disabled")
            flash("This account is disabled: ask the panel's admin to enable it.", "error")
            return render_template("auth/login.html", form=form)
        if user is not None:
            login_throttle.succeeded(form.email.data, request.remote_addr)
            audit.record("login", actor_id=user.id, actor_email=user.email, address=request.remote_addr)
            db.session.commit()
            login_user(user, remember=form.remember.data)
            return redirect(_safe_next(request.args.get("next")) or url_for("auth.home"))
        _note_failure(form.email.data, "wrong e-mail or password")
        flash("That e-mail and password do not match an account.", "error")
    return render_template("auth/login.html", form=form)


def _note_failure(email: str, why: str) -> None:
    """A failed login in the audit log, under the address tried (committed on its own)."""
    audit.record("login.failed", detail=why, actor_email=email.strip().lower(), address=request.remote_addr)
    db.session.commit()


@bp.post("/logout")
@login_required
def logout():
    # A POST, so CSRFProtect has checked its token: no other site can log you out.
    end_sessions(current_user)  # every copy of this session's cookies (and the remember cookie) too
    db.session.commit()
    logout_user()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))


from . import account  # noqa: E402,F401  (its views join this blueprint)
