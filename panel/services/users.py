"""Accounts, passwords and API tokens.

Passwords are stored as werkzeug hashes; API tokens are shown once and only their SHA-256
is kept, so a leaked database does not leak working tokens.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from ..extensions import db
from ..models import ApiToken, User
from ..models.base import utcnow
from .addresses import InvalidAddress, normalise_address

MIN_PASSWORD_LENGTH = 8
TOKEN_PREFIX = "mf_"
# A token's last_used_at is written at most this often, so reads do not each cost a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# Checked against when the e-mail is unknown, so a login takes as long either way.
_DUMMY_HASH = generate_password_hash("not a password")


class UserError(Exception):
    """A request about accounts that cannot be carried out; the message says why."""


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def get_user(user_id: int) -> User | None:
    return db.session.get(User, user_id)


def find_user(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email == email.strip().lower()))


def create_user(email: str, password: str) -> User:
    try:
        email = normalise_address(email)
    except InvalidAddress as exc:
        raise UserError(f"{email!r} is not a usable e-mail address: {exc}") from None
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    if find_user(email) is not None:
        raise UserError(f"a user {email} already exists")
    user = User(email=email, password_hash=generate_password_hash(password))
    db.session.add(user)
    db.session.flush()
    return user


def authenticate(email: str, password: str) -> User | None:
    """The user with this e-mail and password, or None."""
    user = find_user(email)
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    return user if check_password_hash(user.password_hash, password) else None


def create_api_token(user: User, name: str = "api") -> str:
    """Make a token for `user` and return it; this is the only time it can be seen."""
    name = name.strip() or "api"
    if len(name) > 100:
        raise UserError("a token name can be at most 100 characters long")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    db.session.add(ApiToken(user_id=user.id, name=name, token_hash=_token_hash(token)))
    db.session.flush()
    return token


def user_for_token(token: str) -> User | None:
    """The owner of an API token, or None; notes when the token was last used."""
    api_token = api_token_for(token)
    return api_token.user if api_token is not None else None


def api_token_for(token: str) -> ApiToken | None:
    """The API token (its owner is `.user`), or None; notes when the token was last used."""
    if not token:
        return None
    api_token = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == _token_hash(token)))
    if api_token is None:
        return None
    now = utcnow()
    if api_token.last_used_at is None or now - api_token.last_used_at > LAST_USED_RESOLUTION:
        api_token.last_used_at = now
        db.session.flush()
    return api_token
