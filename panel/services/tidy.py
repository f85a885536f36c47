"""Tidying up: deleting and archiving lists and campaigns (issue 10 point 6).

Each action is a few set-based statements in the caller's transaction (services flush, the view
commits), so a failure anywhere leaves everything as it was, and a million rows go in one
statement rather than a million ORM deletes. The object itself is deleted or changed through
the ORM, so the audit log's watcher notes it.

- A list: deleted with its recipients; refused while a campaign using it sends (running,
  paused, or letters still on the servers). Letters of finished campaigns keep their address and
  outcome, their counts stay. Archived: hidden from the lists page and the composer, restorable.
- A campaign (a draft, or finished/cancelled with no letter left on a server and, if it sent any,
  ended UNSUBSCRIBE_DAYS ago: the unsubscribe links and addresses of its letters name a letter,
  and must keep working that long): deleted with its
  letters, their events, its clicks, opens and figures. Archived: its letters and their events
  deleted to save space, its state, counts (campaign_counts) and figures (campaign_minutes,
  campaign_breakdowns), clicks and opens kept, so its page still shows what happened.

The triggers on `deliveries` subtract a deleted letter from campaign_counts (an UPDATE that
never inserts); the figures' triggers ignore deletes. Archiving therefore takes the campaign's
counts out first and puts them back after the letters are gone, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import delete, func, insert, or_, select, update

from ..extensions import db
from ..models import (BounceMessage, Campaign, CampaignBreakdown, CampaignCount, CampaignLink, CampaignMinute, Click,
                      Delivery, DeliveryEvent, DispatchBatch, ImportJob, MailingList, Open, Recipient)
from ..models.base import utcnow
from ..models.campaign import campaign_exclude_lists, campaign_lists
from . import audit

# Letters a server may still hold or send: a campaign with any is not over yet.
OUT_STATES = ("pending", "queued", "sent", "deferred")
TIDY_STATES = ("draft", "finished", "cancelled")
# Letters handed to a mail server: their unsubscribe link and address lead to the letter's row.
SENT_STATES = ("sent", "delivered", "deferred", "failed")
# How long after a campaign ends its letters' unsubscribe links must keep working before its
# letters may go: US law (CAN-SPAM) asks 30 days; Gmail and Yahoo ask bulk senders the same.
UNSUBSCRIBE_DAYS = 30


class TidyRefused(Exception):
    """The action cannot be done now; the message says why and what to do."""


# -- lists -------------------------------------------------------------------------------------


@dataclass
class ListImpact:
    recipients: int
    sending: list[Campaign] = field(default_factory=list)  # using it and not over: the delete is refused
    drafts: list[Campaign] = field(default_factory=list)  # lose the list from their choice
    finished: list[Campaign] = field(default_factory=list)  # sent to it: keep their letters and counts
    importing: bool = False

    @property
    def refusal(self) -> str | None:
        if self.sending:
            names = ", ".join(f"“{item.name}” ({item.status})" for item in self.sending)
            return (f"the list is used by {names}, which is still sending: wait until it finishes, or cancel it "
                    "and wait for its servers to answer for every letter, then delete the list")
        if self.importing:
            return "a file is being imported into the list: wait until the import ends, then delete the list"
        return None


def _letters_out(campaign_ids: list[int]) -> set[int]:
    """Those of the campaigns with letters still on their way (read from the kept counts)."""
    if not campaign_ids:
        return set()
    return set(db.session.scalars(select(CampaignCount.campaign_id).where(
        CampaignCount.campaign_id.in_(campaign_ids), CampaignCount.name.in_([f"status:{s}" for s in OUT_STATES]),
        CampaignCount.n > 0).distinct()))


def list_impact(mailing_list: MailingList) -> ListImpact:
    using = or_(Campaign.id.in_(select(campaign_lists.c.campaign_id).where(campaign_lists.c.list_id == mailing_list.id)),
                Campaign.id.in_(select(campaign_exclude_lists.c.campaign_id)
                                .where(campaign_exclude_lists.c.list_id == mailing_list.id)))
    campaigns = list(db.session.scalars(select(Campaign).where(using).order_by(Campaign.id)))
    out = _letters_out([item.id for item in campaigns])
    impact = ListImpact(recipients=mailing_list.recipient_count)
    for item in campaigns:
        if item.status in ("running", "paused") or item.id in out:
            impact.sending.append(item)
        elif item.status == "draft":
            impact.drafts.append(item)
        else:
            impact.finished.append(item)
    impact.importing = bool(db.session.scalar(select(func.count()).select_from(ImportJob).where(
        ImportJob.list_id == mailing_list.id, ImportJob.state.in_(("queued", "running")))))
    return impact


def delete_list(mailing_list: MailingList) -> int:
    """Delete the list and its recipients; returns how many recipients went."""
    impact = list_impact(mailing_list)
    if impact.refusal:
        raise TidyRefused(impact.refusal)
    # One statement (the (list_id, email) index finds them). Letters keep their address and outcome;
    # their recipient_id is left as it is: only letters of finished or cancelled campaigns point
    # here, and those are never pushed again (the only reader of the recipient's fields).
    gone = db.session.execute(delete(Recipient).where(Recipient.list_id == mailing_list.id)
                              .execution_options(synchronize_session=False)).rowcount
    db.session.execute(delete(ImportJob).where(ImportJob.list_id == mailing_list.id)
                       .execution_options(synchronize_session=False))
    db.session.delete(mailing_list)  # the watcher notes list.deleted; campaign links go by cascade
    db.session.flush()
    return gone


def archive_list(mailing_list: MailingList) -> bool:
    """Hide the list from the lists page and the composer; False if it already was."""
    if mailing_list.archived_at is not None:
        return False
    mailing_list.archived_at = utcnow()
    db.session.flush()
    return True


def restore_list(mailing_list: MailingList) -> bool:
    if mailing_list.archived_at is None:
        return False
    mailing_list.archived_at = None
    db.session.flush()
    return True


# -- campaigns ---------------------------------------------------------------------------------


@dataclass
class CampaignImpact:
    letters: int
    events: int
    clicks: int
    opens: int
    refusal: str | None


def _letters_of(campaign: Campaign):
    return select(Delivery.id).where(Delivery.campaign_id == campaign.id)


def campaign_impact(campaign: Campaign, action: str = "delete") -> CampaignImpact:
    """What deleting (or archiving) the campaign takes with it, and why it cannot be done, if so."""
    kept = dict(db.session.execute(select(CampaignCount.name, CampaignCount.n).where(
        CampaignCount.campaign_id == campaign.id, CampaignCount.name.like("status:%"))).all())
    letters = sum(kept.values())
    events = db.session.scalar(select(func.count()).select_from(DeliveryEvent).where(
        DeliveryEvent.delivery_id.in_(_letters_of(campaign)))) if letters else 0
    clicks = db.session.scalar(select(func.count()).select_from(Click).where(Click.campaign_id == campaign.id))
    opens = db.session.scalar(select(func.count()).select_from(Open).where(Open.campaign_id == campaign.id))
    out = sum(kept.get(f"status:{state}", 0) for state in OUT_STATES)
    refusal = None
    if action == "archive" and campaign.archived_at is not None:
        refusal = "the campaign is already archived"
    elif campaign.status not in TIDY_STATES:
        refusal = (f"the campaign is {campaign.status}: cancel it (or let it finish) and wait until its servers "
                   f"have answered for every letter, then {action} it")
    elif out and campaign.status != "draft":
        refusal = (f"{out:,} letters of the campaign are still on its servers (waiting, queued or deferred): "
                   f"wait until the servers have answered for them, then {action} it")
    elif action == "archive" and campaign.status == "draft":
        refusal = "a draft has nothing to archive: delete it, or start it"
    elif any(kept.get(f"status:{state}") for state in SENT_STATES):
        ended = campaign.finished_at or campaign.started_at or utcnow()
        allowed = ended + timedelta(days=UNSUBSCRIBE_DAYS)
        if allowed > utcnow():
            refusal = (f"the unsubscribe links in the campaign's letters must keep working for {UNSUBSCRIBE_DAYS} "
                       f"days after it ended (the law in the US, and Gmail's and Yahoo's rules for bulk senders), "
                       f"and they lead to its letters: {action} it from {allowed:%Y-%m-%d %H:%M} UTC")
    return CampaignImpact(letters=letters, events=events or 0, clicks=clicks or 0, opens=opens or 0, refusal=refusal)


def _delete_letters(campaign: Campaign) -> None:
    """The campaign's letters, their events and batches, in set-based statements."""
    letters = _letters_of(campaign)
    db.session.execute(delete(DeliveryEvent).where(DeliveryEvent.delivery_id.in_(letters))
                       .execution_options(synchronize_session=False))
    # Raw bounce messages stay (they are the server's mail), no longer pointing at a letter.
    db.session.execute(update(BounceMessage).where(BounceMessage.delivery_id.in_(letters)).values(delivery_id=None)
                       .execution_options(synchronize_session=False))
    db.session.execute(delete(Delivery).where(Delivery.campaign_id == campaign.id)
                       .execution_options(synchronize_session=False))
    db.session.execute(delete(DispatchBatch).where(DispatchBatch.campaign_id == campaign.id)
                       .execution_options(synchronize_session=False))


