"""Letters from the campaign and recipient JSON of docs/agent-protocol.md: pure, no I/O.

Templates run in Jinja2's sandbox (the panel's users write them) with limits on loops, output,
numbers, text built and CPU time (template_limits.py), are compiled once per campaign and cached;
the HTML part autoescapes field values, the subject and text do not. A template that fails for
one recipient, or goes past a limit, fails only that letter (``RenderError``, naming the line).
With the campaign's optional ``tracking`` object, the rendered parts' links are masked and the
HTML gets the open pixel (``tracking.Rewriter``), the unsubscribe link left as it is.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from jinja2 import TemplateSyntaxError
from jinja2.exceptions import SecurityError

from . import mime, tracking
from .template_limits import Budget, LimitedSandbox, LimitExceeded, render_part
from .mime import CRLF

CAMPAIGN_FIELDS = ("id", "subject", "from_email", "encoding", "message_id_domain", "bounce_domain", "unsubscribe_url")
RECIPIENT_FIELDS = ("id", "email", "source_ip", "token")
# The token sits in an address local part, a URL and a spool file name: keep it to safe characters.
TOKEN = re.compile(r"[A-Za-z0-9._=-]{1,128}\Z")
_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\Z")
_URL = re.compile(r"[!-~]+\Z")  # printable ASCII, no spaces: it goes between < > in a header
_CACHE_SIZE = 64


class RenderError(Exception):
    """This letter cannot be built; ``reason`` goes to the panel as the failure text."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CampaignError(ValueError):
    """The campaign JSON itself is unusable (missing field, template syntax error…)."""


@dataclass(frozen=True, slots=True)
class Letter:
    envelope_from: str  # VERP: bounce+<token>@<bounce_domain>, also what Return-Path will show
    recipient: str
    data: bytes  # the RFC 5322 message, CRLF lines, ASCII only


def _environment(autoescape: bool) -> LimitedSandbox:
    env = LimitedSandbox(autoescape=autoescape, keep_trailing_newline=True, auto_reload=False)
    for name in ("lipsum", "cycler", "joiner"):  # helpers no letter needs: less surface
        env.globals.pop(name, None)
    return env


_TEXT_ENV = _environment(autoescape=False)
_HTML_ENV = _environment(autoescape=True)


def check_campaign(campaign: Any) -> None:
    """Raise CampaignError naming the first problem of a campaign object."""
    if not isinstance(campaign, Mapping):
        raise CampaignError("campaign must be a JSON object")
    for key in CAMPAIGN_FIELDS:
        if key not in campaign or campaign[key] in (None, ""):
            raise CampaignError(f"campaign.{key} is missing")
    if isinstance(campaign["id"], bool) or not isinstance(campaign["id"], int):
        raise CampaignError("campaign.id must be an integer")
    for key in ("subject", "from_email", "message_id_domain", "bounce_domain", "unsubscribe_url"):
        if not isinstance(campaign[key], str):
            raise CampaignError(f"campaign.{key} must be a string")
    for key in ("text", "html", "from_name", "reply_to"):
        if campaign.get(key) is not None and not isinstance(campaign[key], str):
            raise CampaignError(f"campaign.{key} must be a string or null")
    if not campaign.get("text") and not campaign.get("html"):
        raise CampaignError("campaign needs text or html (or both)")
    if campaign["encoding"] not in mime.ENCODINGS:
        raise CampaignError(f"campaign.encoding must be one of {', '.join(mime.ENCODINGS)}")
    for key in ("from_email", "reply_to"):
        if campaign.get(key) and not mime.is_address(campaign[key]):
            raise CampaignError(f"campaign.{key} {campaign[key]!r} is not a plain e-mail address")
    for key in ("message_id_domain", "bounce_domain"):
        if not _DOMAIN.match(campaign[key]):
            raise CampaignError(f"campaign.{key} {campaign[key]!r} is not a domain name")
    if not _URL.match(campaign["unsubscribe_url"]) or ">" in campaign["unsubscribe_url"]:
        raise CampaignError("campaign.unsubscribe_url must be a URL without spaces")
    _check_tracking(campaign.get("tracking"))


