"""The JSON API under /api/v1 (see DESIGN.md): bearer tokens, JSON in and out.

Every error is `{"error": "<what was wrong and what to do>"}` with its status code; another
user's object is a 404, exactly like one that does not exist.
"""

from __future__ import annotations

import math
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context, url_for
from werkzeug.exceptions import RequestEntityTooLarge

from ...extensions import db
from ...models import Campaign, Domain, MailingList, Recipient, Server, Suppression
from ...models.campaign import DEFAULT_PRIORITY
from ...services.campaigns import (CampaignInput, CampaignInvalid, CampaignLocked, get_campaign, save_campaign,
                                   set_priority, user_campaigns)
from ...services.csv_import import ImportFailed, ImportOptions, TooManyRows, import_csv, import_records
from ...services.domains import (DomainError, DomainInput, DomainTaken, add_domain, check_records, check_reverse, delete_domain,
                                 get_domain, publish, user_domains)
from ...services.alignment import unaligned_warning
from ...services.failover import declare_gone
from ...services.schedule import ScheduleInvalid, parse_iso, schedule_campaign, unschedule_campaign
from ...services.test_sends import NoServerOnline, TestSendError, send_test, test_as_json
from ...services.lists import ListError, ListNameTaken, create_list, get_list, user_lists
from ...services.rate_limit import take_token
from ...services.recipients import (RecipientError, RecipientTaken, delete_recipient, export_list, find_in_list,
                                    unsubscribe_recipient, update_recipient)
from ...services.suppressions import (MAX_PAGE_SIZE, PAGE_SIZE, SuppressionError, add_suppression,
                                      export_suppressions, find_suppression, remove_suppression, search_suppressions)
from ...services.sending import SendingError, campaign_stats, server_letters, set_campaign_state, start_campaign
from ...services.server_config import RateLimitInput, replace_settings, settings_json
from ...services import provider_limits, shaping, warmup
from ...services.servers import ServerError, get_server, user_servers
from ...services.tracking import link_stats
from ...services.users import TokenRefused, authenticate_token

bp = Blueprint("api", __name__, url_prefix="/api/v1")

CAMPAIGN_STRINGS = ("name", "subject", "from_email", "from_name", "reply_to", "text", "html", "encoding")
CAMPAIGN_ID_LISTS = ("lists", "exclude_lists", "servers", "domains", "tracking_domains", "source_ips")
CAMPAIGN_FLAGS = ("track_clicks", "track_opens")
CAMPAIGN_REQUIRED = ("name", "subject", "from_email", "lists")
CAMPAIGN_SCHEDULE = ("scheduled_at", "time_zone")  # POST /campaigns may schedule the new draft at once


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@bp.errorhandler(ApiError)
def _api_error(error: ApiError):
    response = jsonify(error=error.message)
    response.status_code = error.status
    if error.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="mailfleet"'
    return response


READ_METHODS = frozenset({"GET", "HEAD"})  # all a read-only token may do


@bp.before_request
def _authenticate() -> None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "send your API token as Authorization: Bearer <token> "
                            "(make one with: flask --app panel users create-token EMAIL)")
    try:
        api_token = authenticate_token(token.strip())
    except TokenRefused as exc:
        raise ApiError(401, str(exc)) from None
    config = current_app.config
    wait = take_token(api_token.id, float(config["API_RATE"]), float(config["API_BURST"]))
    db.session.commit()  # its last-used time and its bucket, before the request's own work
    if wait:
        raise RateLimited(wait, config["API_RATE"], config["API_BURST"])
    if api_token.scope != "write" and request.method not in READ_METHODS:
        raise ApiError(403, f"this API token ({api_token.name!r}) is read-only: it may only GET and HEAD, and "
                            f"{request.method} changes things; use a write token (made without --read-only)")
    g.api_user = api_token.user


class RateLimited(ApiError):
    def __init__(self, wait: float, rate: float, burst: int) -> None:
        super().__init__(429, f"too many requests with this token: at most {burst} at once and {rate:g} a second "
                              f"on average; wait {wait:.1f} s (Retry-After) and send it again")
        self.retry_after = max(1, math.ceil(wait))


