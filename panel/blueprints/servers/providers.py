"""A server's limits per (source IP, mailbox provider) and its provider table (services/provider_limits.py).

Each change bumps the server's config version; the daemon pushes them on its next round.
"""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, url_for

from ...extensions import db
from ...services import provider_limits
from ...services.provider_limits import ProviderLimitInput
from ...services.servers import ServerError
from . import _own_server, bp, page_context
from .forms import ProviderLimitForm, ProviderTableForm
from .settings import APPLIED_LATER


def _describe(row) -> str:
    parts = [f"{value} {provider_limits.WORDS[name]}" for name in provider_limits.RANGES
             if (value := getattr(row, name)) is not None]
    return ", ".join(parts)


@bp.context_processor
def _provider_forms() -> dict:
    return {"new_provider_limit_form": ProviderLimitForm, "provider_view": _provider_view}


def _provider_view(server) -> dict:
    table = provider_limits.provider_table(server)
    return {"limits": provider_limits.limits_shown(server), "table": table,
            "table_text": provider_limits.table_text(table), "built_in": provider_limits.table_is_built_in(server)}


def _page_with_errors(server, **forms):
    db.session.rollback()
    return render_template("servers/view.html", **page_context(server), **forms), 400


@bp.post("/<int:server_id>/provider-limits")
def add_provider_limit(server_id: int):
    server = _own_server(server_id)
    form = ProviderLimitForm(server)
    if form.validate_on_submit():
        try:
            row, created = provider_limits.set_provider_limit(server, ProviderLimitInput(
                form.source_ip.data, form.provider.data, form.per_minute.data, form.per_hour.data,
                form.connections.data, form.per_connection.data))
        except ServerError as exc:
            form.provider.errors.append(str(exc))
        else:
            db.session.commit()
            flash(f"Provider limit {'added' if created else 'changed'}: from {row.source_ip} to {row.provider}, "
                  f"{_describe(row)}; {APPLIED_LATER}.", "success")
            return redirect(url_for("servers.view", server_id=server.id) + "#providers")
    return _page_with_errors(server, provider_form=form)


@bp.post("/<int:server_id>/provider-limits/<int:limit_id>/remove")
def delete_provider_limit(server_id: int, limit_id: int):
    server = _own_server(server_id)
    try:
        row = provider_limits.remove_provider_limit(server, limit_id)
    except ServerError:
        db.session.rollback()
        abort(404)
    db.session.commit()
    flash(f"Provider limit from {row.source_ip} to {row.provider} removed (the built-in default applies again, "
          f"if {row.provider} has one); {APPLIED_LATER}.", "success")
    return redirect(url_for("servers.view", server_id=server.id) + "#providers")


@bp.post("/<int:server_id>/providers")
def change_provider_table(server_id: int):
    server = _own_server(server_id)
    form = ProviderTableForm()
    if form.validate_on_submit():
        try:
            changed = provider_limits.set_provider_table(server, provider_limits.parse_table_text(form.table.data or ""))
        except ServerError as exc:
            form.table.errors.append(str(exc))
        else:
            db.session.commit()
            flash(f"Provider table {'saved' if changed else 'unchanged'}; {APPLIED_LATER}." if changed
                  else "The provider table is unchanged.", "success")
            return redirect(url_for("servers.view", server_id=server.id) + "#providers")
    return _page_with_errors(server, table_form=form)


@bp.post("/<int:server_id>/providers/reset")
def reset_provider_table(server_id: int):
    server = _own_server(server_id)
    try:
        changed = provider_limits.set_provider_table(server, None)
    except ServerError as exc:
        db.session.rollback()
        flash(f"The built-in provider table was not restored: {exc}.", "error")
        return redirect(url_for("servers.view", server_id=server.id) + "#providers")
    db.session.commit()
    flash(f"This server uses the built-in provider table; {APPLIED_LATER}." if changed
          else "This server already uses the built-in provider table.", "success")
    return redirect(url_for("servers.view", server_id=server.id) + "#providers")