def _check_tracking(value: Any) -> None:
    """The optional `tracking` object: masked links and the open pixel (docs/agent-protocol.md)."""
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise CampaignError("campaign.tracking must be a JSON object or null")
    for key in ("clicks", "opens"):
        if not isinstance(value.get(key, False), bool):
            raise CampaignError(f"campaign.tracking.{key} must be true or false")
    if not isinstance(value.get("key"), str) or len(value["key"]) < 32:
        raise CampaignError("campaign.tracking.key must be a string of at least 32 characters")
    bases = value.get("base_urls")
    if not isinstance(bases, list) or not bases or not all(
        isinstance(base, str) and tracking.is_trackable(base) and _URL.match(base) and '"' not in base
        and ">" not in base for base in bases
    ):
        raise CampaignError("campaign.tracking.base_urls must be a non-empty list of http(s) URLs without spaces")
    links = value.get("links", [])
    if not isinstance(links, list) or not all(isinstance(link, str) for link in links):
        raise CampaignError("campaign.tracking.links must be a list of URLs")


def check_recipient(recipient: Any) -> None:
    """Raise CampaignError naming the first problem of a recipient object."""
    if not isinstance(recipient, Mapping):
        raise CampaignError("recipient must be a JSON object")
    for key in RECIPIENT_FIELDS:
        if key not in recipient or recipient[key] in (None, ""):
            raise CampaignError(f"recipient.{key} is missing")
    if isinstance(recipient["id"], bool) or not isinstance(recipient["id"], int):
        raise CampaignError("recipient.id must be an integer")
    if not isinstance(recipient["email"], str):
        raise CampaignError("recipient.email must be a string")
    if not isinstance(recipient["token"], str) or not TOKEN.match(recipient["token"]):
        raise CampaignError("recipient.token must be 1-128 of A-Z a-z 0-9 . _ = -")
    if not isinstance(recipient["source_ip"], str):
        raise CampaignError("recipient.source_ip must be a string")
    if not isinstance(recipient.get("fields", {}), (Mapping, type(None))):
        raise CampaignError("recipient.fields must be a JSON object")
    for key in ("domain", "bounce_domain"):  # optional: the sending domain this letter goes out for
        if recipient.get(key) is not None and not (isinstance(recipient[key], str) and _DOMAIN.match(recipient[key])):
            raise CampaignError(f"recipient.{key} {recipient[key]!r} is not a domain name")