@bp.errorhandler(RateLimited)
def _rate_limited(error: RateLimited):
    response = _api_error(error)
    response.headers["Retry-After"] = str(error.retry_after)
    return response


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_error):
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    return _api_error(ApiError(413, f"the request body is too large (over {limit:,} bytes): nothing was added; "
                                    "send fewer rows a request"))


NUL_ERROR = "text may not hold the NUL character (\\u0000 or %00), which the database cannot store: remove it"


def _has_nul(value: Any) -> bool:
    """Whether any string in a JSON value (keys too) holds NUL; a loop, not recursion (deep JSON)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


@bp.before_request
def _no_nul_in_url() -> None:
    """PostgreSQL's text cannot hold NUL (a query with one fails): refuse it where it comes in."""
    texts = [text for pair in request.args.items(multi=True) for text in pair]
    if _has_nul(texts + list((request.view_args or {}).values())):
        raise ApiError(400, NUL_ERROR)


def _json_body() -> Any:
    if not request.is_json:
        raise ApiError(415, "send JSON with Content-Type: application/json")
    try:
        data = request.get_json(silent=True)
    except RecursionError:  # json.loads recurses once per nesting level
        raise ApiError(400, "the JSON is nested too deeply: send a flat object or array") from None
    if data is None:
        raise ApiError(400, "the body is not valid JSON")
    if _has_nul(data):
        raise ApiError(400, NUL_ERROR)
    return data


def _json_object() -> dict[str, Any]:
    data = _json_body()
    if not isinstance(data, dict):
        raise ApiError(400, "send a JSON object")
    return data


def _list_json(item: MailingList) -> dict[str, Any]:
    return {
        "id": item.id,
        "name": item.name,
        "fields": list(item.fields),
        "recipient_count": item.recipient_count,
        "created_at": item.created_at.isoformat() + "Z",
        "archived_at": item.archived_at.isoformat() + "Z" if item.archived_at else None,
    }


def _campaign_json(item: Campaign) -> dict[str, Any]:
    def when(value):
        return value.isoformat() + "Z" if value else None

    return {
        "id": item.id,
        "name": item.name,
        "status": item.status,
        "subject": item.subject,
        "from_email": item.from_email,
        "from_name": item.from_name,
        "reply_to": item.reply_to,
        "text": item.text,
        "html": item.html,
        "format": item.format,
        "encoding": item.encoding,
        "lists": [x.id for x in item.lists],
        "exclude_lists": [x.id for x in item.exclude_lists],
        "servers": [x.id for x in item.servers],
        "source_ips": [{"id": x.id, "ip": x.ip} for x in item.source_ips],  # none: every IP of the servers
        "domains": [x.id for x in item.domains],
        "tracking_domains": [x.id for x in item.tracking_domains],
        "track_clicks": item.track_clicks,
        "track_opens": item.track_opens,
        "priority": item.priority,
        "total": item.total,
        "created_at": when(item.created_at),
        "started_at": when(item.started_at),
        "finished_at": when(item.finished_at),
        "scheduled_at": when(item.scheduled_at),  # UTC; time_zone is the zone it was given in
        "time_zone": item.schedule_zone if item.scheduled_at else None,
        "schedule_error": item.schedule_error,
        "archived_at": when(item.archived_at),  # letters and events deleted, counts and figures kept
        # e.g. a From domain that will fail DMARC alignment, and how to fix it (services/alignment.py)
        "warnings": [warning] if (warning := unaligned_warning(item.user_id, item.from_email)) else [],
    }


def _server_json(item: Server) -> dict[str, Any]:
    return {
        "id": item.id,
        "name": item.name,
        "host": item.host,
        "status": item.status,
        "last_seen_at": item.last_seen_at.isoformat() + "Z" if item.last_seen_at else None,
        "ips": [{"ip": ip.ip, "helo": ip.helo, "weight": ip.weight, "active": ip.active} for ip in item.ips],
    }


def _own_list(list_id: int) -> MailingList:
    item = get_list(g.api_user, list_id)
    if item is None:
        raise ApiError(404, f"you have no list {list_id}: GET /api/v1/lists shows yours")
    return item


