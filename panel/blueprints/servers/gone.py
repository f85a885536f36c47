"""The server page's "Declare gone" button: a server that will not come back gives its letters up."""

from __future__ import annotations

from flask import flash, redirect, url_for

from ...extensions import db
from ...services.failover import declare_gone
from ...services.servers import ServerError
from . import _own_server, bp


@bp.post("/<int:server_id>/gone")
def gone(server_id: int):
    server = _own_server(server_id)
    try:
        report = declare_gone(server)
    except ServerError as exc:
        db.session.rollback()
        flash(f"“{server.name}” was not declared gone: {exc}.", "error")
        return redirect(url_for("servers.view", server_id=server.id))
    db.session.commit()
    flash(f"“{server.name}” is declared gone: {report.resent} letters went back to their campaigns for your other "
          f"servers. {report.may_repeat} of them were on its agent and may arrive twice if it ever comes back. "
          f"{report.unknown} letters its Exim had taken are marked failed (their outcome will never be known).",
          "success")
    return redirect(url_for("servers.view", server_id=server.id))
