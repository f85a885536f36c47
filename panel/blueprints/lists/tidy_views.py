"""Deleting a list (after a page saying what goes with it), archiving and restoring it."""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for

from ...extensions import db
from ...services import tidy
from . import _own_list, bp


def _confirm_page(mailing_list, impact: tidy.ListImpact, status: int = 200):
    goes = [f"{impact.recipients:,} recipients will be deleted, with their fields."]
    stays = [f"Campaign “{item.name}” ({item.status}) keeps its letters, counts and figures." for item in impact.finished]
    stays += [f"Draft “{item.name}” loses this list from its recipients." for item in impact.drafts]
    return render_template("confirm.html", title=f"Delete the list “{mailing_list.name}”?", goes=goes, stays=stays,
                           refusal=impact.refusal, button=f"Delete the list and its {impact.recipients:,} recipients",
                           action=url_for("lists.delete", list_id=mailing_list.id),
                           back=url_for("lists.view", list_id=mailing_list.id)), status


@bp.get("/<int:list_id>/delete")
def confirm_delete(list_id: int):
    mailing_list = _own_list(list_id)
    return _confirm_page(mailing_list, tidy.list_impact(mailing_list))


@bp.post("/<int:list_id>/delete")
def delete(list_id: int):
    mailing_list = _own_list(list_id)
    name = mailing_list.name
    try:
        gone = tidy.delete_list(mailing_list)
    except tidy.TidyRefused:
        db.session.rollback()
        return _confirm_page(mailing_list, tidy.list_impact(mailing_list), 409)
    db.session.commit()
    flash(f"List “{name}” and its {gone:,} recipients deleted.", "success")
    return redirect(url_for("lists.index"))


@bp.post("/<int:list_id>/<any(archive, restore):action>")
def archive(list_id: int, action: str):
    mailing_list = _own_list(list_id)
    (tidy.archive_list if action == "archive" else tidy.restore_list)(mailing_list)
    db.session.commit()
    if action == "archive":
        flash(f"List “{mailing_list.name}” archived: it is hidden from your lists and from new campaigns. "
              "Restore it from the archived lists.", "success")
        return redirect(url_for("lists.index"))
    flash(f"List “{mailing_list.name}” restored.", "success")
    return redirect(url_for("lists.view", list_id=list_id))
