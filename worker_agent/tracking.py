"""Masked links and the open pixel: finding a letter's links and signing tracking tokens.

Pure, no I/O, stdlib only: the agent rewrites every rendered letter with it, and the panel uses
the same functions to list a campaign's links and to check a token it is shown.

A token is ``<campaign id>.<delivery id>.<ref>.<mac>``:

- ``ref`` is the link's number in the campaign's link list (the http(s) URLs written literally in
  its templates, which the panel stores: the redirect target comes from the panel's database),
  ``u<base64url of the URL>`` for a URL that is not in that list (one built from a recipient's
  fields, ``{{ … }}``: the target is carried in the token and covered by the signature), or ``o``
  for the open pixel;
- ``mac`` is 96 bits of HMAC-SHA256 under the campaign's tracking key (``campaign_key``: derived
  from the panel's secret and the campaign id, handed to the agents in the campaign JSON), over
  the three fields before it. Nobody without the key can make a token, change its target or move
  it to another campaign, delivery or link: a forged link is a 404, never a redirect elsewhere.
"""

from __future__ import annotations

import base64
import hmac
import html
import re
from collections.abc import Iterable

OPEN = "o"
_MAC_BYTES = 12
_HTML_LINK = re.compile(
    r"""(<(?:a|area)\b[^>]*?(?<![\w-])href\s*=\s*)(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""",
    re.IGNORECASE,
)
# "{" is part of a URL here, so that a template's https://shop/{{ sku }} is seen as one with a variable
_TEXT_URL = re.compile(r"""https?://[^\s<>"'`|\\^\[\]]+""", re.IGNORECASE)
_TRAILING = ".,;:!?)'"  # sentence punctuation after a URL in text is not part of it
_TEMPLATE = ("{{", "{%", "{#")
_NUMBER = re.compile(r"[0-9]{1,18}\Z")
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)


def campaign_key(secret: str, campaign_id: int) -> str:
    """The campaign's tracking key (hex): what the agents sign its tokens with."""
    return hmac.digest(secret.encode(), f"mailfleet-tracking:{campaign_id}".encode(), "sha256").hex()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mac(key: str, head: str) -> str:
    # hmac.digest: OpenSSL's one-shot HMAC, several times faster than hmac.new per token
    return _b64(hmac.digest(key.encode(), head.encode(), "sha256")[:_MAC_BYTES])


def make_token(key: str, campaign_id: int, delivery_id: int, ref: int | str) -> str:
    """A token for link number ``ref``, a URL (``ref`` a str starting with http) or the pixel (``OPEN``)."""
    if isinstance(ref, str) and ref != OPEN:
        ref = "u" + _b64(ref.encode("utf-8"))
    head = f"{campaign_id}.{delivery_id}.{ref}"
    return f"{head}.{_mac(key, head)}"


def read_token(secret: str, token: str) -> tuple[int, int, int | str] | None:
    """(campaign id, delivery id, link number | URL | OPEN) of a genuine token; None for anything else.

    Punctuation a mail reader took into the link with the token (``….</c/TOKEN>.``) is dropped:
    no token ends in one of those characters."""
    parts = token.rstrip(_TRAILING).split(".")
    if len(parts) != 4 or len(token) > 4096:
        return None
    campaign, delivery, ref, mac = parts
    if not (_NUMBER.match(campaign) and _NUMBER.match(delivery)):
        return None
    campaign_id = int(campaign)
    if not hmac.compare_digest(mac, _mac(campaign_key(secret, campaign_id), f"{campaign}.{delivery}.{ref}")):
        return None
    if ref == OPEN:
        return campaign_id, int(delivery), OPEN
    if _NUMBER.match(ref) and len(ref) <= 9:
        return campaign_id, int(delivery), int(ref)
    if ref.startswith("u"):
        try:
            url = base64.urlsafe_b64decode(ref[1:] + "=" * (-len(ref[1:]) % 4)).decode("utf-8")
        except ValueError:
            return None
        if is_trackable(url):
            return campaign_id, int(delivery), url
    return None


_UNSAFE = re.compile(r"[\x00-\x20\x7f]")  # no URL needs them; in a Location header they could split it


