"""An admin's servers lent to chosen users.

A user may choose a server shared with them for a campaign, and the daemon then hands that
campaign's letters to it like to any chosen server; the server's agent gets the user's sending
domains' DKIM keys and bounce domains (server_config.sending_domains). Everything else about the
server stays its owner's: get_server and user_servers (its pages, its API, its settings and keys)
know only the owner, so to the user its pages are a 404.
"""

from __future__ import annotations

from sqlalchemy import or_, select

from ..extensions import db
from ..models import Server, ServerShare, User
from . import server_config


class ShareError(Exception):
    """A share that cannot be made; the message says why."""


def shared_server_ids(user_id: int):
    """A subquery: the ids of the servers shared with this user."""
    return select(ServerShare.server_id).where(ServerShare.user_id == user_id)


def sendable_servers(user: User) -> list[Server]:
    """The servers `user` may choose for a campaign: their own and those shared with them."""
    return list(db.session.scalars(select(Server).where(
        or_(Server.user_id == user.id, Server.id.in_(shared_server_ids(user.id)))).order_by(Server.id)))


def shared_with(user_id: int) -> list[Server]:
    return list(db.session.scalars(select(Server).where(Server.id.in_(shared_server_ids(user_id))).order_by(Server.id)))


def share_servers(admin: User, user: User, server_ids: list[int]) -> list[Server]:
    """Lend exactly these servers of `admin`'s to `user` (others of the admin's taken back)."""
    if not admin.is_admin:
        raise ShareError("only an admin may share servers")
    if admin.id == user.id:
        raise ShareError("these are your own servers already")
    if not all(isinstance(item, int) and not isinstance(item, bool) for item in server_ids):
        raise ShareError("give the servers as a list of server ids")
    own = {server.id: server for server in db.session.scalars(select(Server).where(Server.user_id == admin.id))}
    foreign = [str(item) for item in server_ids if item not in own]
    if foreign:
        raise ShareError(f"server {', '.join(foreign)} is not one of yours: only your own servers can be shared")
    wanted = set(server_ids)
    current = set(db.session.scalars(select(ServerShare.server_id).where(
        ServerShare.user_id == user.id, ServerShare.server_id.in_(list(own) or [0]))))
    for server_id in wanted - current:
        db.session.add(ServerShare(server_id=server_id, user_id=user.id))
    for server_id in current - wanted:
        share = db.session.get(ServerShare, (server_id, user.id))
        if share is not None:
            db.session.delete(share)
    for server_id in wanted ^ current:  # their sending domains' keys come and go with the share
        server_config.bump(own[server_id])
    db.session.flush()
    return [own[item] for item in sorted(wanted)]
