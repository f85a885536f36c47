"""Masked links and the open pixel in letters as delivered, through the real system (issue 5, point 5).

A campaign goes out through the panel, daemon, agent and the worker's real Exim to the capture;
the links in each captured letter are fetched from the panel as a recipient's browser would: each
leads on (302) to its own target and is counted per link and recipient, the pixel is a GIF that
counts an open, and a link with one character changed is a 404.
"""

from __future__ import annotations

import re

import requests

from tests.helpers import wait_for

from .conftest import Api

DOMAIN = "clicks-e2e.example"
PEOPLE = [{"email": f"{name}@{DOMAIN}", "name": name.title(), "sku": f"S-{n}"} for n, name in enumerate(("ann", "bob"))]
SALE = "https://shop.example.com/sale?a=1&b=2"


def test_a_delivered_letters_masked_links_lead_on_and_are_counted(stack, api: Api, panel_rows):
    list_id = api.post("/lists", {"name": "clicks e2e"})["id"]
    api.post(f"/lists/{list_id}/recipients", PEOPLE)
    campaign = api.post("/campaigns", {
        "name": "clicks", "subject": "Sale", "from_email": "news@sender.example", "track_opens": True,
        "text": f"Hello {{{{ name }}}},\nSale: {SALE}\nUnsubscribe: {{{{ unsubscribe_url }}}}\n",
        "html": f'<html><body><p>Hello {{{{ name }}}}, <a href="{SALE.replace("&", "&amp;")}">sale</a>, '
                '<a href="https://shop.example.com/i/{{ sku }}">yours</a></p>'
                '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></body></html>',
        "lists": [list_id],
    })
    campaign_id = campaign["id"]
    api.post(f"/campaigns/{campaign_id}/start", {})
    wait_for(lambda: api.get(f"/campaigns/{campaign_id}/stats")["delivered"] == 2 or None, timeout=120,
             what="the campaign delivered")
    letters = {m.rcpt_to: m.message for m in stack.capture.messages() if m.rcpt_to.endswith("@" + DOMAIN)}
    assert set(letters) == {p["email"] for p in PEOPLE}

    masked = re.compile(re.escape(stack.panel_url) + r"/c/[A-Za-z0-9._=-]*[A-Za-z0-9_=-]")
    for n, person in enumerate(PEOPLE):
        letter = letters[person["email"]]
        text = letter.get_body(("plain",)).get_content()
        html = letter.get_body(("html",)).get_content()
        assert "shop.example.com" not in text + html
        assert re.search(re.escape(stack.panel_url) + r"/u/\d+-[0-9a-f]{16}\s", text)  # unsubscribe as it was
        (text_sale,) = masked.findall(text)
        html_sale, yours = masked.findall(html)
        assert text_sale == html_sale
        for url, target in ((html_sale, SALE), (yours, f"https://shop.example.com/i/S-{n}")):
            response = requests.get(url, allow_redirects=False, timeout=30)
            assert response.status_code == 302 and response.headers["Location"] == target
        assert requests.head(html_sale, allow_redirects=False, timeout=30).status_code == 302  # not counted
        pixel = re.search(r'<img src="(' + re.escape(stack.panel_url) + r'/o/[^"]+)"', html).group(1)
        image = requests.get(pixel, timeout=30)
        assert image.status_code == 200 and image.headers["Content-Type"] == "image/gif"
        tampered = html_sale[:-1] + ("A" if html_sale[-1] != "A" else "B")
        response = requests.get(tampered, allow_redirects=False, timeout=30)
        assert response.status_code == 404 and "Location" not in response.headers

    stats = api.get(f"/campaigns/{campaign_id}/stats")
    assert (stats["clicks"], stats["clickers"], stats["opens"], stats["openers"]) == (4, 2, 2, 2)
    rows = panel_rows(
        "SELECT d.email, c.link_idx, c.url FROM clicks c JOIN deliveries d ON d.id = c.delivery_id "
        "WHERE c.campaign_id = ? ORDER BY d.email, c.link_idx", (campaign_id,))
    assert sorted(rows, key=str) == sorted([
        (f"ann@{DOMAIN}", 0, None), (f"ann@{DOMAIN}", None, "https://shop.example.com/i/S-0"),
        (f"bob@{DOMAIN}", 0, None), (f"bob@{DOMAIN}", None, "https://shop.example.com/i/S-1"),
    ], key=str)
