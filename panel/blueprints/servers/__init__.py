"""Sending servers: the user's servers and what happened to each."""

from __future__ import annotations

from flask import Blueprint, abort, render_template
from flask_login import current_user, login_required

from ...services.servers import get_server, server_events, user_servers

bp = Blueprint("servers", __name__, url_prefix="/servers", template_folder="templates")


@bp.before_request
@login_required
def _require_login() -> None:
    pass


@bp.get("/")
def index():
    return render_template("servers/index.html", servers=user_servers(current_user))


@bp.get("/<int:server_id>")
def view(server_id: int):
    server = get_server(current_user, server_id)
    if server is None:
        abort(404)
    return render_template("servers/view.html", server=server, events=server_events(server))
