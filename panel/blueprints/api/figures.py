"""The campaign's live figures in the API: GET /campaigns/<id>/timeline and /breakdown?by=…
(JSON, or CSV with ?format=csv), read from the kept rows (services/campaign_figures.py)."""

from __future__ import annotations

from flask import Response, jsonify, request

from ...services.campaign_figures import (FiguresError, breakdown, breakdown_csv, parse_since, progress, timeline,
                                          timeline_csv)
from . import ApiError, _own_campaign, bp


def _csv(body: str, name: str) -> Response:
    return Response(body, mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'})


def _wants_csv() -> bool:
    wanted = request.args.get("format", "json")
    if wanted not in ("json", "csv"):
        raise ApiError(400, f"format={wanted!r} is not offered: ask for format=json (the default) or format=csv")
    return wanted == "csv"


@bp.get("/campaigns/<int:campaign_id>/timeline")
def campaigns_timeline(campaign_id: int):
    """Letters a minute (by the time Exim logged each outcome), clicks and opens a minute, and progress."""
    campaign = _own_campaign(campaign_id)
    try:
        minutes = timeline(campaign, parse_since(request.args.get("since")))
    except FiguresError as exc:
        raise ApiError(400, str(exc)) from None
    if _wants_csv():
        return _csv(timeline_csv(minutes), f"campaign-{campaign.id}-timeline.csv")
    return jsonify(minutes=minutes, progress=progress(campaign))


@bp.get("/campaigns/<int:campaign_id>/breakdown")
def campaigns_breakdown(campaign_id: int):
    campaign = _own_campaign(campaign_id)
    by = request.args.get("by", "")
    try:
        table = breakdown(campaign, by)
    except FiguresError as exc:
        raise ApiError(400, str(exc)) from None
    if _wants_csv():
        return _csv(breakdown_csv(table), f"campaign-{campaign.id}-by-{by}.csv")
    return jsonify(table)
