"""The server page's "New agent key" button: the daemon hands the agent a new key at its next round."""

from __future__ import annotations

from flask import flash, redirect, url_for

from ...extensions import db
from ...services.agent_keys import request_rotation
from . import _own_server, bp


@bp.post("/<int:server_id>/rotate-key")
def rotate_key(server_id: int):
    server = _own_server(server_id)
    if not server.ready:
        flash("This server has no running agent yet: a new agent key can be given once it is set up.", "error")
    elif request_rotation(server):
        db.session.commit()
        flash("The daemon hands the agent a new agent key at its next round; the events below say when it took it.",
              "success")
    else:
        flash("A new agent key already waits for the daemon's next round.", "success")
    return redirect(url_for("servers.view", server_id=server.id))
