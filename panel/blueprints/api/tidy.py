"""Tidying up in the API (issue 10 point 6; services/tidy.py): DELETE a list or a campaign (200 with
what went), archive and restore them, and DELETE /suppressions for many entries at once."""

from __future__ import annotations

from typing import Any

from flask import g, jsonify, request

from ...extensions import db
from ...services import tidy
from ...services.suppressions import remove_suppressions
from . import ApiError, _campaign_json, _json_object, _list_json, _own_campaign, _own_list, bp


def _refused(exc: tidy.TidyRefused):
    db.session.rollback()
    return ApiError(409, str(exc))


@bp.delete("/lists/<int:list_id>")
def lists_delete(list_id: int):
    item = _own_list(list_id)
    try:
        gone = tidy.delete_list(item)
    except tidy.TidyRefused as exc:
        raise _refused(exc) from None
    db.session.commit()
    return jsonify(deleted={"list": list_id, "recipients": gone})


@bp.post("/lists/<int:list_id>/<any(archive, restore):action>")
def lists_archive(list_id: int, action: str):
    """Archive (hidden from GET /lists and the composer) or restore; repeating either changes nothing."""
    item = _own_list(list_id)
    (tidy.archive_list if action == "archive" else tidy.restore_list)(item)
    db.session.commit()
    return jsonify(_list_json(item))


def _impact_json(campaign_id: int, impact: tidy.CampaignImpact) -> dict[str, Any]:
    return {"campaign": campaign_id, "letters": impact.letters, "events": impact.events, "clicks": impact.clicks,
            "opens": impact.opens}


@bp.delete("/campaigns/<int:campaign_id>")
def campaigns_delete(campaign_id: int):
    item = _own_campaign(campaign_id)
    try:
        impact = tidy.delete_campaign(item)
    except tidy.TidyRefused as exc:
        raise _refused(exc) from None
    db.session.commit()
    return jsonify(deleted=_impact_json(campaign_id, impact))


@bp.post("/campaigns/<int:campaign_id>/archive")
def campaigns_archive(campaign_id: int):
    """Delete the letters and their events, keep the state, counts and figures: 409 if it sends."""
    item = _own_campaign(campaign_id)
    try:
        impact = tidy.archive_campaign(item)
    except tidy.TidyRefused as exc:
        raise _refused(exc) from None
    db.session.commit()
    return jsonify({**_campaign_json(item), "deleted": _impact_json(campaign_id, impact)})


@bp.post("/campaigns/<int:campaign_id>/restore")
def campaigns_restore(campaign_id: int):
    item = _own_campaign(campaign_id)
    tidy.restore_campaign(item)
    db.session.commit()
    return jsonify(_campaign_json(item))


SUPPRESSIONS_BODY = ('send {"emails": [addresses]}, {"ids": [entry ids]}, or {"q": search} (an address prefix or '
                     '@domain; "q": "" deletes every entry)')


@bp.delete("/suppressions")
def suppressions_delete_many():
    data = _json_object()
    unknown = sorted(set(data) - {"emails", "ids", "q"})
    if unknown or not data:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)}: {SUPPRESSIONS_BODY}" if unknown else SUPPRESSIONS_BODY)
    if "q" in data:
        if len(data) > 1 or not isinstance(data["q"], str):
            raise ApiError(400, f"q is a search on its own: {SUPPRESSIONS_BODY}")
        gone = remove_suppressions(g.api_user, search=data["q"])
    else:
        emails, ids = data.get("emails", []), data.get("ids", [])
        if not isinstance(emails, list) or not all(isinstance(x, str) for x in emails):
            raise ApiError(400, "emails must be an array of addresses")
        if not isinstance(ids, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in ids):
            raise ApiError(400, "ids must be an array of entry ids (whole numbers)")
        if len(emails) + len(ids) > 10000:
            raise ApiError(413, "at most 10,000 addresses and ids a request: send the rest in another")
        gone = remove_suppressions(g.api_user, ids=ids, emails=emails)
    db.session.commit()
    return jsonify(deleted=gone)


def archived_filter() -> bool | None:
    """?archived=false (the default: those in use), true (the archived ones) or all."""
    value = request.args.get("archived", "false").lower()
    choices = {"false": False, "0": False, "true": True, "1": True, "all": None}
    if value not in choices:
        raise ApiError(400, f"archived={value!r}: use archived=false (the default), true or all")
    return choices[value]
