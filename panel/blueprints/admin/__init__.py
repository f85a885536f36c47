"""The admin area (/admin): users (create, disable, delete, reset password); an ordinary user gets
a 404 on every page here, exactly as if it did not exist."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, url_for
from flask_login import current_user, login_required

from ...extensions import db
from ...services.admin_users import (add_user, all_users, delete_user, disable_user, enable_user, get_any_user,
                                     reset_password)
from ...services import quotas
from ...services.server_shares import shared_with
from ...services.servers import user_servers
from ...services.users import UserError
from .forms import NewUserForm, QuotaForm

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates")


@bp.before_request
@login_required
def _admins_only() -> None:
    if not current_user.is_admin:
        abort(404)


def _users_page(form: NewUserForm | None = None, created=None, password: str | None = None, status: int = 200):
    return render_template("admin/users.html", users=all_users(), form=form or NewUserForm(formdata=None),
                           created=created, password=password), status


@bp.app_template_global()
def quota_hold(user_id: int) -> str | None:
    """For the campaign page: why the user's letters are held (a used-up day or month), if they are."""
    return quotas.sending_held(user_id)


@bp.get("/")
def index():
    return redirect(url_for("admin.users"))


@bp.get("/users")
def users():
    return _users_page()


@bp.post("/users")
def user_create():
    form = NewUserForm()
    if not form.validate_on_submit():
        return _users_page(form, status=400)
    try:
        user, password = add_user(form.email.data, is_admin=form.is_admin.data)
    except UserError as exc:
        db.session.rollback()
        form.email.errors = [str(exc)[:1].upper() + str(exc)[1:] + "."]
        return _users_page(form, status=400)
    db.session.commit()
    # The password is in this answer only: never flashed into the session cookie, never stored.
    return _users_page(created=user, password=password)


def _user(user_id: int):
    user = get_any_user(user_id)
    if user is None:
        abort(404)
    return user


def _user_page(user, password: str | None = None, error: str | None = None, status: int = 200,
               quota_form: QuotaForm | None = None):
    quota = quotas.quota_of(user.id)
    if quota_form is None:
        quota_form = QuotaForm(formdata=None, obj=quota)
    day, month = quotas.letters_sent(user.id)
    shared = {server.id for server in shared_with(user.id)}
    return render_template("admin/user.html", user=user, password=password, error=error, quota_form=quota_form,
                           sent_today=day, sent_month=month, held=quotas.sending_held(user.id),
                           own_servers=user_servers(current_user), shared=shared), status


def _refused_page(user, message: str):
    db.session.rollback()
    return _user_page(user, error=message[:1].upper() + message[1:] + ".", status=400)


@bp.get("/users/<int:user_id>")
def user_view(user_id: int):
    return _user_page(_user(user_id))


def _refused(user, exc: UserError):
    db.session.rollback()
    return _user_page(user, error=str(exc)[:1].upper() + str(exc)[1:] + ".", status=400)


@bp.post("/users/<int:user_id>/disable")
def user_disable(user_id: int):
    user = _user(user_id)
    try:
        disable_user(current_user._get_current_object(), user)
    except UserError as exc:
        return _refused(user, exc)
    db.session.commit()
    flash(f"{user.email} is disabled: they cannot log in, and their sessions and API tokens are refused.", "success")
    return redirect(url_for("admin.user_view", user_id=user.id))


@bp.post("/users/<int:user_id>/enable")
def user_enable(user_id: int):
    user = _user(user_id)
    enable_user(user)
    db.session.commit()
    flash(f"{user.email} is enabled again.", "success")
    return redirect(url_for("admin.user_view", user_id=user.id))


@bp.post("/users/<int:user_id>/password")
def user_password(user_id: int):
    user = _user(user_id)
    password = reset_password(user)
    db.session.commit()
    return _user_page(user, password=password)


@bp.post("/users/<int:user_id>/delete")
def user_delete(user_id: int):
    user = _user(user_id)
    email = user.email
    try:
        delete_user(current_user._get_current_object(), user)
    except UserError as exc:
        return _refused(user, exc)
    db.session.commit()
    flash(f"{email} was deleted, with their lists, campaigns, servers and domains.", "success")
    return redirect(url_for("admin.users"))


from . import audit_views, quota_views, share_views  # noqa: E402,F401  (their views join this blueprint)
