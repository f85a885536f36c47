"""The campaign and recipient JSON the agents build letters from (docs/agent-protocol.md),
and previews built by the agent's own renderer, so a preview is exactly what will be sent.

The daemon pushes the same payloads these functions return.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..extensions import db
from ..models import Campaign, Delivery, Recipient, Server, User
from ..models.domain import bounce_domain_of
from .lists import find_recipient
from .servers import user_servers
from .tokens import delivery_token
from .tracking import tracking_payload

PREVIEW_DELIVERY_ID = 0  # a preview is no delivery; its unsubscribe link leads nowhere


def message_id_domain(from_email: str) -> str:
    return from_email.rpartition("@")[2].lower()


def campaign_payload(campaign: Campaign, public_url: str, bounce_domain: str, secret: str | None = None,
                     tracking_scheme: str = "https") -> dict[str, Any]:
    """The `campaign` object of a `/v1/batches` push; with the panel's `secret`, its `tracking`
    object too (masked links, the open pixel) when the campaign tracks anything."""
    payload = {
        "id": campaign.id,
        "subject": campaign.subject,
        "from_email": campaign.from_email,
        "from_name": campaign.from_name or None,
        "reply_to": campaign.reply_to or None,
        "text": campaign.text or None,
        "html": campaign.html or None,
        "encoding": campaign.encoding,
        "message_id_domain": message_id_domain(campaign.from_email),
        "bounce_domain": bounce_domain,
        "unsubscribe_url": public_url.rstrip("/") + "/u/",
    }
    track = tracking_payload(campaign, secret, public_url, tracking_scheme) if secret is not None else None
    if track is not None:
        payload["tracking"] = track
    return payload


def recipient_payload(
    delivery_or_recipient: Delivery | Recipient,
    token: str,
    source_ip: str | None,
    fields: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One entry of a push's `recipients`.

    For a Delivery, `id` is the delivery's id and `fields` those of its recipient row (pass
    `fields` to skip that lookup; a deleted recipient leaves `{}`). For a bare Recipient (a
    preview) `id` is PREVIEW_DELIVERY_ID.
    """
    if isinstance(delivery_or_recipient, Delivery):
        delivery = delivery_or_recipient
        if fields is None:
            recipient = db.session.get(Recipient, delivery.recipient_id) if delivery.recipient_id else None
            fields = recipient.fields if recipient is not None else {}
        letter_id, address = delivery.id, delivery.email
    else:
        letter_id, address = PREVIEW_DELIVERY_ID, delivery_or_recipient.email
        if fields is None:
            fields = delivery_or_recipient.fields
    payload = {
        "id": letter_id,
        "email": address,
        "fields": dict(fields or {}),
        "source_ip": source_ip,
        "token": token,
    }
    sending_domain = getattr(delivery_or_recipient, "sending_domain", None)
    if sending_domain:  # one of the campaign's sending domains: Return-Path, DKIM and HELO follow it
        payload["domain"] = sending_domain
        payload["bounce_domain"] = bounce_domain_of(sending_domain)
    return payload


@dataclass
class Preview:
    recipient: str | None = None
    campaign: dict[str, Any] | None = None
    payload: dict[str, Any] | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str | None = None
    html: str | None = None
    raw: str | None = None
    error: str | None = None


def _preview_source_ip(user: User, campaign: Campaign) -> str:
    servers: list[Server] = campaign.servers or user_servers(user)
    for server in servers:
        for ip in server.ips:
            if ip.active:
                return ip.ip
    return "127.0.0.1"


def preview_letter(
    user: User,
    campaign: Campaign,
    recipient_email: str | None,
    *,
    public_url: str,
    bounce_domain: str,
    secret: str,
    tracking_scheme: str = "https",
) -> Preview:
    """The letter the first recipient of the campaign's lists (or the one with this address)
    would get, built by the worker agent's renderer in a separate process with memory and CPU
    limits (worker_agent/jail.py: a user's template never runs in the panel's web process)."""
    from worker_agent import jail

    recipient = find_recipient(campaign.lists, recipient_email)
    if recipient is None:
        where = f"no recipient {recipient_email!r} in" if recipient_email else "no recipients in"
        return Preview(error=f"There are {where} the campaign's lists to preview the letter for.")
    payload = campaign_payload(campaign, public_url, bounce_domain, secret, tracking_scheme)
    person = recipient_payload(
        recipient, delivery_token(secret, PREVIEW_DELIVERY_ID), _preview_source_ip(user, campaign)
    )
    preview = Preview(recipient=recipient.email, campaign=payload, payload=person)
    try:
        letter = jail.run("letter", {"campaign": payload, "recipient": person})
    except jail.JailError as exc:
        preview.error = f"The letter cannot be built: the renderer stopped: {exc}."
        return preview
    if "error" in letter:
        preview.error = f"The letter cannot be built: {letter['error']}"
        return preview
    preview.raw, preview.text, preview.html = letter["raw"], letter["text"], letter["html"]
    preview.headers = [(name, value) for name, value in letter["headers"]]
    return preview
