"""Campaigns: list, compose and edit drafts, preview, watch and control sending."""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from ...extensions import db
from ...models import Campaign
from ...services.campaigns import (
    CampaignInput,
    CampaignInvalid,
    CampaignLocked,
    campaign_variables,
    get_campaign,
    latest_failures,
    save_campaign,
    set_priority,
    user_campaigns,
)
from ...services.campaign_figures import (ROW_LABELS, FiguresError, breakdown, breakdown_csv, breakdowns, parse_since,
                                          progress, timeline, timeline_csv)
from ...services.letters import preview_letter
from ...services.lists import user_lists
from ...services.sending import SendingError, campaign_stats, letters_by_server, set_campaign_state, start_campaign
from ...services.templates import starter_letter
from ...services.domains import user_domains
from ...services.server_shares import sendable_servers
from ...services.tracking import link_stats, tracking_base_urls
from ...services.schedule import ScheduleInvalid, local_time, local_to_aware, schedule_campaign, unschedule_campaign
from ...services.alignment import unaligned_warning
from ...services.test_sends import MAX_ADDRESSES, TestSendError, recent_tests, send_test
from .forms import PRIORITY_HINT, CampaignForm, PreviewForm, PriorityForm, TestSendForm

bp = Blueprint("campaigns", __name__, url_prefix="/campaigns", template_folder="templates")

ACTION_DONE = {"start": "started", "pause": "paused", "resume": "resumed", "cancel": "cancelled"}


@bp.before_request
@login_required
def _require_login() -> None:
    pass


def _own_campaign(campaign_id: int) -> Campaign:
    campaign = get_campaign(current_user, campaign_id)
    if campaign is None:
        abort(404)
    return campaign


def _compose(form: CampaignForm, campaign: Campaign | None):
    lists = user_lists(current_user)  # archived lists are not offered, unless the draft already has them
    lists += [item for item in (campaign.lists + campaign.exclude_lists if campaign else []) if item.archived_at
              and item not in lists]
    form.set_choices(lists, sendable_servers(current_user), user_domains(current_user))
    status = 200
    if form.validate_on_submit():
        text, html = form.bodies()
        data = CampaignInput(
            name=form.name.data, subject=form.subject.data, from_email=form.from_email.data,
            from_name=form.from_name.data, reply_to=form.reply_to.data, text=text, html=html,
            encoding=form.encoding.data, lists=form.lists.data, exclude_lists=form.exclude_lists.data,
            servers=form.servers.data, domains=form.domains.data, tracking_domains=form.tracking_domains.data,
            track_clicks=form.track_clicks.data, track_opens=form.track_opens.data, priority=form.priority.data,
            source_ips=form.source_ips.data or [],
        )
        try:
            campaign = save_campaign(current_user, data, campaign)
            _apply_schedule(form, campaign)
        except CampaignLocked as exc:
            db.session.rollback()
            flash(f"{exc}.", "error")
            return redirect(url_for("campaigns.view", campaign_id=campaign.id))
        except CampaignInvalid as exc:
            db.session.rollback()
            for name, messages in exc.errors.items():
                getattr(form, name).errors.extend(messages)
            status = 400
        except ScheduleInvalid as exc:
            db.session.rollback()
            form.schedule_date.errors.append(f"{str(exc)[0].upper()}{str(exc)[1:]}.")
            status = 400
        else:
            db.session.commit()
            flash(_saved_message(campaign), "success")
            return redirect(url_for("campaigns.view", campaign_id=campaign.id))
    elif form.is_submitted():
        status = 400
    fields = {item.id: item.fields for item in lists}
    return render_template("campaigns/compose.html", form=form, campaign=campaign, list_fields=fields,
                           priority_hint=PRIORITY_HINT,
                           unaligned=unaligned_warning(current_user, (form.from_email.data or "").strip())), status


def _apply_schedule(form: CampaignForm, campaign: Campaign) -> None:
    """The composer's schedule: ticked, the draft starts then; unticked, it has no scheduled start."""
    if form.schedule.data:
        schedule_campaign(campaign, local_to_aware(form.schedule_date.data, form.schedule_time.data,
                                                   form.schedule_zone.data), form.schedule_zone.data)
    elif campaign.scheduled_at is not None:
        unschedule_campaign(campaign)


def _saved_message(campaign: Campaign) -> str:
    at = local_time(campaign)
    if at is None:
        return "Draft saved."
    return f"Draft saved: it starts on {at:%Y-%m-%d %H:%M} {campaign.schedule_zone}."


@bp.get("/")
def index():
    archived = request.args.get("archived") == "1"  # the "Archived" filter
    return render_template("campaigns/index.html", campaigns=user_campaigns(current_user, archived), archived=archived)