def _own_campaign(campaign_id: int) -> Campaign:
    item = get_campaign(g.api_user, campaign_id)
    if item is None:
        raise ApiError(404, f"you have no campaign {campaign_id}: GET /api/v1/campaigns shows yours")
    return item


# -- lists -------------------------------------------------------------------------------

@bp.get("/lists")
def lists_index():
    return jsonify([_list_json(item) for item in user_lists(g.api_user, tidy.archived_filter())])


@bp.post("/lists")
def lists_create():
    data = _json_object()
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, 'give the list a name: {"name": "Newsletter"}')
    try:
        item = create_list(g.api_user, name)
    except ListNameTaken as exc:
        raise ApiError(409, str(exc)) from None
    except ListError as exc:
        raise ApiError(400, str(exc)) from None
    db.session.commit()
    response = jsonify(_list_json(item))
    response.status_code = 201
    response.headers["Location"] = url_for("api.lists_view", list_id=item.id)
    return response


@bp.get("/lists/<int:list_id>")
def lists_view(list_id: int):
    return jsonify(_list_json(_own_list(list_id)))


@bp.post("/lists/<int:list_id>/recipients")
def lists_add_recipients(list_id: int):
    item = _own_list(list_id)
    mimetype = request.mimetype
    options = ImportOptions(max_rows=current_app.config["API_MAX_ROWS"], keep_rejected=None)
    try:
        if mimetype == "text/csv":
            charset = request.mimetype_params.get("charset", "utf-8").lower()
            if charset not in ("utf-8", "utf8"):
                raise ApiError(415, "send the CSV as UTF-8 (Content-Type: text/csv; charset=utf-8)")
            report = import_csv(item, request.stream, options)
        elif request.is_json:
            report = import_records(item, _json_body(), options)
        else:
            raise ApiError(415, "send a JSON array of objects (Content-Type: application/json) "
                                "or a CSV file (Content-Type: text/csv)")
    except TooManyRows as exc:
        db.session.rollback()
        raise ApiError(413, str(exc)) from None
    except ImportFailed as exc:
        db.session.rollback()
        raise ApiError(400, f"nothing was imported: {exc}") from None
    db.session.commit()
    return jsonify(report.as_dict())


def _recipient_json(item: Recipient) -> dict[str, Any]:
    return {
        "id": item.id,
        "list_id": item.list_id,
        "email": item.email,
        "fields": item.fields or {},
        "created_at": item.created_at.isoformat() + "Z",
        "unsubscribed_at": item.unsubscribed_at.isoformat() + "Z" if item.unsubscribed_at else None,
    }


def _own_recipient(mailing_list: MailingList, key: str) -> Recipient:
    item = find_in_list(mailing_list, key)
    if item is None:
        raise ApiError(404, f"list {mailing_list.id} has no recipient {key!r} (give an address or a recipient id)")
    return item


@bp.get("/lists/<int:list_id>/recipients/<key>")
def recipient_view(list_id: int, key: str):
    return jsonify(_recipient_json(_own_recipient(_own_list(list_id), key)))


@bp.patch("/lists/<int:list_id>/recipients/<key>")
def recipient_update(list_id: int, key: str):
    """{"email"?, field: value or null (removes it), …}: the fields given change, the others stay."""
    mailing_list = _own_list(list_id)
    item = _own_recipient(mailing_list, key)
    try:
        update_recipient(mailing_list, item, _json_object())
    except RecipientTaken as exc:
        db.session.rollback()
        raise ApiError(409, str(exc)) from None
    except RecipientError as exc:
        db.session.rollback()
        raise ApiError(400, str(exc)) from None
    db.session.commit()
    return jsonify(_recipient_json(item))


@bp.delete("/lists/<int:list_id>/recipients/<key>")
def recipient_delete(list_id: int, key: str):
    mailing_list = _own_list(list_id)
    delete_recipient(mailing_list, _own_recipient(mailing_list, key))
    db.session.commit()
    return "", 204


@bp.post("/lists/<int:list_id>/recipients/<key>/unsubscribe")
def recipient_unsubscribe(list_id: int, key: str):
    mailing_list = _own_list(list_id)
    item = _own_recipient(mailing_list, key)
    unsubscribe_recipient(mailing_list, item)
    db.session.commit()
    return jsonify(_recipient_json(item))


