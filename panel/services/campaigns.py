"""Composing campaigns: checking and saving drafts, finding a user's campaigns and failures.

Starting, pausing and cancelling are in services.sending.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import or_, select

from ..extensions import db
from ..models import ENCODINGS, Campaign, Delivery, Domain, MailingList, Server, ServerIP, User
from ..models.base import is_row_id
from ..models.campaign import DEFAULT_PRIORITY, PRIORITIES
from .addresses import InvalidAddress, normalise_address
from .server_shares import shared_server_ids
from .templates import allowed_variables, check_templates
from .tracking import store_links


class CampaignError(Exception):
    """A request about a campaign that cannot be carried out; the message says why."""


class CampaignLocked(CampaignError):
    """Only drafts can be changed."""


class CampaignInvalid(CampaignError):
    """The input has problems; `errors` maps each field to what is wrong with it."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{name}: {message}" for name, messages in errors.items() for message in messages))


@dataclass
class CampaignInput:
    name: str
    subject: str
    from_email: str
    from_name: str | None = None
    reply_to: str | None = None
    text: str | None = None
    html: str | None = None
    encoding: str = "quoted-printable"
    lists: list[int] = field(default_factory=list)
    exclude_lists: list[int] = field(default_factory=list)
    servers: list[int] = field(default_factory=list)
    domains: list[int] = field(default_factory=list)  # sending domains the letters rotate through
    tracking_domains: list[int] = field(default_factory=list)  # hosts of the masked links (none: the panel)
    track_clicks: bool = True  # mask the links and count clicks
    track_opens: bool = False  # the open pixel
    priority: int = DEFAULT_PRIORITY  # its share of each server among the user's running campaigns
    source_ips: list[int] = field(default_factory=list)  # ServerIP ids; none: every active IP of the servers


PRIORITY_RULE = f"a whole number from {PRIORITIES[0]} (lowest) to {PRIORITIES[-1]} (highest)"
# Once a campaign is over, no server serves it: its priority no longer means anything.
PRIORITY_FIXED = ("finished", "cancelled")


