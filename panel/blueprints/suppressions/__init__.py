"""The user's suppression list: search it, add or remove an address, import a file of addresses
as "manual", export it as CSV."""

from __future__ import annotations

import tempfile
from pathlib import Path

from flask import Blueprint, abort, Response, current_app, flash, redirect, render_template, request, stream_with_context, url_for
from flask_login import current_user, login_required

from ...extensions import db
from ...services.csv_import import ImportFailed, ImportOptions, import_suppressions
from ...services.imports.sources import ImportLimits
from ...services.suppressions import (REASONS, SuppressionError, add_suppression, export_suppressions,
                                      find_suppression, remove_suppression, search_suppressions)
from .forms import AddSuppressionForm, ImportSuppressionsForm

bp = Blueprint("suppressions", __name__, url_prefix="/suppressions", template_folder="templates")
REJECTED_SHOWN = 100


@bp.before_request
@login_required
def _require_login() -> None:
    pass


def _page(add_form=None, import_form=None, report=None, status=200):
    search = request.args.get("q", "")
    page = search_suppressions(current_user, search, request.args.get("after"))
    return render_template("suppressions/index.html", page=page, search=search, reasons=REASONS,
                           add_form=add_form or AddSuppressionForm(), import_form=import_form or ImportSuppressionsForm(),
                           report=report), status


@bp.get("/")
def index():
    return _page()


@bp.post("/")
def add():
    form = AddSuppressionForm()
    if not form.validate_on_submit():
        return _page(add_form=form, status=400)
    try:
        entry, added = add_suppression(current_user, form.email.data)
    except SuppressionError as exc:
        form.email.errors.append(str(exc))
        return _page(add_form=form, status=400)
    db.session.commit()
    flash(f"{entry.email} is suppressed." if added else f"{entry.email} was already suppressed ({REASONS[entry.reason]}).",
          "success")
    return redirect(url_for("suppressions.index"))


@bp.post("/<int:entry_id>/remove")
def remove(entry_id: int):
    entry = find_suppression(current_user, str(entry_id))
    if entry is None:  # none, or another user's: the same 404 (issue 10 point 12)
        abort(404)
    email = entry.email
    remove_suppression(current_user, entry)
    db.session.commit()
    flash(f"{email} may be mailed again.", "success")
    return redirect(url_for("suppressions.index", q=request.args.get("q") or None))


@bp.post("/import")
def import_file():
    form = ImportSuppressionsForm()
    if not form.validate_on_submit():
        return _page(import_form=form, status=400)
    upload = form.file.data
    options = ImportOptions(limits=ImportLimits.from_config(current_app.config), keep_rejected=REJECTED_SHOWN)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "upload"
        upload.save(path)
        try:
            report = import_suppressions(current_user.id, path, upload.filename or "upload", options)
        except ImportFailed as exc:
            db.session.rollback()
            form.file.errors.append(f"Nothing was imported: {exc}.")
            return _page(import_form=form, status=400)
    db.session.commit()
    flash(f"{report.added:,} addresses suppressed, {report.duplicates:,} already were, "
          f"{report.rejected_count:,} rows rejected.", "success")
    if report.rejected:
        return _page(report=report)
    return redirect(url_for("suppressions.index"))


@bp.get("/export.csv")
def export():
    return Response(stream_with_context(export_suppressions(current_user)), mimetype="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="suppressions.csv"'})


from . import tidy_views  # noqa: E402,F401  (deleting many entries: on this blueprint)
