"""Masked links and the open pixel in rendered letters (worker_agent.tracking, render.py)."""

from __future__ import annotations

import email
import email.policy
import re

import pytest

from worker_agent import tracking
from worker_agent.render import CampaignError, Renderer

from .conftest import make_campaign, make_recipient

SECRET = "panel-secret"
BASE = "https://t.example.net"

TEXT = (
    "Hello {{ name }},\n"
    "Our shop: https://shop.example.com/sale?a=1&b=2.\n"
    "Your page: https://shop.example.com/u/{{ sku }}\n"
    "Write: mailto:help@example.com\n"
    "Unsubscribe: {{ unsubscribe_url }}\n"
)
HTML = (
    "<html><body>\n"
    "<p>Hello {{ name }}</p>\n"
    '<p><a class="b" href="https://shop.example.com/sale?a=1&amp;b=2">Sale</a>\n'
    "<a href='http://blog.example.com/post'>Blog</a>\n"
    '<a href="https://shop.example.com/u/{{ sku }}">Yours</a>\n'
    '<a href="#top">Top</a> <a href="mailto:help@example.com">Mail us</a>\n'
    '<a data-href="https://data.example.com/" href="#x">Data</a>\n'
    '<link href="https://cdn.example.com/x.css">\n'
    '<a href="{{ unsubscribe_url }}">Unsubscribe</a></p>\n'
    "</body></html>\n"
)


def tracked_campaign(**tracking_changes: object) -> dict:
    campaign = make_campaign(id=12, text=TEXT, html=HTML)
    track = {
        "clicks": True,
        "opens": False,
        "key": tracking.campaign_key(SECRET, 12),
        "base_urls": [BASE],
        "links": tracking.template_links(TEXT, HTML),
    }
    track.update(tracking_changes)
    campaign["tracking"] = track
    return campaign


def parts(data: bytes) -> tuple[str, str]:
    message = email.message_from_bytes(data, policy=email.policy.default)
    plain, rich = message.get_payload()
    return plain.get_content().replace("\r\n", "\n"), rich.get_content().replace("\r\n", "\n")


def tokens(body: str) -> list[str]:
    return re.findall(re.escape(BASE) + r"/c/([A-Za-z0-9._=-]*[A-Za-z0-9_=-])", body)


def test_the_template_link_list_holds_the_literal_links_once_in_order() -> None:
    assert tracking.template_links(TEXT, HTML) == [
        "https://shop.example.com/sale?a=1&b=2",
        "http://blog.example.com/post",
    ]


def test_every_link_is_masked_but_unsubscribe_mailto_and_anchors() -> None:
    recipient = make_recipient(77, fields={"name": "Ann", "sku": "A-9"})
    letter = Renderer().render(tracked_campaign(), recipient)
    text, html = parts(letter.data)

    assert "shop.example.com" not in text and "shop.example.com" not in html
    assert "blog.example.com" not in html
    assert "mailto:help@example.com" in text and 'href="mailto:help@example.com"' in html
    assert 'href="#top"' in html
    assert '<a data-href="https://data.example.com/" href="#x">' in html  # only the href attribute itself
    assert 'href="https://cdn.example.com/x.css"' in html  # not a link a reader clicks
    assert "Unsubscribe: http://127.0.0.1:5000/u/77-3f2a9c1b7e" in text
    assert 'href="http://127.0.0.1:5000/u/77-3f2a9c1b7e"' in html
    assert 'class="b" href="' + BASE + "/c/" in html  # the tag's other attributes stay
    assert "/c/" in text and text.count(BASE + "/c/") == 2
    # a reader that takes the full stop into the link still gets there
    assert tracking.read_token(SECRET, tokens(text)[0] + ".") == (12, 77, 0)
    assert re.search(r"Our shop: " + re.escape(BASE) + r"/c/[^\s]+[^.]\.\n", text)  # the full stop stays outside

    read = [tracking.read_token(SECRET, token) for token in tokens(text)]
    assert read == [(12, 77, 0), (12, 77, "https://shop.example.com/u/A-9")]
    read = [tracking.read_token(SECRET, token) for token in tokens(html)]
    assert read == [(12, 77, 0), (12, 77, 1), (12, 77, "https://shop.example.com/u/A-9")]


