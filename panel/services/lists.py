"""Mailing lists of one user: create, find, page through recipients."""

from __future__ import annotations

from sqlalchemy import func, select

from ..extensions import db
from ..models import MailingList, Recipient, User
from ..models.base import is_row_id
from . import quotas


class ListError(Exception):
    """A request about lists that cannot be carried out; the message says why."""


class ListNameTaken(ListError):
    pass


def user_lists(user: User, archived: bool | None = False) -> list[MailingList]:
    """The user's lists: those in use (archived=False), the archived ones (True) or all (None)."""
    query = select(MailingList).where(MailingList.user_id == user.id)
    if archived is not None:
        query = query.where(MailingList.archived_at.is_not(None) if archived else MailingList.archived_at.is_(None))
    return list(db.session.scalars(query.order_by(MailingList.id)))


def archived_list_count(user: User) -> int:
    return db.session.scalar(select(func.count()).where(MailingList.user_id == user.id,
                                                        MailingList.archived_at.is_not(None))) or 0


def get_list(user: User, list_id: int) -> MailingList | None:
    """The user's list with this id; None for a missing list or another user's list."""
    mailing_list = db.session.get(MailingList, list_id)
    return mailing_list if mailing_list is not None and mailing_list.user_id == user.id else None


def find_list(user: User, id_or_name: str) -> MailingList | None:
    """A list by id (all digits) or else by name."""
    if id_or_name.isdigit() and is_row_id(int(id_or_name)):
        found = get_list(user, int(id_or_name))
        if found is not None:
            return found
    return db.session.scalar(
        select(MailingList).where(MailingList.user_id == user.id, MailingList.name == id_or_name.strip())
    )


def create_list(user: User, name: str) -> MailingList:
    name = (name or "").strip()
    if not name:
        raise ListError("give the list a name")
    if len(name) > 200:
        raise ListError("a list name can be at most 200 characters long")
    taken = db.session.scalar(
        select(func.count()).where(MailingList.user_id == user.id, MailingList.name == name)
    )
    if taken:
        raise ListNameTaken(f"you already have a list named {name!r}: choose another name")
    if refusal := quotas.list_refusal(user):
        raise ListError(refusal)
    mailing_list = MailingList(user_id=user.id, name=name, fields=[], recipient_count=0)
    db.session.add(mailing_list)
    db.session.flush()
    return mailing_list


def recipients_page(mailing_list: MailingList, page: int, per_page: int = 50) -> tuple[list[Recipient], bool]:
    """One page (1-based) of the list's recipients in the order they were added, and whether more follow."""
    page = max(page, 1)
    rows = list(
        db.session.scalars(
            select(Recipient)
            .where(Recipient.list_id == mailing_list.id)
            .order_by(Recipient.id)
            .offset((page - 1) * per_page)
            .limit(per_page + 1)
        )
    )
    return rows[:per_page], len(rows) > per_page


def find_recipient(lists: list[MailingList], email: str | None = None) -> Recipient | None:
    """The first recipient of these lists, or the one with this address."""
    if not lists:
        return None
    query = select(Recipient).where(Recipient.list_id.in_([item.id for item in lists]))
    if email:
        query = query.where(Recipient.email == email.strip().lower())
    return db.session.scalar(query.order_by(Recipient.list_id, Recipient.id).limit(1))
