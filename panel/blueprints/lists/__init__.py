"""Mailing lists: list, create, view, import a file (CSV, text, ZIP or RAR) with a progress bar."""

from __future__ import annotations

from flask import (Blueprint, Response, abort, current_app, flash, jsonify, redirect, render_template, request,
                   stream_with_context, url_for)
from flask_login import current_user, login_required
from werkzeug.exceptions import RequestEntityTooLarge

from ...extensions import csrf, db
from ...models import ImportJob
from ...services.imports.jobs import (UploadTooLarge, create_job, imports_dir, job_file, job_progress, report_pruned,
                                      start_job, too_large_message)
from ...services.imports.report import csv_rows, read_spool, spool_items
from ...services.imports.sources import ImportLimits
from ...services.lists import ListError, archived_list_count, create_list, get_list, recipients_page, user_lists
from ...services.recipients import export_list
from .forms import ImportForm, NewListForm

bp = Blueprint("lists", __name__, url_prefix="/lists", template_folder="templates")
REJECTED_SHOWN = 200
FORM_OVERHEAD = 1 << 20  # the multipart envelope and the other fields around the file


@bp.before_request
@login_required
def _require_login() -> None:
    pass


def _own_list(list_id: int):
    mailing_list = get_list(current_user, list_id)
    if mailing_list is None:
        abort(404)
    return mailing_list


def _own_job(list_id: int, job_id: int) -> ImportJob:
    job = db.session.get(ImportJob, job_id)
    if job is None or job.list_id != list_id or job.user_id != current_user.id:
        abort(404)
    return job


def _index(form: NewListForm, status: int = 200):
    archived = request.args.get("archived") == "1"
    return render_template("lists/index.html", lists=user_lists(current_user, archived), form=form, archived=archived,
                           archived_count=archived_list_count(current_user)), status


@bp.get("/")
def index():
    return _index(NewListForm())


@bp.post("/")
def create():
    form = NewListForm()
    if form.validate_on_submit():
        try:
            mailing_list = create_list(current_user, form.name.data)
        except ListError as exc:
            form.name.errors.append(str(exc))
        else:
            db.session.commit()
            flash(f"List “{mailing_list.name}” created. Now import its recipients.", "success")
            return redirect(url_for("lists.import_file", list_id=mailing_list.id))
    return _index(form, 400)


@bp.get("/<int:list_id>")
def view(list_id: int):
    mailing_list = _own_list(list_id)
    page = request.args.get("page", 1, type=int) or 1
    recipients, has_next = recipients_page(mailing_list, page)
    return render_template(
        "lists/view.html", mailing_list=mailing_list, recipients=recipients, page=page, has_next=has_next
    )


def _wants_json() -> bool:
    return request.accept_mimetypes.best == "application/json"


def _job_page_data(job: ImportJob) -> dict:
    directory = imports_dir(current_app)
    progress = job_progress(job, directory, float(current_app.config.get("IMPORT_STALE_SECONDS", 120)))
    db.session.commit()  # a stale job just marked failed
    rejected = read_spool(job_file(directory, job.id, "rejected.jsonl"), REJECTED_SHOWN) if job.finished else []
    pruned_after = ImportLimits.from_config(current_app.config).report_days if report_pruned(job, directory) else None
    return {"job": job, "progress": progress, "rejected": rejected, "shown": REJECTED_SHOWN, "pruned_after": pruned_after}


@csrf.exempt  # the form checks its own CSRF token, after the upload limit below is raised for this view
@bp.route("/<int:list_id>/import", methods=["GET", "POST"])
def import_file(list_id: int):
    mailing_list = _own_list(list_id)
    limits = ImportLimits.from_config(current_app.config)
    request.max_content_length = limits.max_upload + FORM_OVERHEAD
    try:
        form = ImportForm()
        submitted = form.validate_on_submit()
    except RequestEntityTooLarge:
        abort(413, too_large_message(limits))
    page = {"mailing_list": mailing_list, "form": form, "limit_mb": limits.max_upload >> 20}
    if not submitted:
        if form.csrf_token.errors:
            form.file.errors.append("The form had expired or did not come from this site: reload the page and try again.")
        return render_template("lists/import.html", **page), 400 if form.is_submitted() else 200
    upload = form.file.data
    try:
        job = create_job(current_user, mailing_list, upload.filename, upload.stream, imports_dir(current_app), limits,
                         check_mx=form.check_mx.data, all_or_nothing=form.all_or_nothing.data)
    except UploadTooLarge as exc:
        db.session.rollback()
        abort(413, str(exc))
    finally:
        upload.stream.close()
    db.session.commit()
    job_url = url_for("lists.import_job", list_id=list_id, job_id=job.id)
    thread = start_job(current_app._get_current_object(), job.id)
    if _wants_json():
        return jsonify(url=job_url, progress=url_for("lists.import_job_json", list_id=list_id, job_id=job.id)), 202
    # Without the page's script: wait a little, so a small file's report comes with this response.
    thread.join(float(current_app.config.get("IMPORT_WAIT_SECONDS", 5)))
    db.session.refresh(job)
    if not job.finished:
        return redirect(job_url, 303)
    if job.state == "failed":
        form.file.errors.append(f"Nothing was imported: {job.error}.")
    return render_template("lists/import.html", **page, **_job_page_data(job)), 400 if job.state == "failed" else 200


@bp.get("/<int:list_id>/imports/<int:job_id>")
def import_job(list_id: int, job_id: int):
    mailing_list = _own_list(list_id)
    job = _own_job(list_id, job_id)
    return render_template("lists/job.html", mailing_list=mailing_list, **_job_page_data(job))


@bp.get("/<int:list_id>/imports/<int:job_id>.json")
def import_job_json(list_id: int, job_id: int):
    _own_list(list_id)
    job = _own_job(list_id, job_id)
    return jsonify(_job_page_data(job)["progress"])


@bp.get("/<int:list_id>/imports/<int:job_id>/rejected.csv")
def import_job_rejected(list_id: int, job_id: int):
    _own_list(list_id)
    job = _own_job(list_id, job_id)
    items = spool_items(job_file(imports_dir(current_app), job.id, "rejected.jsonl"))
    filename = f"rejected-rows-import-{job.id}.csv"
    return Response(stream_with_context(csv_rows(items, job.filename)), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@bp.get("/<int:list_id>/export.csv")
def export(list_id: int):
    mailing_list = _own_list(list_id)
    return Response(stream_with_context(export_list(mailing_list)), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="list-{mailing_list.id}.csv"'})


from . import tidy_views  # noqa: E402,F401  (delete, archive, restore: on this blueprint)