def _csv_download(chunks, filename: str) -> Response:
    return Response(stream_with_context(chunks), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@bp.get("/lists/<int:list_id>/export.csv")
def lists_export(list_id: int):
    item = _own_list(list_id)
    return _csv_download(export_list(item), f"list-{item.id}.csv")


# -- suppressions ------------------------------------------------------------------------

def _suppression_json(item: Suppression) -> dict[str, Any]:
    return {"id": item.id, "email": item.email, "reason": item.reason, "created_at": item.created_at.isoformat() + "Z"}


@bp.get("/suppressions")
def suppressions_index():
    """?q= an address prefix or a domain (@example.org), ?after= the last address of the previous
    page, ?limit= (default 50, at most 1000) → {"items": […], "next_after": address or null}."""
    limit = request.args.get("limit", str(PAGE_SIZE))
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= MAX_PAGE_SIZE:  # '¹' is a digit
        raise ApiError(400, f"limit must be a whole number from 1 to {MAX_PAGE_SIZE}")
    page = search_suppressions(g.api_user, request.args.get("q"), request.args.get("after"), int(limit))
    return jsonify({"items": [_suppression_json(x) for x in page.items], "next_after": page.next_after})


@bp.post("/suppressions")
def suppressions_add():
    """{"email", "reason"?: "manual"} → 201 (new) or 200 (already suppressed, its reason kept)."""
    data = _json_object()
    email, reason = data.get("email"), data.get("reason", "manual")
    if not isinstance(email, str) or not isinstance(reason, str):
        raise ApiError(400, 'send {"email": "ann@example.org"} (and optionally "reason")')
    try:
        item, added = add_suppression(g.api_user, email, reason)
    except SuppressionError as exc:
        db.session.rollback()
        raise ApiError(400, str(exc)) from None
    db.session.commit()
    return jsonify(_suppression_json(item)), 201 if added else 200


@bp.delete("/suppressions/<key>")
def suppressions_delete(key: str):
    item = find_suppression(g.api_user, key)
    if item is None:
        raise ApiError(404, f"{key!r} is not on your suppression list")
    remove_suppression(g.api_user, item)
    db.session.commit()
    return "", 204


@bp.get("/suppressions/export.csv")
def suppressions_export():
    return _csv_download(export_suppressions(g.api_user), "suppressions.csv")


# -- campaigns ---------------------------------------------------------------------------

def _campaign_input(data: dict[str, Any]) -> CampaignInput:
    known = set(CAMPAIGN_STRINGS) | set(CAMPAIGN_ID_LISTS) | set(CAMPAIGN_FLAGS) | {"priority"} | set(CAMPAIGN_SCHEDULE)
    unknown = sorted(key for key in data if key not in known)
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)}: the fields are {', '.join(sorted(known))}")
    missing = [key for key in CAMPAIGN_REQUIRED if data.get(key) in (None, "", [])]
    if missing:
        raise ApiError(400, f"missing {', '.join(missing)}: a campaign needs a name, subject, from_email and lists")
    for key in CAMPAIGN_STRINGS:
        if data.get(key) is not None and not isinstance(data[key], str):
            raise ApiError(400, f"{key} must be a string")
    for key in CAMPAIGN_ID_LISTS:
        value = data.get(key, [])
        if value is None:
            value = []
        if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            raise ApiError(400, f"{key} must be an array of ids (whole numbers)")
    for key in CAMPAIGN_FLAGS:
        if key in data and not isinstance(data[key], bool):
            raise ApiError(400, f"{key} must be true or false")
    return CampaignInput(
        name=data["name"], subject=data["subject"], from_email=data["from_email"],
        from_name=data.get("from_name"), reply_to=data.get("reply_to"),
        text=data.get("text"), html=data.get("html"), encoding=data.get("encoding") or "quoted-printable",
        lists=data["lists"], exclude_lists=data.get("exclude_lists") or [], servers=data.get("servers") or [],
        domains=data.get("domains") or [], tracking_domains=data.get("tracking_domains") or [],
        source_ips=data.get("source_ips") or [],
        track_clicks=data.get("track_clicks", True), track_opens=data.get("track_opens", False),
        priority=data.get("priority", DEFAULT_PRIORITY),  # checked by save_campaign
    )