class CompiledCampaign:
    """One campaign's templates compiled once, and the header lines every letter shares."""

    __slots__ = ("source", "subject", "text", "html", "encoding", "head", "tail", "msgid_suffix",
                 "unsubscribe_url", "bounce_domain", "tracker")

    def __init__(self, campaign: Mapping[str, Any]) -> None:
        check_campaign(campaign)
        self.source = campaign
        self.subject = _compile(_TEXT_ENV, campaign["subject"], "subject")
        self.text = _compile(_TEXT_ENV, campaign["text"], "text") if campaign.get("text") else None
        self.html = _compile(_HTML_ENV, campaign["html"], "html") if campaign.get("html") else None
        self.encoding = campaign["encoding"]
        self.unsubscribe_url = campaign["unsubscribe_url"]
        self.bounce_domain = campaign["bounce_domain"]
        track = campaign.get("tracking")
        self.tracker = tracking.Rewriter(
            campaign["id"], track["key"], track["base_urls"], track.get("links", []),
            clicks=track.get("clicks", False), opens=track.get("opens", False), keep=self.unsubscribe_url,
        ) if track and (track.get("clicks") or track.get("opens")) else None
        self.msgid_suffix = "@" + campaign["message_id_domain"] + ">" + CRLF
        head = "From: " + mime.format_address(campaign.get("from_name"), campaign["from_email"]) + CRLF
        if campaign.get("reply_to"):
            head += "Reply-To: " + campaign["reply_to"] + CRLF
        self.head = head
        self.tail = (
            f"MIME-Version: 1.0{CRLF}"
            f"List-Unsubscribe-Post: List-Unsubscribe=One-Click{CRLF}"
            # RFC 2919: mail clients and filters group a campaign's letters by it; a letter with
            # List-Unsubscribe and no List-Id looks like a half-made list mail (SpamAssassin LIST_PARTIAL).
            f"List-Id: <c{campaign['id']}.{campaign['message_id_domain']}>{CRLF}"
            f"X-Mailfleet-Campaign: {campaign['id']}{CRLF}"
        )
        if campaign.get("test") is True:  # a test send (the panel's "Send a test"): says so to its reader
            self.tail += f"X-Mailfleet-Test: 1{CRLF}"

    def render(self, recipient: Mapping[str, Any]) -> Letter:
        email = recipient["email"]
        token = recipient["token"]
        if not isinstance(email, str) or not mime.is_address(email):
            raise RenderError(f"recipient address {email!r} is not a plain e-mail address")
        if not isinstance(token, str) or not TOKEN.match(token):
            raise RenderError("recipient token has characters an address cannot carry")
        fields = recipient.get("fields") or {}
        unsubscribe = self.unsubscribe_url + token
        context = dict(fields)
        context["email"] = email
        context["unsubscribe_url"] = unsubscribe
        budget = Budget()  # loops, text built and CPU time: one allowance for the letter's parts
        subject = _run(self.subject, context, "subject", budget)
        text = _run(self.text, context, "text", budget) if self.text is not None else None
        html = _run(self.html, context, "html", budget) if self.html is not None else None
        if self.tracker is not None:  # masked links (not the unsubscribe link) and the open pixel
            if text is not None:
                text = self.tracker.text(recipient["id"], text)
            if html is not None:
                html = self.tracker.html(recipient["id"], html)
        if text is None:  # an HTML-only campaign still gets a plain alternative: same words, same links
            text = mime.text_from_html(html or "")
        name = fields.get("name")
        # A letter sent for one of the campaign's sending domains: its Return-Path, Message-ID and
        # DKIM signature (Exim picks the key by X-Mailfleet-Domain) and HELO follow that domain.
        domain = recipient.get("domain")
        bounce_domain = recipient.get("bounce_domain") or self.bounce_domain
        msgid_suffix = f"@{domain}>{CRLF}" if domain else self.msgid_suffix
        list_unsubscribe = f"<{unsubscribe}>, <mailto:unsubscribe+{token}@{bounce_domain}>"
        if len(list_unsubscribe) > 60:
            list_unsubscribe = list_unsubscribe.replace(", ", "," + CRLF + " ", 1)
        headers = "".join((
            self.head,
            "To: ", mime.format_address(name if isinstance(name, str) else None, email), CRLF,
            "Subject: ", mime.header_text(mime.one_line(subject)), CRLF,
            "Date: ", _date(), CRLF,
            "Message-ID: <", message_id_local(recipient["id"], token), msgid_suffix,
            self.tail,
            "List-Unsubscribe: ", list_unsubscribe, CRLF,
            "X-Mailfleet-Source-IP: ", mime.one_line(str(recipient["source_ip"])), CRLF,
            f"X-Mailfleet-Domain: {domain}{CRLF}" if domain else "",
        ))
        text_part = mime.encode_body(text, self.encoding) if text is not None else None
        html_part = mime.encode_body(html, self.encoding) if html is not None else None
        boundary = ""
        if text_part is not None and html_part is not None:
            # "=_" can occur in neither quoted-printable nor base64; 7bit parts are checked
            boundary = "=_mf" + os.urandom(12).hex()
            while boundary in text_part[1] or boundary in html_part[1]:
                boundary = "=_mf" + os.urandom(12).hex()
        message = mime.assemble(headers, text_part, html_part, boundary)
        return Letter(f"bounce+{token}@{bounce_domain}", email, message.encode("ascii"))


def message_id_local(delivery_id: Any, token: str) -> str:
    """The local part of a letter's Message-ID: the same each time the delivery is rendered, so
    after a crash the letter can be looked up in Exim's queue by it (reconcile.py) and a receiver
    sees a re-sent letter as the same message; derived from the token, so it tells nothing more."""
    return hashlib.blake2b(f"{delivery_id}.{token}".encode(), digest_size=12).hexdigest()


