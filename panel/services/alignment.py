"""Whether a campaign's From domain is DMARC-aligned: one of the user's sending domains (or a
sub-domain of one) whose records are published, so Return-Path and DKIM d= can share it. If not,
the plain warning the composer and the API give (issue 11 point 2)."""

from __future__ import annotations

from sqlalchemy import select

from ..extensions import db
from ..models import Domain, User


def from_domain(address: str) -> str:
    return address.rpartition("@")[2].strip().lower().rstrip(".")


def unaligned_warning(user: User | int, from_email: str | None) -> str | None:
    """None when letters From `from_email` can align; else what receivers will do and the one fix.
    Reads the stored DNS state (the daemon publishes and records it), no lookup on a page view."""
    if not from_email or "@" not in from_email:
        return None
    user_id = user if isinstance(user, int) else user.id
    name = from_domain(from_email)
    sending = list(db.session.scalars(select(Domain).where(Domain.user_id == user_id, Domain.kind == "sending")
                                      .order_by(Domain.name)))
    covering = [item for item in sending if name == item.name or name.endswith("." + item.name)]
    if any(item.dns_state == "published" for item in covering):
        return None
    consequence = (f"Letters From {name} will fail DMARC alignment at Gmail, Yahoo and Outlook, which refuse or "
                   "junk bulk mail whose SPF and DKIM do not match the From domain.")
    if covering:
        item = covering[0]
        return (f"{consequence} {item.name} is one of your sending domains but its DNS records are not published "
                f"({item.dns_state}): publish them on its Domains page, then check them.")
    others = ", ".join(item.name for item in sending if item.dns_state == "published")
    choose = f", or choose a From address on one of your sending domains ({others})" if others else ""
    return (f"{consequence} To fix it, add {name} under Domains as a sending domain and publish its records{choose}.")
