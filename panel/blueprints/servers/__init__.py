"""Sending servers: the user's servers, adding one from its root password, its setup jobs and events."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, jsonify, redirect, render_template, url_for
from flask_login import current_user, login_required

from ...daemon.password_channel import ChannelError, send_password, socket_path
from ...extensions import db
from ...services.provisioning import (
    DAEMON_DOWN,
    active_job,
    add_server,
    delete_server,
    fail_job,
    get_job,
    job_info,
    parse_ip_lines,
    server_jobs,
    start_job,
)
from ...services.sending import server_letters
from ...services import shaping, warmup
from ...services.servers import ServerError, get_server, server_events, user_servers
from .forms import AddServerForm

bp = Blueprint("servers", __name__, url_prefix="/servers", template_folder="templates")

JOB_LABELS = {"reprovision": "Re-provision", "reconfigure": "Reconfigure", "remove": "Remove"}


@bp.before_request
@login_required
def _require_login() -> None:
    pass


@bp.get("/")
def index():
    return render_template("servers/index.html", servers=user_servers(current_user), form=AddServerForm())


@bp.post("/")
def add():
    form = AddServerForm()
    if not form.validate_on_submit():
        form.root_password.data = None
        return render_template("servers/index.html", servers=user_servers(current_user), form=form), 400
    password = form.root_password.data
    form.root_password.data = None
    try:
        server, job = add_server(
            current_user, name=form.name.data, host=form.host.data, ssh_port=form.ssh_port.data,
            ips=parse_ip_lines(form.ips.data),
        )
    except ServerError as exc:
        db.session.rollback()
        form.ips.errors.append(str(exc))
        return render_template("servers/index.html", servers=user_servers(current_user), form=form), 400
    db.session.commit()
    try:
        send_password(socket_path(current_app.instance_path), job.id, password)
    except ChannelError as exc:
        fail_job(job, DAEMON_DOWN if "not running" in str(exc) else f"{exc}; the root password was discarded")
        db.session.commit()
        flash(f"The server was not set up: {job.error}.", "error")
        return redirect(url_for("servers.view", server_id=server.id))
    finally:
        password = None  # noqa: F841
    flash(f"Setting up “{server.name}”: the log below follows the run.", "success")
    return redirect(url_for("servers.view", server_id=server.id))


def _own_server(server_id: int):
    server = get_server(current_user, server_id)
    if server is None:
        abort(404)
    return server


def page_context(server) -> dict:
    """What the server page shows; the settings views add their forms with errors to it."""
    return dict(
        server=server, events=server_events(server), jobs=server_jobs(server),
        busy=active_job(server) is not None, actions=JOB_LABELS, letters=server_letters(server.id),
        shaping=shaping.current(server), warmup={item["source_ip"]: item for item in warmup.current(server)},
    )


@bp.get("/<int:server_id>")
def view(server_id: int):
    server = _own_server(server_id)
    return render_template("servers/view.html", **page_context(server))


@bp.get("/<int:server_id>/jobs.json")
def jobs_json(server_id: int):
    server = _own_server(server_id)
    return jsonify(
        server={"id": server.id, "status": server.status, "host_key_fingerprint": server.host_key_fingerprint,
                "cert_fingerprint": server.cert_fingerprint},
        jobs=[job_info(job) for job in server_jobs(server)],
    )


@bp.get("/jobs/<int:job_id>.json")
def job_json(job_id: int):
    job = get_job(current_user, job_id)
    if job is None:
        abort(404)
    return jsonify(job_info(job))


@bp.post("/<int:server_id>/<any(reprovision, reconfigure, remove):kind>")
def run_job(server_id: int, kind: str):
    server = _own_server(server_id)
    try:
        start_job(current_user, server, kind)
    except ServerError as exc:
        db.session.rollback()
        flash(f"{JOB_LABELS[kind]}: {exc}.", "error")
        return redirect(url_for("servers.view", server_id=server.id))
    db.session.commit()
    flash(f"{JOB_LABELS[kind]} queued: the log below follows the run.", "success")
    return redirect(url_for("servers.view", server_id=server.id))


from . import gone, keys, providers, settings, warmup_views  # noqa: E402,F401  (register their views on bp)


@bp.post("/<int:server_id>/delete")
def delete(server_id: int):
    server = _own_server(server_id)
    name = server.name
    try:
        lost = delete_server(current_user, server)
    except ServerError as exc:
        db.session.rollback()
        flash(f"“{name}” was not deleted: {exc}.", "error")
        return redirect(url_for("servers.view", server_id=server_id))
    db.session.commit()
    note = f" {lost} letters assigned to it had no outcome yet and are marked failed." if lost else ""
    flash(f"“{name}” is deleted; its campaigns' history is kept.{note}", "success")
    return redirect(url_for("servers.index"))