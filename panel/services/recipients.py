"""One recipient of a list: find, update, delete, unsubscribe; and a list as CSV.

Every change keeps the list's recipient_count right in the same transaction (an UPDATE … SET
n = n + k, so concurrent writers on PostgreSQL add up instead of overwriting each other).
"""

from __future__ import annotations

from typing import Any, Iterator

from sqlalchemy import delete, select, update

from ..extensions import db
from ..models import Delivery, MailingList, Recipient, Suppression
from ..models.base import insert_unless_present, is_row_id, utcnow
from .addresses import InvalidAddress, normalise_address
from .csv_import import RESERVED_FIELDS, field_name, is_email_column
from .imports.report import csv_stream


class RecipientError(Exception):
    """A change to a recipient that cannot be made; the message says why."""


class RecipientTaken(RecipientError):
    pass


def find_in_list(mailing_list: MailingList, key: str) -> Recipient | None:
    """A recipient of the list by id (all digits) or by address."""
    if key.isdigit():
        recipient = db.session.get(Recipient, int(key)) if is_row_id(int(key)) else None
        return recipient if recipient is not None and recipient.list_id == mailing_list.id else None
    try:
        email = normalise_address(key)
    except InvalidAddress:
        return None
    return db.session.scalar(select(Recipient).where(Recipient.list_id == mailing_list.id, Recipient.email == email))


def update_recipient(mailing_list: MailingList, recipient: Recipient, changes: dict[str, Any]) -> Recipient:
    """Set fields (null removes one) and optionally a new address; unknown field names become list fields."""
    fields = dict(recipient.fields or {})
    new_fields: list[str] = []
    for key, value in changes.items():
        if is_email_column(str(key)):
            if not isinstance(value, str):
                raise RecipientError("email must be a string")
            try:
                email = normalise_address(value)
            except InvalidAddress as exc:
                raise RecipientError(f"{value!r} is not a usable address: {exc}") from None
            if email != recipient.email:
                taken = db.session.scalar(select(Recipient.id).where(Recipient.list_id == mailing_list.id,
                                                                     Recipient.email == email))
                if taken is not None:
                    raise RecipientTaken(f"{email} is already on this list (recipient {taken})")
                recipient.email = email
            continue
        name = field_name(str(key))
        if not name or name in RESERVED_FIELDS:
            raise RecipientError(f"key {key!r} cannot be a field name (empty or reserved)")
        if isinstance(value, (dict, list)):
            raise RecipientError(f"the value of {key!r} must be text, a number, true/false or null")
        if value is None:
            fields.pop(name, None)
            continue
        fields[name] = value.strip() if isinstance(value, str) else value
        if name not in mailing_list.fields and name not in new_fields:
            new_fields.append(name)
    recipient.fields = fields
    if new_fields:
        mailing_list.fields = [*mailing_list.fields, *new_fields]
    db.session.flush()
    return recipient


def delete_recipient(mailing_list: MailingList, recipient: Recipient) -> None:
    # Letters keep their address and outcome and lose the recipient's fields (deliveries.recipient_id
    # has no foreign key to do it: models/campaign.py); no id of a later recipient may take its place.
    db.session.execute(update(Delivery).where(Delivery.recipient_id == recipient.id).values(recipient_id=None))
    removed = db.session.execute(delete(Recipient).where(Recipient.id == recipient.id)).rowcount
    if removed:
        _count(mailing_list, -removed)
    db.session.expunge(recipient)
    db.session.flush()


def _count(mailing_list: MailingList, change: int) -> None:
    db.session.execute(update(MailingList).where(MailingList.id == mailing_list.id)
                       .values(recipient_count=MailingList.recipient_count + change))
    db.session.refresh(mailing_list, ["recipient_count"])


def unsubscribe_recipient(mailing_list: MailingList, recipient: Recipient) -> bool:
    """Mark the recipient unsubscribed and suppress the address for every campaign of the list's owner.
    Returns whether anything changed (a second call changes nothing)."""
    changed = recipient.unsubscribed_at is None
    if changed:
        recipient.unsubscribed_at = utcnow()
    added = db.session.execute(
        insert_unless_present(db.session, Suppression).values(
            user_id=mailing_list.user_id, email=recipient.email, reason="unsubscribe"
        ).returning(Suppression.id)
    ).first() is not None
    db.session.flush()
    return changed or added


def export_list(mailing_list: MailingList) -> Iterator[str]:
    """The list as CSV text (email, then its fields), streamed from a server-side cursor when iterated
    (the query runs then, so a web response may hand this on as its body)."""
    names = list(mailing_list.fields)
    query = (select(Recipient.email, Recipient.fields).where(Recipient.list_id == mailing_list.id)
             .order_by(Recipient.id).execution_options(yield_per=5000))

    def rows() -> Iterator[list[Any]]:
        for email, fields in db.session.execute(query):
            yield [email, *((fields or {}).get(name) for name in names)]

    return csv_stream(["email", *names], rows())