@bp.get("/campaigns")
def campaigns_index():
    return jsonify([_campaign_json(item) for item in user_campaigns(g.api_user, tidy.archived_filter())])


def _schedule(item: Campaign, data: dict[str, Any]) -> None:
    """Schedule the draft from {"scheduled_at": ISO 8601 with offset, "time_zone": IANA name}."""
    if data.get("time_zone") is not None and not isinstance(data["time_zone"], str):
        raise ApiError(400, "time_zone must be an IANA name such as Europe/Paris")
    try:
        schedule_campaign(item, parse_iso(data["scheduled_at"]), data.get("time_zone"))
    except ScheduleInvalid as exc:
        db.session.rollback()
        raise ApiError(400, str(exc)) from None
    except CampaignLocked as exc:
        db.session.rollback()
        raise ApiError(409, str(exc)) from None


@bp.post("/campaigns")
def campaigns_create():
    body = _json_object()
    data = _campaign_input(body)
    try:
        item = save_campaign(g.api_user, data)
    except CampaignInvalid as exc:
        db.session.rollback()
        raise ApiError(400, str(exc)) from None
    if body.get("scheduled_at") is not None:
        _schedule(item, body)
    db.session.commit()
    response = jsonify(_campaign_json(item))
    response.status_code = 201
    response.headers["Location"] = url_for("api.campaigns_view", campaign_id=item.id)
    return response


@bp.get("/campaigns/<int:campaign_id>")
def campaigns_view(campaign_id: int):
    return jsonify(_campaign_json(_own_campaign(campaign_id)))


@bp.patch("/campaigns/<int:campaign_id>")
def campaigns_update(campaign_id: int):
    """{"priority": 1-10}: what may change once a campaign is made, in any state but finished or
    cancelled (a running campaign's new share applies from the daemon's next round)."""
    item = _own_campaign(campaign_id)
    data = _json_object()
    fixed = sorted(key for key in data if key != "priority")
    if fixed:
        raise ApiError(400, f"only priority can be changed here (unknown or fixed field(s): {', '.join(fixed)}); "
                            'send {"priority": 1-10}')
    if "priority" not in data:
        raise ApiError(400, 'send {"priority": 1-10}: 1 is the lowest, 10 the highest, 5 the default')
    try:
        set_priority(item, data["priority"])
    except CampaignLocked as exc:
        db.session.rollback()
        raise ApiError(409, str(exc)) from None
    except CampaignInvalid as exc:
        db.session.rollback()
        raise ApiError(400, str(exc)) from None
    db.session.commit()
    return jsonify(_campaign_json(item))


@bp.put("/campaigns/<int:campaign_id>/schedule")
def campaigns_schedule(campaign_id: int):
    """Start the draft at {"scheduled_at": ISO 8601 with offset} (shown in {"time_zone"}, default UTC)."""
    item = _own_campaign(campaign_id)
    data = _json_object()
    unknown = sorted(key for key in data if key not in CAMPAIGN_SCHEDULE)
    if unknown or data.get("scheduled_at") is None:
        raise ApiError(400, 'send {"scheduled_at": "2026-12-24T09:00:00+01:00", "time_zone": "Europe/Paris"} '
                            "(time_zone is optional: UTC)")
    _schedule(item, data)
    db.session.commit()
    return jsonify(_campaign_json(item))


@bp.delete("/campaigns/<int:campaign_id>/schedule")
def campaigns_unschedule(campaign_id: int):
    """Take the scheduled start off the draft; it stays a draft."""
    item = _own_campaign(campaign_id)
    try:
        unschedule_campaign(item)
    except CampaignLocked as exc:
        db.session.rollback()
        raise ApiError(409, str(exc)) from None
    db.session.commit()
    return jsonify(_campaign_json(item))


