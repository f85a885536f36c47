"""Logging in and out (session cookies, Flask-Login)."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required, login_user, logout_user

from ...extensions import login_manager
from ...models import User
from ...services.users import authenticate, get_user
from .forms import LoginForm

bp = Blueprint("auth", __name__, template_folder="templates")


def _load_user(user_id: str) -> User | None:
    return get_user(int(user_id)) if user_id.isdigit() else None


def init_login() -> None:
    login_manager.user_loader(_load_user)
    login_manager.login_view = "auth.login"
    login_manager.login_message = "Log in to see that page."
    login_manager.login_message_category = "info"


def _safe_next(target: str | None) -> str | None:
    """Only a path on this site: never an open redirect."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    return target


@bp.get("/")
def home():
    return redirect(url_for("campaigns.index" if current_user.is_authenticated else "auth.login"))


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("campaigns.index"))
    form = LoginForm()
    if form.validate_on_submit():
        user = authenticate(form.email.data, form.password.data)
        if user is not None:
            login_user(user, remember=form.remember.data)
            return redirect(_safe_next(request.args.get("next")) or url_for("campaigns.index"))
        flash("That e-mail and password do not match an account.", "error")
    return render_template("auth/login.html", form=form)


@bp.post("/logout")
@login_required
def logout():
    # A POST, so CSRFProtect has checked its token: no other site can log you out.
    logout_user()
    flash("You are logged out.", "info")
    return redirect(url_for("auth.login"))
