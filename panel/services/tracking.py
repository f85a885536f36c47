"""Masked links and the open pixel: what the agents are told, and counting clicks and opens.

The agents mask every link of a letter (worker_agent/tracking.py, with the campaign's key from
``tracking_payload``); ``GET /c/<token>`` (blueprints/tracking) comes here. A token names its
campaign, letter and link and is signed with the campaign's key, derived from the panel's secret:
checking one needs no lookup, and the redirect target is the campaign's stored link of that number
(``campaign_links``, kept when the draft is saved) or, for a URL built from a recipient's fields,
the URL the signature covers. Nothing in a request can point the redirect anywhere else, and a
token answers only on its campaign's tracking domains or the panel's public host
(``tracking_hosts``); clicks and opens are counted within per-address limits (``click_limits``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from flask import Flask, current_app
from sqlalchemy import bindparam, create_engine, delete, func, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from worker_agent.tracking import OPEN, campaign_key, read_token, template_links

from ..extensions import db
from ..models import Campaign, CampaignLink, Click, Open
from ..models.base import utcnow
from .click_limits import ClickLimits
from .tracking_hosts import TrackingHosts

T = TypeVar("T")
PREVIEW_DELIVERY_ID = 0  # the preview's links lead to their target but are not counted


def store_links(campaign: Campaign) -> None:
    """Number the links written in the draft's templates (what its tokens will carry); again at each save."""
    db.session.execute(delete(CampaignLink).where(CampaignLink.campaign_id == campaign.id))
    links = template_links(campaign.text, campaign.html)
    if links:
        db.session.execute(insert(CampaignLink), [
            {"campaign_id": campaign.id, "idx": n, "url": url} for n, url in enumerate(links)
        ])


def campaign_links(campaign: Campaign) -> list[str]:
    return list(db.session.scalars(
        select(CampaignLink.url).where(CampaignLink.campaign_id == campaign.id).order_by(CampaignLink.idx)
    ))


def tracking_base_urls(campaign: Campaign, public_url: str, scheme: str = "https") -> list[str]:
    """Where the masked links point: the campaign's tracking domains (letters take turns), else the panel."""
    return [f"{scheme}://{domain.name}" for domain in campaign.tracking_domains] or [public_url.rstrip("/")]


def tracking_payload(campaign: Campaign, secret: str, public_url: str, scheme: str = "https") -> dict[str, Any] | None:
    """The campaign JSON's `tracking` object (docs/agent-protocol.md); None when nothing is tracked."""
    if not (campaign.track_clicks or campaign.track_opens):
        return None
    return {
        "clicks": bool(campaign.track_clicks),
        "opens": bool(campaign.track_opens),
        "key": campaign_key(secret, campaign.id),
        "base_urls": tracking_base_urls(campaign, public_url, scheme),
        "links": campaign_links(campaign),
    }


# The hot path (bench/clicks.py): statements built once (no statement building or cache-key work per
# click), run on connections of the engine's pool, not in the ORM session: each click or open is
# committed in a transaction of its own before it is answered.
_LINK_URL = select(CampaignLink.__table__.c.url).where(
    CampaignLink.__table__.c.campaign_id == bindparam("campaign_id"), CampaignLink.__table__.c.idx == bindparam("idx")
)
# inline(): no RETURNING of the new id (PostgreSQL would fetch it for nothing)
_INSERT = {Click: insert(Click.__table__).inline(), Open: insert(Open.__table__).inline()}


def _count(connection: Connection, model: type, delivery_id: int, campaign_id: int, **values: Any) -> None:
    """One row for a click or open, committed at once; none for the preview's letter (id 0). The ids
    come from a signed token: the table has no foreign keys to check them (models/tracking.py)."""
    if delivery_id == PREVIEW_DELIVERY_ID:
        return
    connection.execute(_INSERT[model], {"campaign_id": campaign_id, "delivery_id": delivery_id,
                                        "created_at": utcnow(), **values})
    connection.commit()


LINK_CACHE_SIZE = 10_000


def _counting_engine() -> Engine:
    """Where clicks and opens are written. On PostgreSQL a pool of their own without the panel's
    pre-ping, a round trip before every use that took a fifth of a click (bench/clicks.py); a
    connection the server dropped meanwhile fails once and `_counted` tries again on a fresh one.
    SQLite pings for nothing: the panel's engine."""
    if db.engine.dialect.name != "postgresql":
        return db.engine
    app = current_app._get_current_object()
    engine = app.extensions.get("mailfleet_counting_engine")
    if engine is None:
        options = {k: v for k, v in app.config["SQLALCHEMY_ENGINE_OPTIONS"].items() if k != "pool_pre_ping"}
        engine = app.extensions["mailfleet_counting_engine"] = create_engine(db.engine.url, **options)
    return engine


def dispose_counting_engine(app: Flask) -> None:
    """Close the counting pool's connections, as `db.engine.dispose()` does the panel's."""
    engine = app.extensions.pop("mailfleet_counting_engine", None)
    if engine is not None:
        engine.dispose()


def _counted(work: Callable[[Connection], T]) -> T:
    """Run `work(connection)` on a counting connection, once more on a fresh one if the first was dead."""
    try:
        with _counting_engine().connect() as connection:
            return work(connection)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    with _counting_engine().connect() as connection:  # the pool has let the dead one go
        return work(connection)