@bp.post("/campaigns/<int:campaign_id>/test")
def campaigns_test(campaign_id: int):
    """Send the campaign, marked as a test, to {"addresses": [up to 5]} through one of its servers
    (the daemon pushes it on its next round); counted nowhere in the campaign."""
    item = _own_campaign(campaign_id)
    data = _json_object()
    unknown = sorted(key for key in data if key != "addresses")
    if unknown or "addresses" not in data:
        raise ApiError(400, 'send {"addresses": ["you@example.com"]} (1 to 5 addresses)')
    try:
        letters = send_test(g.api_user, item, data["addresses"])
    except NoServerOnline as exc:
        db.session.rollback()
        raise ApiError(409, str(exc)) from None
    except TestSendError as exc:
        db.session.rollback()
        raise ApiError(400, str(exc)) from None
    db.session.commit()
    response = jsonify({"tests": [test_as_json(letter) for letter in letters]})
    response.status_code = 202
    return response


@bp.get("/campaigns/<int:campaign_id>/stats")
def campaigns_stats(campaign_id: int):
    return jsonify(campaign_stats(_own_campaign(campaign_id)))


@bp.get("/campaigns/<int:campaign_id>/links")
def campaigns_links(campaign_id: int):
    """Clicks per link: the template's links in order, then URLs built from fields (`"built": true`)."""
    return jsonify([{"url": item.url, "built": item.idx is None, "clicks": item.clicks, "recipients": item.recipients}
                    for item in link_stats(_own_campaign(campaign_id))])


@bp.post("/campaigns/<int:campaign_id>/<any(start, pause, resume, cancel):action>")
def campaigns_control(campaign_id: int, action: str):
    item = _own_campaign(campaign_id)
    try:
        if action == "start":
            start_campaign(g.api_user, item)
        else:
            set_campaign_state(g.api_user, item, action)
    except SendingError as exc:
        db.session.rollback()
        raise ApiError(409, str(exc)) from None
    db.session.commit()
    return jsonify(_campaign_json(item))


# -- servers -----------------------------------------------------------------------------

# -- domains ---------------------------------------------------------------------------------

DOMAIN_STRINGS = ("name", "kind", "zone", "dns_host", "tsig_key_name", "tsig_algorithm", "tsig_secret",
                  "dkim_selector", "dmarc_policy", "dmarc_rua")
DOMAIN_REQUIRED = ("name", "dns_host", "tsig_key_name", "tsig_secret")


def _domain_json(item: Domain) -> dict[str, Any]:
    """A domain as the API shows it: never its TSIG secret nor its DKIM private key."""
    return {
        "id": item.id, "name": item.name, "kind": item.kind, "zone": item.zone,
        "bounce_domain": item.bounce_domain if item.kind == "sending" else None,
        "dkim_selector": item.dkim_selector, "dkim_public_key": item.dkim_public_key,
        "dmarc_policy": item.dmarc_policy, "dmarc_rua": item.dmarc_rua,
        "dns_server": f"{item.dns_host}:{item.dns_port}", "tsig_key_name": item.tsig_name,
        "dns_state": item.dns_state, "dns_error": item.dns_error,
    }


@bp.get("/domains")
def domains_index():
    return jsonify([_domain_json(item) for item in user_domains(g.api_user)])


def _domain_input(data: dict[str, Any]) -> DomainInput:
    missing = [key for key in DOMAIN_REQUIRED if data.get(key) in (None, "")]
    if missing:
        raise ApiError(400, f"missing {', '.join(missing)}: a domain needs its name, its DNS server (dns_host) and "
                            "the TSIG key that server takes updates with (tsig_key_name, tsig_secret)")
    wrong = [key for key in DOMAIN_STRINGS if key in data and data[key] is not None and not isinstance(data[key], str)]
    if wrong:
        raise ApiError(400, f"{', '.join(wrong)} must be text")
    port = data.get("dns_port", 53)
    if isinstance(port, bool) or not isinstance(port, int):
        raise ApiError(400, "dns_port must be a number from 1 to 65535")
    text_of = {key: data.get(key) or "" for key in DOMAIN_STRINGS}
    return DomainInput(
        name=text_of["name"], kind=text_of["kind"] or "sending", zone=text_of["zone"], dns_host=text_of["dns_host"],
        dns_port=port, tsig_name=text_of["tsig_key_name"], tsig_algorithm=text_of["tsig_algorithm"] or "hmac-sha256",
        tsig_secret=text_of["tsig_secret"], dkim_selector=text_of["dkim_selector"] or "mailfleet",
        dmarc_policy=text_of["dmarc_policy"] or "none", dmarc_rua=text_of["dmarc_rua"])