def is_trackable(url: str) -> bool:
    """An absolute http(s) URL with a host and no spaces or control characters (a field value with a
    line break in an href is left alone); mailto:, anchors, relative and javascript: links are not."""
    lower = url[:8].lower()
    return (((lower.startswith("http://") and len(url) > 7) or (lower.startswith("https://") and len(url) > 8))
            and _UNSAFE.search(url) is None)


def _html_value(match: re.Match[str]) -> str:
    raw = match.group(2) if match.group(2) is not None else match.group(3)
    return html.unescape(raw if raw is not None else match.group(4)).strip()


def _text_url(match: re.Match[str]) -> str:
    return match.group(0).rstrip(_TRAILING)


def links_in(text: str | None, html_source: str | None) -> list[str]:
    """Every http(s) URL of the letter's HTML links (``<a href>``, ``<area href>``) and text, in
    order, each once."""
    found: dict[str, None] = {}
    for match in _HTML_LINK.finditer(html_source or ""):
        url = _html_value(match)
        if is_trackable(url):
            found.setdefault(url, None)
    for match in _TEXT_URL.finditer(text or ""):
        found.setdefault(_text_url(match), None)
    return list(found)


def template_links(text: str | None, html_source: str | None) -> list[str]:
    """The campaign's link list: the URLs written literally in its templates (none with ``{{``)."""
    return [url for url in links_in(text, html_source) if not any(mark in url for mark in _TEMPLATE)]


class Rewriter:
    """Rewrites one campaign's rendered letters: every http(s) link to ``<base>/c/<token>`` except
    those starting with ``keep`` (the unsubscribe links), and the open pixel."""

    __slots__ = ("campaign_id", "key", "bases", "index", "clicks", "opens", "keep", "_memo")

    def __init__(self, campaign_id: int, key: str, bases: Iterable[str], links: Iterable[str],
                 clicks: bool, opens: bool, keep: str) -> None:
        self.campaign_id = campaign_id
        self.key = key
        self.bases = [base.rstrip("/") for base in bases]
        self.index = {url: n for n, url in reversed(list(enumerate(links)))}
        self.clicks = clicks
        self.opens = opens
        self.keep = keep
        self._memo: tuple[int, dict[str, str | None]] = (-1, {})  # one letter's masked URLs (text and HTML share them)

    def _base(self, delivery_id: int) -> str:
        return self.bases[delivery_id % len(self.bases)]

    def _masked(self, delivery_id: int, url: str) -> str | None:
        letter, memo = self._memo
        if letter != delivery_id:
            memo = {}
            self._memo = (delivery_id, memo)
        elif url in memo:
            return memo[url]
        masked = None
        if is_trackable(url) and not url.startswith(self.keep):
            ref = self.index.get(url, url)
            masked = f"{self._base(delivery_id)}/c/{make_token(self.key, self.campaign_id, delivery_id, ref)}"
        memo[url] = masked
        return masked

    def text(self, delivery_id: int, text: str) -> str:
        if not self.clicks:
            return text

        def swap(match: re.Match[str]) -> str:
            url = _text_url(match)
            masked = self._masked(delivery_id, url)
            return match.group(0) if masked is None else masked + match.group(0)[len(url):]

        return _TEXT_URL.sub(swap, text)

    def html(self, delivery_id: int, source: str) -> str:
        if self.clicks:
            def swap(match: re.Match[str]) -> str:
                masked = self._masked(delivery_id, _html_value(match))
                return match.group(0) if masked is None else f'{match.group(1)}"{masked}"'

            source = _HTML_LINK.sub(swap, source)
        if self.opens:
            pixel = (f'<img src="{self._base(delivery_id)}/o/'
                     f'{make_token(self.key, self.campaign_id, delivery_id, OPEN)}" width="1" height="1" alt=""'
                     ' style="display:block;width:1px;height:1px;border:0">')
            ends = list(_BODY_END.finditer(source))
            if ends:
                at = ends[-1].start()
                source = source[:at] + pixel + source[at:]
            else:
                source = source.rstrip("\r\n") + pixel + "\n"
        return source
