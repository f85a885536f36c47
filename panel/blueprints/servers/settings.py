"""A server's settings that reach its agent without Ansible: HELO names and rate limits.

Each change bumps the server's config version; the daemon pushes the settings on its next round.
Each IP's weight and whether it is active are set here too; they stay in the panel (the daemon's
choice of IP per letter) and bump nothing.
"""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, url_for

from ...extensions import db
from ...services.server_config import IpUse, RateLimitInput, remove_rate_limit, set_helo, set_ip_use, set_rate_limit
from ...services.servers import ServerError
from . import _own_server, bp, page_context
from .forms import HeloForm, IpUseForm, RateLimitForm

APPLIED_LATER = "the daemon sends it to the agent within a few seconds"


@bp.context_processor
def _settings_forms() -> dict:
    return {"new_rate_limit_form": RateLimitForm, "helo_form": HeloForm, "ip_use_form": IpUseForm}


def _page_with_errors(server, **forms):
    db.session.rollback()
    return render_template("servers/view.html", **page_context(server), **forms), 400


@bp.post("/<int:server_id>/ips/<int:ip_id>/helo")
def change_helo(server_id: int, ip_id: int):
    server = _own_server(server_id)
    if not any(ip.id == ip_id for ip in server.ips):
        abort(404)
    form = HeloForm()
    if form.validate_on_submit():
        try:
            item = set_helo(server, ip_id, form.helo.data)
        except ServerError as exc:
            form.helo.errors.append(str(exc))
        else:
            db.session.commit()
            flash(f"{item.ip} now greets as {item.helo}: {APPLIED_LATER}.", "success")
            return redirect(url_for("servers.view", server_id=server.id) + "#settings")
    return _page_with_errors(server, failed_helo=(ip_id, form))


@bp.post("/<int:server_id>/ips/<int:ip_id>/weight")
def change_ip_use(server_id: int, ip_id: int):
    server = _own_server(server_id)
    if not any(ip.id == ip_id for ip in server.ips):
        abort(404)
    form = IpUseForm()
    if form.validate_on_submit():
        try:
            change = set_ip_use(server, ip_id, IpUse(form.weight.data, form.active.data))
        except ServerError as exc:
            form.weight.errors.append(str(exc))
        else:
            db.session.commit()
            flash(f"{change.describe()}.", "success")
            return redirect(url_for("servers.view", server_id=server.id) + "#settings")
    return _page_with_errors(server, failed_ip_use=(ip_id, form))


@bp.post("/<int:server_id>/rate-limits")
def add_rate_limit(server_id: int):
    server = _own_server(server_id)
    form = RateLimitForm(server)
    if form.validate_on_submit():
        try:
            rule, created = set_rate_limit(server, RateLimitInput(form.source_ip.data, form.domain.data,
                                                                  form.per_minute.data))
        except ServerError as exc:
            form.domain.errors.append(str(exc))
        else:
            db.session.commit()
            what = "added" if created else "changed"
            flash(f"Rate limit {what}: {rule.per_minute} letters a minute from {rule.source_ip} to {rule.domain}; "
                  f"{APPLIED_LATER}.", "success")
            return redirect(url_for("servers.view", server_id=server.id) + "#settings")
    return _page_with_errors(server, rate_form=form)


@bp.post("/<int:server_id>/rate-limits/<int:limit_id>/remove")
def delete_rate_limit(server_id: int, limit_id: int):
    server = _own_server(server_id)  # CSRF: checked for every POST by CSRFProtect
    try:
        rule = remove_rate_limit(server, limit_id)
    except ServerError:
        db.session.rollback()
        abort(404)
    db.session.commit()
    flash(f"Rate limit from {rule.source_ip} to {rule.domain} removed; {APPLIED_LATER}.", "success")
    return redirect(url_for("servers.view", server_id=server.id) + "#settings")