@bp.post("/domains")
def domain_create():
    """Add a domain and publish its records at once, as the Domains page does: a refused update
    still adds the domain (201) with dns_state "failed" and dns_error saying why."""
    data = _json_object()
    try:
        item = add_domain(g.api_user, _domain_input(data))
    except DomainError as exc:
        db.session.rollback()
        raise ApiError(409 if isinstance(exc, DomainTaken) else 400, str(exc)) from None
    publish(item, current_app.config["PUBLIC_URL"])
    db.session.commit()
    return jsonify(_domain_json(item)), 201, {"Location": url_for("api.domain_show", domain_id=item.id)}


def _own_domain(domain_id: int) -> Domain:
    item = get_domain(g.api_user, domain_id)
    if item is None:
        raise ApiError(404, f"no domain {domain_id} (or it is not yours): GET /api/v1/domains shows yours")
    return item


@bp.post("/domains/<int:domain_id>/publish")
def domain_publish(domain_id: int):
    """Send the domain's records again; 200 with dns_state "published", or 502 saying what the DNS server did."""
    item = _own_domain(domain_id)
    published = publish(item, current_app.config["PUBLIC_URL"])
    db.session.commit()
    if not published:
        raise ApiError(502, f"the DNS records were not published: {item.dns_error}")
    return jsonify(_domain_json(item))


@bp.delete("/domains/<int:domain_id>")
def domain_delete(domain_id: int):
    """Remove the records from the DNS server, then the domain; ?keep_records=true leaves the records
    (when the server no longer takes our key)."""
    item = _own_domain(domain_id)
    keep = request.args.get("keep_records", "").lower() in ("1", "true", "yes")
    try:
        delete_domain(g.api_user, item, current_app.config["PUBLIC_URL"], keep_records=keep)
    except DomainError as exc:
        db.session.rollback()
        raise ApiError(502, f"the domain was not deleted: {exc}; fix that, or send DELETE "
                            f"/api/v1/domains/{domain_id}?keep_records=true to delete it and leave its records") from None
    db.session.commit()
    return "", 204


@bp.get("/domains/<int:domain_id>")
def domain_show(domain_id: int):
    """The domain with each record as its DNS server answers now, and the reverse-DNS check."""
    item = _own_domain(domain_id)
    public_url = current_app.config["PUBLIC_URL"]
    return jsonify({
        **_domain_json(item),
        "records": [{"name": c.record.name, "type": c.record.rdtype, "wanted": list(c.record.values),
                     "state": c.state, "found": list(c.found), "purpose": c.record.purpose}
                    for c in check_records(item, public_url)],
        "reverse_dns": [{"ip": r.ip, "host": r.host, "ptr": list(r.ptr), "state": r.state, "detail": r.detail}
                        for r in check_reverse(item, current_app.config.get("DNS_RESOLVER", ""))],
    })


@bp.get("/servers")
def servers_index():
    return jsonify([_server_json(item) for item in user_servers(g.api_user)])


def _own_server(server_id: int) -> Server:
    item = get_server(g.api_user, server_id)
    if item is None:
        raise ApiError(404, f"no server {server_id} (or it is not yours)")
    return item


@bp.get("/servers/<int:server_id>")
def server_get(server_id: int):
    item = _own_server(server_id)
    # Letters of running and paused campaigns this server holds, by state (issue 9: failover).
    return jsonify({**_server_json(item), "letters": server_letters(item.id), "shaping": shaping.current(item),
                    "warmup": warmup.current(item)})


@bp.post("/servers/<int:server_id>/gone")
def server_gone(server_id: int):
    try:
        report = declare_gone(_own_server(server_id))
    except ServerError as exc:
        raise ApiError(409, str(exc)) from None
    db.session.commit()
    return jsonify({"resent": report.resent, "may_repeat": report.may_repeat, "unknown": report.unknown})