@bp.route("/new", methods=["GET", "POST"])
def new():
    form = CampaignForm()
    if request.method == "GET":  # a new campaign starts from a newsletter in both formats, ready to edit
        starter = starter_letter()
        form.format.data = "multipart"
        form.subject.data, form.text.data, form.html.data = starter.subject, starter.text, starter.html
    return _compose(form, None)


@bp.route("/<int:campaign_id>/edit", methods=["GET", "POST"])
def edit(campaign_id: int):
    campaign = _own_campaign(campaign_id)
    if campaign.status != "draft":
        flash(f"This campaign is {campaign.status}; only a draft can be edited.", "error")
        return redirect(url_for("campaigns.view", campaign_id=campaign.id))
    form = CampaignForm(obj=campaign) if request.method == "GET" else CampaignForm()
    if request.method == "GET":
        form.format.data = campaign.format
        form.lists.data = [item.id for item in campaign.lists]
        form.exclude_lists.data = [item.id for item in campaign.exclude_lists]
        form.servers.data = [item.id for item in campaign.servers if not campaign.source_ips]
        form.source_ips.data = [item.id for item in campaign.source_ips]
        form.domains.data = [item.id for item in campaign.domains]
        form.tracking_domains.data = [item.id for item in campaign.tracking_domains]
        if (at := local_time(campaign)) is not None:
            form.schedule.data, form.schedule_zone.data = True, campaign.schedule_zone
            form.schedule_date.data, form.schedule_time.data = at.date(), at.time().replace(tzinfo=None)
    return _compose(form, campaign)


@bp.get("/<int:campaign_id>")
def view(campaign_id: int):
    return _page(_own_campaign(campaign_id))


# A letter's state as the "Letters by server" table names it, in the order of its way out.
SERVER_STATE_LABELS = (("pending", "not yet pushed"), ("queued", "on the agent"), ("sent", "in Exim"),
                       ("deferred", "deferred"), ("delivered", "delivered"), ("failed", "failed"),
                       ("cancelled", "not sent"))


def _by_server(campaign: Campaign) -> dict:
    """Each server's letters by state (kept counts, no letter counted); servers by name, the
    letters no server took yet last."""
    counts = letters_by_server(campaign)
    names = {server.id: server.name for server in sendable_servers(current_user) if server.id in counts}
    rows = sorted(((server_id, states) for server_id, states in counts.items() if server_id is not None),
                  key=lambda row: (names.get(row[0], ""), row[0]))
    if None in counts:
        rows.append((None, counts[None]))
    return {"by_server": rows, "server_names": names, "state_labels": SERVER_STATE_LABELS}


def _page(campaign: Campaign, priority_form: PriorityForm | None = None, test_form: TestSendForm | None = None):
    return render_template(
        "campaigns/view.html",
        campaign=campaign,
        test_form=test_form or TestSendForm(formdata=None),
        tests=recent_tests(campaign),
        max_test_addresses=MAX_ADDRESSES,
        starts_at=local_time(campaign),
        unaligned=unaligned_warning(campaign.user_id, campaign.from_email) if campaign.status == "draft" else None,
        priority_form=priority_form or PriorityForm(formdata=None, priority=campaign.priority),
        priority_hint=PRIORITY_HINT,
        stats=campaign_stats(campaign),
        **_by_server(campaign),
        failures=latest_failures(campaign),
        variables=campaign_variables(campaign),
        links=link_stats(campaign),
        tracking_bases=tracking_base_urls(campaign, current_app.config["PUBLIC_URL"], current_app.config["TRACKING_SCHEME"]),
        progress=progress(campaign),
        breakdowns=breakdowns(campaign),
        row_labels=ROW_LABELS,
    )


@bp.post("/<int:campaign_id>/priority")
def priority(campaign_id: int):
    """Change the priority, also while the campaign runs (that is when its share matters)."""
    campaign = _own_campaign(campaign_id)
    form = PriorityForm()
    if form.validate_on_submit():
        try:
            before = set_priority(campaign, form.priority.data)
        except CampaignLocked as exc:
            db.session.rollback()
            flash(f"The priority was not changed: {exc}.", "error")
            return redirect(url_for("campaigns.view", campaign_id=campaign.id))
        except CampaignInvalid as exc:
            db.session.rollback()
            form.priority.errors.extend(exc.errors["priority"])
        else:
            db.session.commit()
            if before == campaign.priority:
                flash(f"The priority was already {before}: nothing changed.", "success")
            else:
                flash(f"Priority {before} → {campaign.priority}: the campaign's share of each server changes from "
                      "the daemon's next round.", "success")
            return redirect(url_for("campaigns.view", campaign_id=campaign.id))
    return _page(campaign, form), 400


