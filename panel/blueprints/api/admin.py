"""The admin API under /api/v1/admin/: users (list, create, show, disable, enable, reset password,
delete). Every route under that prefix is refused with a 404 to a token of an ordinary user, by
one check on the prefix, so a route added here later cannot forget it."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify, request, stream_with_context

from ...extensions import db
from ...models import User
from ...services.admin_users import (add_user, all_users, delete_user, disable_user, enable_user, get_any_user,
                                     reset_password)
from ...services import audit, quotas
from ...services.server_shares import ShareError, share_servers, shared_with
from ...services.users import UserError
from . import ApiError, _json_object, bp

ADMIN_PREFIX = f"{bp.url_prefix}/admin"


@bp.before_request
def _admins_only() -> None:
    """Runs after _authenticate (registered later): g.api_user is the token's owner."""
    if (request.path == ADMIN_PREFIX or request.path.startswith(ADMIN_PREFIX + "/")) and not g.api_user.is_admin:
        raise ApiError(404, "there is nothing at this address: check the URL and the id")


def user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "is_admin": user.is_admin, "disabled": user.disabled_at is not None,
            "disabled_at": user.disabled_at.isoformat() + "Z" if user.disabled_at else None,
            "created_at": user.created_at.isoformat() + "Z"}


def _user(user_id: int) -> User:
    user = get_any_user(user_id)
    if user is None:
        raise ApiError(404, f"there is no user {user_id}: GET /api/v1/admin/users lists them")
    return user


def _refused(exc: UserError):
    db.session.rollback()
    return ApiError(400, str(exc))


@bp.get("/admin/users")
def admin_users():
    return jsonify(users=[user_json(user) for user in all_users()])


@bp.post("/admin/users")
def admin_user_create():
    """{"email": …, "is_admin": false}: the new user, with "password" (generated, shown only here)."""
    data = _json_object()
    email, is_admin = data.get("email"), data.get("is_admin", False)
    if not isinstance(email, str) or not isinstance(is_admin, bool):
        raise ApiError(400, 'send {"email": "name@example.com"} and optionally "is_admin": true or false')
    try:
        user, password = add_user(email, is_admin=is_admin)
    except UserError as exc:
        raise _refused(exc) from None
    db.session.commit()
    return jsonify({**user_json(user), "password": password}), 201


@bp.get("/admin/users/<int:user_id>")
def admin_user(user_id: int):
    return jsonify(user_json(_user(user_id)))


@bp.post("/admin/users/<int:user_id>/disable")
def admin_user_disable(user_id: int):
    user = _user(user_id)
    try:
        disable_user(g.api_user, user)
    except UserError as exc:
        raise _refused(exc) from None
    db.session.commit()
    return jsonify(user_json(user))


@bp.post("/admin/users/<int:user_id>/enable")
def admin_user_enable(user_id: int):
    user = _user(user_id)
    enable_user(user)
    db.session.commit()
    return jsonify(user_json(user))


@bp.post("/admin/users/<int:user_id>/password")
def admin_user_password(user_id: int):
    """A new generated password ("password", shown only here); the user's sessions end."""
    user = _user(user_id)
    password = reset_password(user)
    db.session.commit()
    return jsonify({**user_json(user), "password": password})


@bp.delete("/admin/users/<int:user_id>")
def admin_user_delete(user_id: int):
    user = _user(user_id)
    try:
        delete_user(g.api_user, user)
    except UserError as exc:
        raise _refused(exc) from None
    db.session.commit()
    return "", 204


@bp.get("/admin/audit")
def admin_audit():
    """The audit log, newest first: ?q= (text in who, action, object, detail, address), ?action=,
    ?before=<id> (the next page: "next_before" of this one), ?format=csv for all matching entries."""
    q, action = request.args.get("q", "")[:200], request.args.get("action", "")[:40]
    if request.args.get("format") == "csv":
        return Response(stream_with_context(audit.csv_lines(q, action)), mimetype="text/csv",
                        headers={"Content-Disposition": 'attachment; filename="audit-log.csv"'})
    before = request.args.get("before", "")
    if before and not (before.isdigit() and len(before) < 12):
        raise ApiError(400, "before must be an entry id (the next_before of the previous page)")
    entries = list(audit.search(q, action, int(before) if before else None))
    return jsonify(entries=[audit.entry_json(entry) for entry in entries],
                   next_before=entries[-1].id if len(entries) == audit.PAGE_SIZE else None)


@bp.get("/admin/users/<int:user_id>/quota")
def admin_user_quota(user_id: int):
    """The user's quotas (null: no limit) and the letters handed to servers today and this month."""
    user = _user(user_id)
    day, month = quotas.letters_sent(user.id)
    return jsonify({**quotas.quota_json(quotas.quota_of(user.id)), "sent_today": day, "sent_this_month": month})


@bp.put("/admin/users/<int:user_id>/quota")
def admin_user_quota_put(user_id: int):
    """Set the quotas named in the body ({"letters_per_day": 1000, "lists": null, …}); the others stay."""
    user = _user(user_id)
    try:
        quotas.set_quota(user.id, _json_object())
    except quotas.QuotaError as exc:
        db.session.rollback()
        raise ApiError(400, str(exc)) from None
    db.session.commit()
    return admin_user_quota(user.id)


def _shares_json(user: User) -> dict[str, Any]:
    return {"servers": [{"id": server.id, "name": server.name} for server in shared_with(user.id)]}


@bp.get("/admin/users/<int:user_id>/servers")
def admin_user_servers(user_id: int):
    """The servers shared with the user."""
    return jsonify(_shares_json(_user(user_id)))


@bp.put("/admin/users/<int:user_id>/servers")
def admin_user_servers_put(user_id: int):
    """{"servers": [ids]}: exactly these of your servers are shared with the user (others taken back)."""
    user = _user(user_id)
    data = _json_object()
    try:
        share_servers(g.api_user, user, data.get("servers") if isinstance(data.get("servers"), list) else [None])
    except ShareError as exc:
        db.session.rollback()
        raise ApiError(400, str(exc)) from None
    db.session.commit()
    return jsonify(_shares_json(user))
