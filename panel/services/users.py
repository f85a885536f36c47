"""Accounts, passwords and API tokens.

Passwords are stored as werkzeug hashes; API tokens are shown once and only their SHA-256
is kept, so a leaked database does not leak working tokens. A token may be read-only (GET and
HEAD), expire, and be revoked; a revoked or expired one is refused saying so.

Logging out and changing the password bump the user's session generation, which is part of the
id every session and remember cookie carries: cookies made before are refused after.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import select
from werkzeug.security import check_password_hash, generate_password_hash

from ..extensions import db
from ..models import TOKEN_SCOPES, ApiToken, User
from ..models.base import utcnow
from .addresses import InvalidAddress, normalise_address

MIN_PASSWORD_LENGTH = 8
TOKEN_PREFIX = "mf_"
# A token's last_used_at is written at most this often, so reads do not each cost a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)
MAX_TOKEN_LIFETIME = timedelta(days=3650)
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


def create_user(email: str, password: str, is_admin: bool = False) -> User:
    try:
        email = normalise_address(email)
    except InvalidAddress as exc:
        raise UserError(f"{email!r} is not a usable e-mail address: {exc}") from None
    _check_password_length(password)
    if find_user(email) is not None:
        raise UserError(f"a user {email} already exists")
    user = User(email=email, password_hash=generate_password_hash(password), is_admin=is_admin)
    db.session.add(user)
    db.session.flush()
    return user


def _check_password_length(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")


def authenticate(email: str, password: str) -> User | None:
    """The user with this e-mail and password, or None."""
    user = find_user(email)
    if user is None:
        check_password_hash(_DUMMY_HASH, password)
        return None
    return user if check_password_hash(user.password_hash, password) else None


def load_session_user(session_id: str) -> User | None:
    """The user a session or remember cookie names ("<id>:<generation>"), if that generation is current."""
    user_id, _, generation = session_id.partition(":")
    if not user_id.isdigit() or not generation.isdigit():
        return None
    user = get_user(int(user_id))
    if user is None or user.disabled_at is not None:
        return None
    return user if user.session_generation == int(generation) else None


def end_sessions(user: User) -> None:
    """Every session and remember cookie of `user` is refused from now on."""
    user.session_generation += 1
    db.session.flush()


def change_password(user: User, current: str, new: str) -> None:
    """Set a new password after checking the current one; ends every other session (the caller
    logs this one in again with the new generation)."""
    if not check_password_hash(user.password_hash, current):
        raise UserError("the current password is not right: nothing was changed")
    _check_password_length(new)
    set_password(user, new)


def set_password(user: User, password: str) -> None:
    """Store `password`'s hash and end every session of `user`."""
    user.password_hash = generate_password_hash(password)
    end_sessions(user)


def create_api_token(user: User, name: str = "api", scope: str = "write",
                     expires_in: timedelta | None = None) -> str:
    """Make a token for `user` and return it; this is the only time it can be seen. `scope` "read"
    allows only GET and HEAD; `expires_in` (if given) ends it that long from now."""
    name = name.strip() or "api"
    if len(name) > 100:
        raise UserError("a token name can be at most 100 characters long")
    if scope not in TOKEN_SCOPES:
        raise UserError(f"a token's scope is read or write, not {scope!r}")
    if expires_in is not None and not timedelta(0) < expires_in <= MAX_TOKEN_LIFETIME:
        raise UserError(f"a token's expiry must be from 1 day to {MAX_TOKEN_LIFETIME.days} days away")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    now = utcnow()
    db.session.add(ApiToken(user_id=user.id, name=name, token_hash=_token_hash(token), scope=scope, created_at=now,
                            expires_at=now + expires_in if expires_in is not None else None))
    db.session.flush()
    return token


def user_tokens(user: User) -> list[ApiToken]:
    return list(db.session.scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)))


def get_api_token(token_id: int, user: User | None = None) -> ApiToken | None:
    """The token with this id (only if it is `user`'s, when given)."""
    api_token = db.session.get(ApiToken, token_id)
    if api_token is None or (user is not None and api_token.user_id != user.id):
        return None
    return api_token


def revoke_api_token(api_token: ApiToken) -> bool:
    """Revoke the token; False if it already was."""
    if api_token.revoked_at is not None:
        return False
    api_token.revoked_at = utcnow()
    db.session.flush()
    return True


class TokenRefused(Exception):
    """The bearer token is unknown, revoked or expired; the message says which and what to do."""


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def user_for_token(token: str) -> User | None:
    """The owner of a usable API token, or None; notes when the token was last used."""
    try:
        return authenticate_token(token).user
    except TokenRefused:
        return None


def api_token_for(token: str) -> ApiToken | None:
    """The usable API token (its owner is `.user`), or None; notes when the token was last used."""
    try:
        return authenticate_token(token)
    except TokenRefused:
        return None


def authenticate_token(token: str) -> ApiToken:
    """The API token, if it exists and is neither revoked nor expired (else TokenRefused saying
    which); notes when it was last used."""
    make_one = "make a new one on your account page or with flask --app panel tokens create EMAIL --name N"
    api_token = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == _token_hash(token))) if token else None
    if api_token is None:
        raise TokenRefused(f"this API token is not valid: check it, or {make_one}")
    now = utcnow()
    if api_token.user.disabled_at is not None:
        raise TokenRefused("this API token's account is disabled: ask the panel's admin to enable it")
    if api_token.revoked_at is not None:
        raise TokenRefused(f"this API token ({api_token.name!r}) was revoked on {_when(api_token.revoked_at)}: "
                           f"{make_one}")
    if api_token.expires_at is not None and api_token.expires_at <= now:
        raise TokenRefused(f"this API token ({api_token.name!r}) expired on {_when(api_token.expires_at)}: {make_one}")
    if api_token.last_used_at is None or now - api_token.last_used_at > LAST_USED_RESOLUTION:
        api_token.last_used_at = now
        db.session.flush()
    return api_token
