"""Deleting many suppression entries: those ticked on the page, or all a search matches, after a
page saying how many (and which) go."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from flask_login import current_user

from ...extensions import db
from ...services.suppressions import count_matching, remove_suppressions, selected_entries
from . import bp

SHOWN = 20  # chosen addresses named on the confirmation page


def _ids() -> list[int]:
    return [int(x) for x in request.form.getlist("ids") if x.isascii() and x.isdigit()]


@bp.route("/delete", methods=["GET", "POST"])
def delete_many():
    """With ids: the ticked entries; without: all those ?q= matches (every entry for none)."""
    search = request.args.get("q", "")
    ids = _ids() if request.method == "POST" else []
    chosen = request.method == "POST" and "ids" in request.form
    if chosen and not ids:
        flash("Tick the addresses to delete first.", "error")
        return redirect(url_for("suppressions.index", q=search or None))
    entries = selected_entries(current_user, ids) if chosen else []
    if chosen and not entries:
        abort(404)  # none of them the user's
    if request.method == "POST" and request.form.get("confirmed") == "1":
        gone = (remove_suppressions(current_user, ids=[item.id for item in entries]) if chosen
                else remove_suppressions(current_user, search=search))
        db.session.commit()
        flash(f"{gone:,} addresses may be mailed again.", "success")
        return redirect(url_for("suppressions.index", q=None if chosen else search or None))
    total = len(entries) if chosen else count_matching(current_user, search)
    if chosen:
        goes = [f"{total:,} addresses will be taken off your suppression list: "
                + ", ".join(item.email for item in entries[:SHOWN]) + ("…" if total > SHOWN else "") + "."]
    elif search:
        goes = [f"{total:,} addresses matching “{search}” will be taken off your suppression list."]
    else:
        goes = [f"All {total:,} addresses will be taken off your suppression list."]
    stays = ["Campaigns may mail them again, including those who unsubscribed, bounced or complained: "
             "a download of the list first keeps a copy."]
    return render_template("confirm.html", title="Delete suppression entries?", goes=goes, stays=stays,
                           refusal=None if total else "no entry matches", button=f"Delete {total:,} entries",
                           action=url_for("suppressions.delete_many", q=search or None),
                           hidden=[("ids", item.id) for item in entries],
                           back=url_for("suppressions.index", q=search or None))