def check_priority(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in PRIORITIES:
        raise CampaignInvalid({"priority": [f"the priority must be {PRIORITY_RULE}"]})
    return value


def set_priority(campaign: Campaign, priority: object) -> int:
    """Change a campaign's priority, in any state but finished or cancelled: a running campaign's new
    share applies from the daemon's next round. Returns the priority it had."""
    if campaign.status in PRIORITY_FIXED:
        raise CampaignLocked(f"the campaign is {campaign.status}: its priority no longer matters")
    before, campaign.priority = campaign.priority, check_priority(priority)
    db.session.flush()
    return before


def user_campaigns(user: User, archived: bool | None = False) -> list[Campaign]:
    """The user's campaigns, newest first: not archived (archived=False), archived (True) or all (None)."""
    query = select(Campaign).where(Campaign.user_id == user.id)
    if archived is not None:
        query = query.where(Campaign.archived_at.is_not(None) if archived else Campaign.archived_at.is_(None))
    return list(db.session.scalars(query.order_by(Campaign.id.desc())))


def get_campaign(user: User, campaign_id: int) -> Campaign | None:
    """The user's campaign with this id; None for a missing campaign or another user's campaign."""
    campaign = db.session.get(Campaign, campaign_id)
    return campaign if campaign is not None and campaign.user_id == user.id else None


def campaign_variables(campaign: Campaign) -> list[str]:
    return sorted(allowed_variables(item.fields for item in campaign.lists))


def latest_failures(campaign: Campaign, limit: int = 20) -> list[Delivery]:
    """The most recent letters the recipients' servers refused or put off, with their reply.
    (One query per state, each read in order from the (campaign, status, updated_at, id) index,
    so a campaign of a million letters costs what a small one does.)"""
    rows: list[Delivery] = []
    for status in ("failed", "deferred"):
        rows += db.session.scalars(
            select(Delivery)
            .where(Delivery.campaign_id == campaign.id, Delivery.status == status)
            .order_by(Delivery.updated_at.desc(), Delivery.id.desc())
            .limit(limit)
        )
    rows.sort(key=lambda item: (item.updated_at, item.id), reverse=True)
    return rows[:limit]


def _mine(user: User, model: type):
    """The rows of `model` the user may name in a campaign: their own, and servers shared with them."""
    if model is Server:
        return or_(Server.user_id == user.id, Server.id.in_(shared_server_ids(user.id)))
    if model is ServerIP:  # an IP of a server the user may send through
        return ServerIP.server_id.in_(select(Server.id).where(_mine(user, Server)))
    return model.user_id == user.id


def _owned(user: User, model: type, ids: list[int], what: str, errors: dict[str, list[str]], key: str) -> list:
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in ids):
        errors.setdefault(key, []).append(f"give {what} ids as whole numbers")
        return []
    wanted = list(dict.fromkeys(ids))
    possible = [item for item in wanted if is_row_id(item)]
    found = {
        row.id: row
        for row in db.session.scalars(select(model).where(model.id.in_(possible), _mine(user, model)))
    } if possible else {}
    missing = [str(item) for item in wanted if item not in found]
    if missing:
        errors.setdefault(key, []).append(f"no {what} with id {', '.join(missing)} among yours")
    return [found[item] for item in wanted if item in found]


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def save_campaign(user: User, data: CampaignInput, campaign: Campaign | None = None) -> Campaign:
    """Check `data` and store it as a new draft or into the draft `campaign`; raises CampaignInvalid."""
    if campaign is not None and campaign.status != "draft":
        raise CampaignLocked(f"the campaign is {campaign.status}; only a draft can be changed")
    errors: dict[str, list[str]] = {}

    def problem(key: str, message: str) -> None:
        errors.setdefault(key, []).append(message)

    name = _clean(data.name)
    if not name:
        problem("name", "give the campaign a name")
    elif len(name) > 200:
        problem("name", "at most 200 characters")
    subject = _clean(data.subject)
    if not subject:
        problem("subject", "write a subject")
    elif "\n" in subject or "\r" in subject:
        problem("subject", "the subject must be one line")
    elif len(subject) > 998:
        problem("subject", "at most 998 characters")
    from_email = None
    try:
        from_email = normalise_address(data.from_email or "")
    except InvalidAddress as exc:
        problem("from_email", f"not a usable address: {exc}")
    from_name = _clean(data.from_name)
    if from_name and ("\n" in from_name or "\r" in from_name or len(from_name) > 200):
        problem("from_name", "one line of at most 200 characters")
    reply_to = _clean(data.reply_to)
    if reply_to:
        try:
            reply_to = normalise_address(reply_to)
        except InvalidAddress as exc:
            problem("reply_to", f"not a usable address: {exc}")
    text = data.text if data.text and data.text.strip() else None
    html = data.html if data.html and data.html.strip() else None
    if text is None and html is None:
        problem("text", "write the letter: a text body, an HTML body or both")
    if data.encoding not in ENCODINGS:
        problem("encoding", f"use one of {', '.join(ENCODINGS)}")
    try:
        priority = check_priority(data.priority)
    except CampaignInvalid as exc:
        errors.update(exc.errors)

    lists = _owned(user, MailingList, data.lists, "list", errors, "lists")
    if not data.lists:
        problem("lists", "choose at least one list to send to")
    exclude_lists = _owned(user, MailingList, data.exclude_lists, "list", errors, "exclude_lists")
    both = {item.id for item in lists} & {item.id for item in exclude_lists}
    if both:
        problem("exclude_lists", "a list cannot be both sent to and excluded")
    servers = _owned(user, Server, data.servers, "server", errors, "servers")
    source_ips = _owned(user, ServerIP, data.source_ips, "source IP", errors, "source_ips")
    if source_ips:
        # Chosen IPs name their servers; a server ticked as well must hold one of them, or it would send nothing.
        with_ips = {ip.server_id for ip in source_ips}
        idle = [server.name for server in servers if server.id not in with_ips]
        if idle:
            problem("source_ips", f"none of the chosen source IPs is on {', '.join(idle)}: choose one of its IPs "
                                  "or untick the server")
        servers = list({ip.server_id: ip.server for ip in source_ips}.values())
    domains = _owned(user, Domain, data.domains, "domain", errors, "domains")
    tracking = [item.name for item in domains if item.kind != "sending"]
    if tracking:
        problem("domains", f"{', '.join(tracking)} is a tracking domain: choose sending domains")
    tracking_domains = _owned(user, Domain, data.tracking_domains, "domain", errors, "tracking_domains")
    sending = [item.name for item in tracking_domains if item.kind != "tracking"]
    if sending:
        problem("tracking_domains", f"{', '.join(sending)} is a sending domain: choose tracking domains")

    if not errors.get("lists"):
        variables = allowed_variables(item.fields for item in lists)
        for issue in check_templates({"subject": subject, "text": text, "html": html}, variables):
            problem(issue.part, f"line {issue.line}: {issue.message}" if issue.line else issue.message)
    if errors:
        raise CampaignInvalid(errors)

    if campaign is None:
        campaign = Campaign(user_id=user.id, status="draft", total=0)
        db.session.add(campaign)
    campaign.name = name
    campaign.subject = subject
    campaign.from_email = from_email
    campaign.from_name = from_name
    campaign.reply_to = reply_to
    campaign.text = text
    campaign.html = html
    campaign.encoding = data.encoding
    campaign.lists = lists
    campaign.exclude_lists = exclude_lists
    campaign.servers = servers
    campaign.source_ips = source_ips
    campaign.domains = domains
    campaign.tracking_domains = tracking_domains
    campaign.track_clicks = bool(data.track_clicks)
    campaign.track_opens = bool(data.track_opens)
    campaign.priority = priority
    db.session.flush()
    store_links(campaign)
    return campaign
