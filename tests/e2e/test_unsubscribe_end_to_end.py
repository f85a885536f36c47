"""Unsubscribing from a letter as delivered, through the real system (issue 5, point 4).

The letters come out of the capture; each way out is taken as a recipient's mail client or
mail server would: the RFC 8058 one-click POST to the List-Unsubscribe URL (no cookie, no form
token, no login), the visible link in the body, and a mail to the List-Unsubscribe mailto:
address, handed to the worker's real Exim, piped to the agent and collected by the daemon. The
next campaign to the same list leaves the unsubscribed addresses out.
"""

from __future__ import annotations

import re
import smtplib
from email.message import EmailMessage

import requests

from tests.helpers import wait_for

from .conftest import Api

DOMAIN = "unsub-e2e.example"
ANN, BOB, CAT = (f"{name}@{DOMAIN}" for name in ("ann", "bob", "cat"))


def _campaign(api: Api, list_id: int, name: str) -> int:
    campaign = api.post("/campaigns", {
        "name": name, "subject": "News", "from_email": "news@sender.example",
        "text": "Hello,\n\nSome news.\n\nUnsubscribe: {{ unsubscribe_url }}\n",
        "html": "<html><body><p>Hello,</p><p>Some news.</p>"
                "<p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p></body></html>",
        "lists": [list_id],
    })
    api.post(f"/campaigns/{campaign['id']}/start", {})
    return campaign["id"]


def _list_unsubscribe(message) -> tuple[str, str]:
    """(the https/http URL, the mailto: address) of a letter's List-Unsubscribe header."""
    values = re.findall(r"<([^>]+)>", str(message["List-Unsubscribe"]))
    (url,) = [v for v in values if v.startswith("http")]
    (mailto,) = [v.removeprefix("mailto:") for v in values if v.startswith("mailto:")]
    return url, mailto


def test_one_click_the_link_and_the_mailto_address_unsubscribe_and_the_next_campaign_honours_them(
        stack, api: Api, panel_rows):
    list_id = api.post("/lists", {"name": "unsubscribe e2e"})["id"]
    api.post(f"/lists/{list_id}/recipients", [{"email": e} for e in (ANN, BOB, CAT)])
    first = _campaign(api, list_id, "first")
    wait_for(lambda: api.get(f"/campaigns/{first}/stats")["delivered"] == 3 or None, timeout=120,
             what="the first campaign delivered")
    letters = {m.rcpt_to: m.message for m in stack.capture.messages() if m.rcpt_to.endswith("@" + DOMAIN)}
    assert set(letters) == {ANN, BOB, CAT}
    for letter in letters.values():
        assert letter["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        url, _ = _list_unsubscribe(letter)
        # the visible link in each part is the very URL of the header
        assert url in letter.get_body(("plain",)).get_content()
        assert f'href="{url}"' in letter.get_body(("html",)).get_content()

    def suppressed() -> dict[str, str]:
        return dict(panel_rows("SELECT email, reason FROM suppressions WHERE email LIKE ?", (f"%@{DOMAIN}",)))

    # Ann's mail client: the RFC 8058 POST, as a stranger to the panel (no cookie, token or login)
    url, _ = _list_unsubscribe(letters[ANN])
    response = requests.post(url, data="List-Unsubscribe=One-Click", allow_redirects=False, timeout=30,
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 200, response.text
    assert "You are unsubscribed" in response.text and "Set-Cookie" not in response.headers
    assert suppressed() == {ANN: "unsubscribe"}

    # Bob follows the link (a GET: a page with a button, nothing changes), then mails the mailto: address
    url, mailto = _list_unsubscribe(letters[BOB])
    page = requests.get(url, allow_redirects=False, timeout=30)
    assert page.status_code == 200 and "<button" in page.text and BOB in page.text
    assert re.fullmatch(r".*/u/\d+-[0-9a-f]{16}", url)  # 64 bits of MAC
    for forged in ("-0000000000", "-0000000000000000"):
        assert requests.post(url.rsplit("-", 1)[0] + forged, timeout=30).status_code == 404
    assert suppressed() == {ANN: "unsubscribe"}
    assert mailto.startswith("unsubscribe+") and mailto.endswith("@bounces.mailfleet.test")
    request = EmailMessage()
    request["From"], request["To"], request["Subject"] = BOB, mailto, "unsubscribe"
    request.set_content("Please take me off this list.\n")
    with smtplib.SMTP("127.0.0.1", stack.exim_port, timeout=30) as smtp:
        smtp.send_message(request, from_addr=BOB, to_addrs=[mailto])
    wait_for(lambda: suppressed() == {ANN: "unsubscribe", BOB: "unsubscribe"} or None, timeout=60,
             what="the mail to Bob's unsubscribe address applied by the panel")
    assert api.get(f"/campaigns/{first}/stats")["unsubscribed"] == 2

    second = _campaign(api, list_id, "second")
    assert api.get(f"/campaigns/{second}/stats")["total"] == 1
    assert [e for (e,) in panel_rows("SELECT email FROM deliveries WHERE campaign_id = ?", (second,))] == [CAT]
    wait_for(lambda: api.get(f"/campaigns/{second}/stats")["delivered"] == 1 or None, timeout=60,
             what="the second campaign delivered")