@bp.get("/<int:campaign_id>/stats")
def stats(campaign_id: int):
    """The live counts the campaign page polls (session auth)."""
    campaign = _own_campaign(campaign_id)
    failures = [
        {"email": item.email, "status": item.status, "code": item.code, "reply": item.reply,
         "at": item.updated_at.strftime("%Y-%m-%d %H:%M:%S")}
        for item in latest_failures(campaign)
    ]
    links = [{"url": item.url, "clicks": item.clicks, "recipients": item.recipients} for item in link_stats(campaign)]
    return jsonify(stats=campaign_stats(campaign), failures=failures, links=links)


@bp.get("/<int:campaign_id>/figures")
def figures(campaign_id: int):
    """The graph's minutes (from `since` on), progress and the breakdowns, which the page polls."""
    campaign = _own_campaign(campaign_id)
    try:
        since = parse_since(request.args.get("since"))
    except FiguresError as exc:
        return jsonify(error=str(exc)), 400
    return jsonify(minutes=timeline(campaign, since), progress=progress(campaign), breakdowns=breakdowns(campaign))


def _csv(body: str, name: str) -> Response:
    return Response(body, mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.get("/<int:campaign_id>/timeline.csv")
def timeline_download(campaign_id: int):
    campaign = _own_campaign(campaign_id)
    return _csv(timeline_csv(timeline(campaign)), f"campaign-{campaign.id}-timeline.csv")


@bp.get("/<int:campaign_id>/breakdown.csv")
def breakdown_download(campaign_id: int):
    campaign = _own_campaign(campaign_id)
    by = request.args.get("by", "")
    try:
        table = breakdown(campaign, by)
    except FiguresError:
        abort(404)
    return _csv(breakdown_csv(table), f"campaign-{campaign.id}-by-{by}.csv")


@bp.post("/<int:campaign_id>/<any(start, pause, resume, cancel):action>")
def control(campaign_id: int, action: str):
    campaign = _own_campaign(campaign_id)
    try:
        if action == "start":
            start_campaign(current_user, campaign)
        else:
            set_campaign_state(current_user, campaign, action)
    except SendingError as exc:
        db.session.rollback()
        flash(f"Could not {action} the campaign: {exc}.", "error")
    else:
        db.session.commit()
        flash(f"Campaign {ACTION_DONE[action]}.", "success")
    return redirect(url_for("campaigns.view", campaign_id=campaign_id))


@bp.post("/<int:campaign_id>/test")
def test(campaign_id: int):
    """Send the campaign, marked as a test, to up to five addresses (services/test_sends.py)."""
    campaign = _own_campaign(campaign_id)
    form = TestSendForm()
    if form.validate_on_submit():
        try:
            letters = send_test(current_user, campaign, form.addresses.data or "")
        except TestSendError as exc:
            db.session.rollback()
            form.addresses.errors = [*form.addresses.errors, str(exc)]
        else:
            db.session.commit()
            flash(f"Test queued for {', '.join(letter.email for letter in letters)}: it goes out through "
                  "the campaign's server within seconds, marked [Test], and counts nowhere in the campaign.", "success")
            return redirect(url_for("campaigns.view", campaign_id=campaign.id) + "#test-send")
    return _page(campaign, test_form=form), 400


@bp.post("/<int:campaign_id>/unschedule")
def unschedule(campaign_id: int):
    """Take the scheduled start off a draft; it stays a draft, to start by hand or schedule again."""
    campaign = _own_campaign(campaign_id)
    try:
        had = unschedule_campaign(campaign)
    except CampaignLocked as exc:
        db.session.rollback()
        flash(f"Nothing to unschedule: {exc}.", "error")
    else:
        db.session.commit()
        flash("Unscheduled: the campaign stays a draft." if had else "The campaign had no scheduled start.", "success")
    return redirect(url_for("campaigns.view", campaign_id=campaign_id))


@bp.get("/<int:campaign_id>/preview")
def preview(campaign_id: int):
    campaign = _own_campaign(campaign_id)
    form = PreviewForm(request.args)
    config = current_app.config
    letter = preview_letter(
        current_user, campaign, (form.email.data or "").strip() or None,
        public_url=config["PUBLIC_URL"], bounce_domain=config["BOUNCE_DOMAIN"], secret=config["SECRET_KEY"],
        tracking_scheme=config["TRACKING_SCHEME"],
    )
    # A letter that cannot be built (a template error or limit) is the request's fault: 422, said on the page.
    status = 422 if letter.error and letter.campaign is not None else 200
    return render_template("campaigns/preview.html", campaign=campaign, form=form, letter=letter), status


from . import tidy_views  # noqa: E402,F401  (delete, archive, restore: on this blueprint)