@bp.get("/servers/<int:server_id>/warmup")
def server_warmup_get(server_id: int):
    return jsonify(warmup.settings_json(_own_server(server_id)))


@bp.put("/servers/<int:server_id>/warmup")
def server_warmup_put(server_id: int):
    """Warm-up per source IP: {"ips": {ip: {"enabled": bool, "start": "YYYY-MM-DD" or ISO time,
    "schedule": [{"day", "limits": {provider or "*": letters}}] or null (the default)}}}; IPs and
    fields left out keep theirs."""
    item = _own_server(server_id)
    data = _json_object()
    unknown = sorted(set(data) - {"ips"})
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)} (send ips)")
    try:
        warmup.replace_warmup(item, data.get("ips", {}))
    except ServerError as exc:
        db.session.rollback()
        raise ApiError(400, str(exc)) from None
    db.session.commit()
    return jsonify(warmup.settings_json(item))


@bp.get("/servers/<int:server_id>/config")
def server_config_get(server_id: int):
    item = _own_server(server_id)
    return jsonify({**settings_json(item), **provider_limits.settings_json(item)})


@bp.put("/servers/<int:server_id>/config")
def server_config_put(server_id: int):
    """The whole of a server's run-time settings: {"helo": {ip: name}, "rate_limits": [{source_ip, domain,
    per_minute}], "ips": {ip: {"weight": 1-100, "active": bool}}}; IPs left out of "helo" keep their
    name, rules left out of "rate_limits" are removed, IPs (and fields) left out of "ips" keep theirs."""
    item = _own_server(server_id)
    data = _json_object()
    unknown = sorted(set(data) - {"helo", "rate_limits", "ips", "providers", "provider_limits"})
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)} "
                            "(send helo, rate_limits, ips, providers and/or provider_limits)")
    helo, rules, ips = data.get("helo", {}), data.get("rate_limits", None), data.get("ips", {})
    if not isinstance(helo, dict) or not all(isinstance(v, str) for v in helo.values()):
        raise ApiError(400, "helo must be an object {\"<source IP>\": \"<host name>\"}")
    if not isinstance(ips, dict):
        raise ApiError(400, "ips must be an object {\"<source IP>\": {\"weight\": 1-100, \"active\": true or false}}")
    if rules is None:
        rules = [{"source_ip": r.source_ip, "domain": r.domain, "per_minute": r.per_minute} for r in item.rate_limits]
    if not isinstance(rules, list):
        raise ApiError(400, "rate_limits must be a list of {\"source_ip\", \"domain\", \"per_minute\"}")
    inputs = []
    for n, rule in enumerate(rules):
        if not isinstance(rule, dict) or set(rule) - {"source_ip", "domain", "per_minute"} or "per_minute" not in rule:
            raise ApiError(400, f"rate_limits[{n}] must be {{\"source_ip\"?, \"domain\"?, \"per_minute\"}}")
        source_ip, domain = rule.get("source_ip", "*"), rule.get("domain", "*")
        if not isinstance(source_ip, str) or not isinstance(domain, str):
            raise ApiError(400, f"rate_limits[{n}]: source_ip and domain must be strings")
        inputs.append(RateLimitInput(source_ip, domain, rule["per_minute"]))
    try:
        replace_settings(item, helo=helo, rate_limits=inputs, ips=ips)
        # providers: {name: [MX host suffix]} or null (the built-in table); provider_limits: the whole list
        provider_limits.replace_provider_settings(item, table=data.get("providers", ...),
                                                  limits=data.get("provider_limits"))
    except ServerError as exc:
        db.session.rollback()
        raise ApiError(400, str(exc)) from None
    db.session.commit()
    return jsonify({**settings_json(item), **provider_limits.settings_json(item)})


from . import figures  # noqa: E402,F401  (its routes, on this blueprint)
from . import admin  # noqa: E402,F401  (the admin API under /admin/, refused to ordinary users)
from . import dashboard  # noqa: E402,F401  (GET /dashboard: the page's figures)
from . import tidy  # noqa: E402  (deleting and archiving lists, campaigns, suppression entries)
