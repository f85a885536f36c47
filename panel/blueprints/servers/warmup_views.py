"""A source IP's warm-up on the server page (services/warmup.py): on or off, when its day 1 began,
its schedule as text. A change bumps the config version; the daemon pushes it to the agent."""

from __future__ import annotations

import json

from flask import abort, flash, redirect, render_template, request, url_for

from ...extensions import db
from ...services.servers import ServerError
from ...services.warmup import WarmupInput, parse_schedule_text, parse_start, schedule_text, set_warmup
from . import _own_server, bp, page_context
from .settings import APPLIED_LATER


@bp.context_processor
def _warmup_helpers() -> dict:
    def warmup_text(ip) -> str:
        return "" if ip.warmup_schedule is None else schedule_text(json.loads(ip.warmup_schedule))
    return {"warmup_text": warmup_text}


@bp.post("/<int:server_id>/ips/<int:ip_id>/warmup")
def change_warmup(server_id: int, ip_id: int):
    server = _own_server(server_id)
    ip = next((item for item in server.ips if item.id == ip_id), None)
    if ip is None:
        abort(404)
    enabled = request.form.get("enabled") == "y"
    start_text = request.form.get("start", "").strip()
    try:
        start = parse_start(start_text, "the start date") if start_text else None
        schedule = parse_schedule_text(request.form.get("schedule", ""))
        set_warmup(server, ip, WarmupInput(enabled, start, schedule, default=schedule is None))
    except ServerError as exc:
        db.session.rollback()
        return render_template("servers/view.html", **page_context(server),
                               warmup_error=(ip_id, str(exc), request.form)), 400
    db.session.commit()
    if ip.warmup_start is None:
        flash(f"{ip.ip} no longer follows a warm-up schedule; {APPLIED_LATER}.", "success")
    else:
        flash(f"{ip.ip} follows its warm-up schedule from {ip.warmup_start:%Y-%m-%d %H:%M} UTC; {APPLIED_LATER}.",
              "success")
    return redirect(url_for("servers.view", server_id=server.id) + "#warmup")