def _target(campaign: Campaign) -> str:
    return f"campaign {campaign.id} ({campaign.name})"


def delete_campaign(campaign: Campaign) -> CampaignImpact:
    """Delete the campaign with its letters, events, clicks, opens and figures."""
    impact = campaign_impact(campaign, "delete")
    if impact.refusal:
        raise TidyRefused(impact.refusal)
    audit.note("campaign.deleted", _target(campaign),
               f"{impact.letters} letters, {impact.events} events, {impact.clicks} clicks, {impact.opens} opens")
    # The counts first: the letters' delete trigger then finds nothing to subtract from.
    for model in (CampaignCount, CampaignMinute, CampaignBreakdown, CampaignLink, Click, Open):
        db.session.execute(delete(model).where(model.campaign_id == campaign.id)
                           .execution_options(synchronize_session=False))
    _delete_letters(campaign)
    db.session.delete(campaign)
    db.session.flush()
    return impact


def archive_campaign(campaign: Campaign) -> CampaignImpact:
    """Delete the campaign's letters and their events, keeping its state, counts and figures."""
    impact = campaign_impact(campaign, "archive")
    if impact.refusal:
        raise TidyRefused(impact.refusal)
    audit.note("campaign.archived", _target(campaign), f"{impact.letters} letters, {impact.events} events deleted")
    counts = [{"campaign_id": campaign.id, "name": name, "n": n} for name, n in db.session.execute(
        select(CampaignCount.name, CampaignCount.n).where(CampaignCount.campaign_id == campaign.id))]
    # Out while the letters go, back after: a deleted letter would subtract itself from them.
    db.session.execute(delete(CampaignCount).where(CampaignCount.campaign_id == campaign.id)
                       .execution_options(synchronize_session=False))
    _delete_letters(campaign)
    db.session.execute(delete(CampaignCount).where(CampaignCount.campaign_id == campaign.id)
                       .execution_options(synchronize_session=False))
    if counts:
        db.session.execute(insert(CampaignCount), counts)
    campaign.archived_at = utcnow()
    db.session.flush()
    return impact


def restore_campaign(campaign: Campaign) -> bool:
    """Take the campaign out of the archive (its letters do not come back; its figures stay)."""
    if campaign.archived_at is None:
        return False
    campaign.archived_at = None
    db.session.flush()
    return True
