"""What an admin does to other accounts: list, create, disable and enable, reset a password, delete.

A disabled account keeps its rows; its sessions end and its tokens are refused
(users.load_session_user, users.authenticate_token) until it is enabled again. A deletion takes
every row the user owns with it (the foreign keys cascade), so it is refused while one of their
campaigns still has letters to send: cancel them first, or disable the account instead.
"""

from __future__ import annotations

from sqlalchemy import select

from ..extensions import db
from ..models import Campaign, User
from ..models.base import utcnow
from .users import UserError, create_user, end_sessions, generate_password, set_password

SENDING_STATES = ("running", "paused")  # a campaign whose letters may still be on the servers


def all_users() -> list[User]:
    return list(db.session.scalars(select(User).order_by(User.email)))


def get_any_user(user_id: int) -> User | None:
    return db.session.get(User, user_id)


def add_user(email: str, is_admin: bool = False) -> tuple[User, str]:
    """A new account with a generated password, returned once (it is kept only as a hash)."""
    password = generate_password()
    return create_user(email, password, is_admin=is_admin), password


def _not_yourself(admin: User, user: User, what: str) -> None:
    if admin.id == user.id:
        raise UserError(f"you cannot {what} your own account: ask another admin")


def disable_user(admin: User, user: User) -> None:
    _not_yourself(admin, user, "disable")
    if user.disabled_at is None:
        user.disabled_at = utcnow()
        end_sessions(user)


def enable_user(user: User) -> None:
    user.disabled_at = None
    db.session.flush()


def reset_password(user: User) -> str:
    """A new generated password for `user`, returned once; every session of theirs ends."""
    password = generate_password()
    set_password(user, password)
    return password


def delete_user(admin: User, user: User) -> None:
    _not_yourself(admin, user, "delete")
    sending = db.session.scalar(select(Campaign.name).where(Campaign.user_id == user.id,
                                                            Campaign.status.in_(SENDING_STATES)).limit(1))
    if sending is not None:
        raise UserError(f"{user.email} has a campaign still running or paused ({sending!r}): cancel it first, "
                        "or disable the account instead")
    db.session.delete(user)
    db.session.flush()