def test_tokens_differ_per_recipient_and_cannot_be_altered() -> None:
    renderer = Renderer()
    campaign = tracked_campaign()
    first = tokens(parts(renderer.render(campaign, make_recipient(1, fields={"sku": "x"})).data)[1])
    second = tokens(parts(renderer.render(campaign, make_recipient(2, fields={"sku": "x"})).data)[1])
    assert first[0] != second[0]
    campaign_id, delivery, ref, mac = first[0].split(".")
    for forged in (
        f"{campaign_id}.2.{ref}.{mac}",  # another recipient
        f"13.{delivery}.{ref}.{mac}",  # another campaign
        f"{campaign_id}.{delivery}.1.{mac}",  # another link
        f"{campaign_id}.{delivery}.{ref}.{mac[:-1]}A" if not mac.endswith("A") else f"{campaign_id}.{delivery}.{ref}.{mac[:-1]}B",
        f"{campaign_id}.{delivery}.u" + tracking.make_token("x" * 64, 12, 1, "https://evil.example/").split(".u")[1],
        "12.1.0", "", "a.b.c.d", f"{campaign_id}.{delivery}.\u0661.{mac}",
    ):
        assert tracking.read_token(SECRET, forged) is None, forged
    # a carried URL swapped for another keeps the old signature: refused
    carried = first[-1].split(".")
    evil = tracking.make_token(tracking.campaign_key(SECRET, 12), 12, 1, "https://evil.example/").split(".")[2]
    assert tracking.read_token(SECRET, ".".join([carried[0], carried[1], evil, carried[3]])) is None
    # the same campaign's key under another panel secret: refused
    assert tracking.read_token("another-secret", first[0]) is None


def test_the_open_pixel_goes_before_the_end_of_the_body() -> None:
    letter = Renderer().render(tracked_campaign(opens=True), make_recipient(5, fields={"sku": "q"}))
    _text, html = parts(letter.data)
    pixel = re.search(r'<img src="' + re.escape(BASE) + r'/o/([^"]+)" width="1" height="1" alt=""[^>]*>\s*</body>', html)
    assert pixel, html
    assert tracking.read_token(SECRET, pixel.group(1)) == (12, 5, tracking.OPEN)


def test_opens_only_leaves_links_alone_and_no_tracking_changes_nothing() -> None:
    recipient = make_recipient(5, fields={"sku": "q"})
    _text, html = parts(Renderer().render(tracked_campaign(clicks=False, opens=True), recipient).data)
    assert 'href="https://shop.example.com/sale?a=1&amp;b=2"' in html and "/o/" in html
    campaign = make_campaign(id=12, text=TEXT, html=HTML)
    text, html = parts(Renderer().render(campaign, recipient).data)
    assert "https://shop.example.com/sale?a=1&b=2." in text and "/c/" not in html and "/o/" not in html


def test_several_tracking_hosts_take_turns() -> None:
    campaign = tracked_campaign(base_urls=["https://a.example.net", "https://b.example.net/"])
    hosts = set()
    for n in range(4):
        _text, html = parts(Renderer().render(campaign, make_recipient(n, fields={"sku": "q"})).data)
        hosts |= set(re.findall(r'href="(https://[ab]\.example\.net)/c/', html))
    assert hosts == {"https://a.example.net", "https://b.example.net"}


@pytest.mark.parametrize("change, message", [
    ({"key": "short"}, "tracking.key"),
    ({"base_urls": []}, "tracking.base_urls"),
    ({"base_urls": ["javascript:alert(1)"]}, "tracking.base_urls"),
    ({"links": "x"}, "tracking.links"),
    ({"clicks": "yes"}, "tracking.clicks"),
])
def test_a_malformed_tracking_object_is_refused(change: dict, message: str) -> None:
    with pytest.raises(CampaignError, match=message):
        Renderer().render(tracked_campaign(**change), make_recipient())


def test_a_field_with_a_line_break_in_a_link_is_never_signed() -> None:
    """A Location header must not be split: a URL with control characters or spaces is left as it is."""
    html = '<a href="https://shop.example.com/i/{{ sku }}">yours</a>'
    campaign = make_campaign(id=12, text=None, html=html)
    campaign["tracking"] = {"clicks": True, "key": tracking.campaign_key(SECRET, 12), "base_urls": [BASE], "links": []}
    letter = Renderer().render(campaign, make_recipient(3, fields={"sku": "x\r\nSet-Cookie: a=b"}))
    assert b"/c/" not in letter.data
    assert not tracking.is_trackable("https://a.example/x y") and not tracking.is_trackable("https://a.example/\x7f")
    forged = tracking.make_token(tracking.campaign_key(SECRET, 12), 12, 3, "https://a.example/\r\nX: y")
    assert tracking.read_token(SECRET, forged) is None