class Visit(NamedTuple):  # a tuple: made for every click (a frozen dataclass took a microsecond)
    """Who asks for a token and where: the request's Host header and client address; a GET counts,
    a HEAD (link checkers, scanners) is answered uncounted."""

    host: str | None
    address: str | None
    count: bool = True


class TrackingState:
    """What one app remembers to answer tokens: the links of started campaigns (a letter's token,
    any but the preview's, exists only once its campaign started, and a started campaign's links
    never change: only a draft is saved), which hosts answer which campaign, and the per-address
    limits."""

    def __init__(self, public_url: str, limits: ClickLimits) -> None:
        self.links: dict[tuple[int, int], str] = {}
        self.hosts = TrackingHosts(public_url)
        self.limits = limits


def tracking_state(app: Flask) -> TrackingState:
    state = app.extensions.get("mailfleet_tracking")
    if state is None:
        config = app.config
        limits = ClickLimits(config["TRACKING_FORGED_PER_MINUTE"], config["TRACKING_CLICKS_PER_MINUTE"],
                             config["TRACKING_REPEATS_PER_LETTER"])
        state = app.extensions.setdefault("mailfleet_tracking", TrackingState(config["PUBLIC_URL"], limits))
    return state


def _counts(state: TrackingState, visit: Visit, delivery_id: int) -> bool:
    return visit.count and delivery_id != PREVIEW_DELIVERY_ID and state.limits.counts(visit.address, delivery_id)


def click(secret: str, token: str, visit: Visit, state: TrackingState) -> str | None:
    """The URL a genuine click token leads to, the click counted and committed (unless the visit
    is a HEAD, or one letter's repeats from one address went past the limits: services/click_limits);
    None for a forged, altered or unknown one, or one asked of a host that is not its campaign's
    (a 404, never a redirect)."""
    read = read_token(secret, token)
    if read is None or read[2] == OPEN:
        return None
    campaign_id, delivery_id, ref = read
    letter = delivery_id != PREVIEW_DELIVERY_ID
    links = state.links

    def work(connection: Connection) -> str | None:
        if not state.hosts.allows(connection, campaign_id, visit.host, remember=letter):
            return None
        if isinstance(ref, str):
            url, values = ref, {"link_idx": None, "url": ref}
        else:
            url = links.get((campaign_id, ref))
            if url is None:
                url = connection.execute(_LINK_URL, {"campaign_id": campaign_id, "idx": ref}).scalar()
                if url is None:
                    return None
                if letter:
                    if len(links) >= LINK_CACHE_SIZE:
                        links.clear()
                    links[(campaign_id, ref)] = url
            values = {"link_idx": ref}
        if _counts(state, visit, delivery_id):
            _count(connection, Click, delivery_id, campaign_id, **values)
        return url

    return _counted(work)


def open_pixel(secret: str, token: str, visit: Visit, state: TrackingState) -> bool:
    """True for a genuine open token asked of its campaign's host (the open counted and committed,
    as a click is); False otherwise."""
    read = read_token(secret, token)
    if read is None or read[2] != OPEN:
        return False
    campaign_id, delivery_id, _ = read

    def work(connection: Connection) -> bool:
        if not state.hosts.allows(connection, campaign_id, visit.host, remember=delivery_id != PREVIEW_DELIVERY_ID):
            return False
        if _counts(state, visit, delivery_id):
            _count(connection, Open, delivery_id, campaign_id)
        return True

    return _counted(work)


def tracking_counts(campaign_id: int) -> dict[str, int]:
    """Clicks and opens, each in all and by distinct letters (recipients)."""
    clicks, clickers = db.session.execute(
        select(func.count(), func.count(func.distinct(Click.delivery_id))).where(Click.campaign_id == campaign_id)
    ).one()
    opens, openers = db.session.execute(
        select(func.count(), func.count(func.distinct(Open.delivery_id))).where(Open.campaign_id == campaign_id)
    ).one()
    return {"clicks": clicks or 0, "clickers": clickers or 0, "opens": opens or 0, "openers": openers or 0}


@dataclass(frozen=True)
class LinkStats:
    idx: int | None  # None: a URL built from a recipient's fields
    url: str
    clicks: int
    recipients: int


def link_stats(campaign: Campaign) -> list[LinkStats]:
    """Clicks and distinct recipients per link: the template's links in order (unclicked ones too),
    then the URLs built from fields, most clicked first."""
    counted = {
        idx: (n, people)
        for idx, n, people in db.session.execute(
            select(Click.link_idx, func.count(), func.count(func.distinct(Click.delivery_id)))
            .where(Click.campaign_id == campaign.id, Click.link_idx.is_not(None))
            .group_by(Click.link_idx)
        )
    }
    rows = [LinkStats(n, url, *counted.get(n, (0, 0))) for n, url in enumerate(campaign_links(campaign))]
    built = db.session.execute(
        select(Click.url, func.count(), func.count(func.distinct(Click.delivery_id)))
        .where(Click.campaign_id == campaign.id, Click.link_idx.is_(None))
        .group_by(Click.url)
        .order_by(func.count().desc(), Click.url)
        .limit(100)
    )
    rows += [LinkStats(None, url, n, people) for url, n, people in built]
    return rows