def _compile(env: LimitedSandbox, source: str, part: str) -> Any:
    try:
        return env.from_string(source)
    except TemplateSyntaxError as exc:
        raise CampaignError(f"{part} template, line {exc.lineno}: {exc.message}") from None
    except RecursionError:
        raise CampaignError(f"{part} template nests expressions too deeply to be read") from None


def _run(template: Any, context: dict[str, Any], part: str, budget: Budget) -> str:
    try:
        return render_part(template, context, budget, part)
    except LimitExceeded as exc:
        raise RenderError(f"{part} template, {exc}") from None
    except SecurityError as exc:
        raise RenderError(f"{part} template tried something the sandbox forbids: {exc}") from None
    except Exception as exc:  # any template bug fails this one letter, never the sender
        raise RenderError(f"{part} template failed: {type(exc).__name__}: {exc}") from None


def limit_problems(parts: Mapping[str, str | None], variables: Iterable[str]) -> list[tuple[str, int, str]]:
    """(part, line, message) for each part that goes past a limit when rendered once with every
    variable an empty text (``email`` and ``unsubscribe_url`` made up): what the panel refuses to
    save, because it would fail every letter. Other errors depend on the recipients' data and are
    left to the letters. Part names: subject, text, html."""
    context: dict[str, Any] = dict.fromkeys(variables, "")
    context.update(email="someone@example.org", unsubscribe_url="https://example.org/u/0")
    problems = []
    for part, source in parts.items():
        if not source:
            continue
        try:
            template = (_HTML_ENV if part == "html" else _TEXT_ENV).from_string(source)
            render_part(template, context, Budget(), part)
        except LimitExceeded as exc:
            problems.append((part, exc.line, exc.message))
        except Exception:  # noqa: BLE001 (a fault of the placeholder data, not of the template's size)
            continue
    return problems


_date_cache: tuple[int, str] = (0, "")


def _date() -> str:
    """RFC 5322 date in UTC, formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).replace(" GMT", " +0000"))
    return _date_cache[1]


class Renderer:
    """Renders letters, compiling each campaign's templates once (small LRU by campaign id)."""

    def __init__(self, cache_size: int = _CACHE_SIZE) -> None:
        self._cache: OrderedDict[Any, CompiledCampaign] = OrderedDict()
        self._size = cache_size

    def compiled(self, campaign: Mapping[str, Any]) -> CompiledCampaign:
        key = campaign.get("id") if isinstance(campaign, Mapping) else None
        hit = self._cache.get(key)
        if hit is not None and (hit.source is campaign or hit.source == campaign):
            return hit
        compiled = CompiledCampaign(campaign)
        self._cache[key] = compiled
        self._cache.move_to_end(key)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return compiled

    def render(self, campaign: Mapping[str, Any], recipient: Mapping[str, Any]) -> Letter:
        """Build one letter; RenderError for this letter's problem, CampaignError for the campaign's."""
        return self.compiled(campaign).render(recipient)


def example_pair() -> dict[str, Any]:
    """A campaign and a recipient in the shapes the panel pushes: a starting point for `render`."""
    return {
        "campaign": {
            "id": 12,
            "subject": "News for {{ name }}",
            "from_email": "news@example.com",
            "from_name": "Example News",
            "reply_to": None,
            "text": "Hello {{ name }},\n\nThe weather in {{ city }} is fine.\n\nUnsubscribe: {{ unsubscribe_url }}\n",
            "html": "<p>Hello {{ name }},</p>\n<p>The weather in {{ city }} is fine.</p>\n"
                    "<p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>\n",
            "encoding": "quoted-printable",
            "message_id_domain": "example.com",
            "bounce_domain": "bounces.example.com",
            "unsubscribe_url": "http://127.0.0.1:5000/u/",
        },
        "recipient": {
            "id": 9001, "email": "ann@example.org", "fields": {"name": "Ann", "city": "Oslo"},
            "source_ip": "127.0.0.2", "token": "9001-3f2a9c1b7e",
        },
    }
