"""The servers an admin lends to a user, on the user's admin page (on the `admin` blueprint)."""

from __future__ import annotations

from flask import flash, redirect, request, url_for
from flask_login import current_user

from ...extensions import db
from ...services.server_shares import ShareError, share_servers
from . import _refused_page, _user, bp


@bp.post("/users/<int:user_id>/servers")
def user_servers(user_id: int):
    user = _user(user_id)
    wanted = request.form.getlist("servers")
    try:
        if not all(item.isdigit() and len(item) < 12 for item in wanted):
            raise ShareError("choose servers from the list")
        shared = share_servers(current_user._get_current_object(), user, [int(item) for item in wanted])
    except ShareError as exc:
        return _refused_page(user, str(exc))
    db.session.commit()
    names = ", ".join(server.name for server in shared) or "none of your servers"
    flash(f"{user.email} may now send through {names}.", "success")
    return redirect(url_for("admin.user_view", user_id=user.id))
