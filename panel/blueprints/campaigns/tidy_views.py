"""Deleting and archiving a campaign (after a page saying what goes and what stays), restoring it."""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for

from ...extensions import db
from ...services import tidy
from . import _own_campaign, bp

WORDS = {"delete": "Delete", "archive": "Archive"}


def _confirm_page(campaign, action: str, status: int = 200):
    impact = tidy.campaign_impact(campaign, action)
    goes = [f"{impact.letters:,} letters (each recipient's address, state and last reply) will be deleted.",
            f"{impact.events:,} delivery events (every outcome the servers reported) will be deleted."]
    if action == "delete":
        goes += [f"{impact.clicks:,} clicks and {impact.opens:,} opens will be deleted.",
                 "Its counts, delivery speed graph and breakdowns will be deleted, and the campaign itself."]
        stays = ["Its recipients stay on their lists; suppressed addresses stay suppressed."]
    else:
        stays = ["Kept in the archive: the campaign, its state, its counts, delivery speed graph, breakdowns, clicks "
                 "and opens; its page still shows them.",
                 "Recipients who unsubscribe from these letters from now on are not recognised: archive a campaign "
                 "once its recipients have had time to use its links."]
    if action == "delete" and impact.letters:
        stays.append("Unsubscribe links in the letters already sent stop working.")
    return render_template("confirm.html", title=f"{WORDS[action]} the campaign “{campaign.name}”?", goes=goes,
                           stays=stays, refusal=impact.refusal, button=f"{WORDS[action]} the campaign",
                           action=url_for(f"campaigns.{action}", campaign_id=campaign.id),
                           back=url_for("campaigns.view", campaign_id=campaign.id)), status


@bp.get("/<int:campaign_id>/delete")
def confirm_delete(campaign_id: int):
    return _confirm_page(_own_campaign(campaign_id), "delete")


@bp.get("/<int:campaign_id>/archive")
def confirm_archive(campaign_id: int):
    return _confirm_page(_own_campaign(campaign_id), "archive")


@bp.post("/<int:campaign_id>/delete")
def delete(campaign_id: int):
    campaign = _own_campaign(campaign_id)
    name = campaign.name
    try:
        impact = tidy.delete_campaign(campaign)
    except tidy.TidyRefused:
        db.session.rollback()
        return _confirm_page(campaign, "delete", 409)
    db.session.commit()
    flash(f"Campaign “{name}” deleted with its {impact.letters:,} letters and {impact.events:,} events.", "success")
    return redirect(url_for("campaigns.index"))


@bp.post("/<int:campaign_id>/archive")
def archive(campaign_id: int):
    campaign = _own_campaign(campaign_id)
    try:
        impact = tidy.archive_campaign(campaign)
    except tidy.TidyRefused:
        db.session.rollback()
        return _confirm_page(campaign, "archive", 409)
    db.session.commit()
    flash(f"Campaign archived: {impact.letters:,} letters and {impact.events:,} events deleted, its figures kept.",
          "success")
    return redirect(url_for("campaigns.view", campaign_id=campaign_id))


@bp.post("/<int:campaign_id>/restore")
def restore(campaign_id: int):
    campaign = _own_campaign(campaign_id)
    tidy.restore_campaign(campaign)
    db.session.commit()
    flash("Campaign taken out of the archive (its letters stay deleted; its figures are kept).", "success")
    return redirect(url_for("campaigns.view", campaign_id=campaign_id))
