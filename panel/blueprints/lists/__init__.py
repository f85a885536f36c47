"""Mailing lists: list, create, view, import a CSV file."""

from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from ...extensions import db
from ...services.csv_import import ImportFailed, import_csv
from ...services.lists import ListError, create_list, get_list, recipients_page, user_lists
from .forms import ImportForm, NewListForm

bp = Blueprint("lists", __name__, url_prefix="/lists", template_folder="templates")
REJECTED_SHOWN = 200


@bp.before_request
@login_required
def _require_login() -> None:
    pass


def _own_list(list_id: int):
    mailing_list = get_list(current_user, list_id)
    if mailing_list is None:
        abort(404)
    return mailing_list


@bp.get("/")
def index():
    return render_template("lists/index.html", lists=user_lists(current_user), form=NewListForm())


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
    return render_template("lists/index.html", lists=user_lists(current_user), form=form), 400


@bp.get("/<int:list_id>")
def view(list_id: int):
    mailing_list = _own_list(list_id)
    page = request.args.get("page", 1, type=int) or 1
    recipients, has_next = recipients_page(mailing_list, page)
    return render_template(
        "lists/view.html", mailing_list=mailing_list, recipients=recipients, page=page, has_next=has_next
    )


@bp.route("/<int:list_id>/import", methods=["GET", "POST"])
def import_file(list_id: int):
    mailing_list = _own_list(list_id)
    form = ImportForm()
    report = None
    status = 200
    if form.validate_on_submit():
        try:
            report = import_csv(mailing_list, form.file.data.stream)
        except ImportFailed as exc:
            db.session.rollback()
            form.file.errors.append(f"Nothing was imported: {exc}.")
            status = 400
        else:
            db.session.commit()
    elif form.is_submitted():
        status = 400
    return render_template(
        "lists/import.html", mailing_list=mailing_list, form=form, report=report, shown=REJECTED_SHOWN
    ), status
