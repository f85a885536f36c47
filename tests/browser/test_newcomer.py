"""What a newcomer does after `make run`, in a real browser (headless Chromium), by clicking and typing.

Log in, create a list, upload a CSV file and read the import report, write a campaign (a
template mistake refused first), preview it for a real recipient, start it and watch the
page count the deliveries by itself, then read the letters in the capture's Maildir.
And another user sees none of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from devserver.mail_capture import read_maildir, wait_for_count
from devserver.stack import LocalStack

EXPECT_MS = 20_000  # a page reacting to a click
COUNTS_MS = 60_000  # the campaign page's live counts reaching the end

DOMAIN = "newcomer.example"
GOOD = {  # address: (name, city), in file order
    f"ann@{DOMAIN}": ("Ann", "Athens"),
    f"bob@{DOMAIN}": ("Bob", "Berlin"),
    f"cleo@{DOMAIN}": ("Cleo", "Cairo"),
    f"dan@{DOMAIN}": ("Dan", "Dublin"),
    f"zoe@{DOMAIN}": ("Zoë", "Zürich"),
}
CSV_TEXT = (
    "email,name,city\n"             # line 1
    f"ann@{DOMAIN},Ann,Athens\n"    # line 2
    f"bob@{DOMAIN},Bob,Berlin\n"    # line 3
    "not-an-address,Nobody,Nowhere\n"  # line 4: rejected
    f"cleo@{DOMAIN},Cleo,Cairo\n"   # line 5
    ",Empty,Emptyville\n"           # line 6: rejected
    f"dan@{DOMAIN},Dan,Dublin\n"    # line 7
    f"zoe@{DOMAIN},Zoë,Zürich\n"    # line 8
)
BAD_LINES = {4: "not-an-address", 6: ""}

SUBJECT = "Hello {{ name }}"
TEXT_BODY = "Dear {{ name }},\n\nthe sun is out in {{ city }} today.\n\nUnsubscribe: {{ unsubscribe_url }}\n"
HTML_BODY = (
    "<p>Dear <b>{{ name }}</b>,</p>\n<p>the sun is out in <i>{{ city }}</i> today.</p>\n"
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>\n'
)
ENCODING = "base64"


# -- steps a person takes ------------------------------------------------------------------


def log_in(page: Page, email: str, password: str) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login"))
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible(timeout=EXPECT_MS)
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def create_list(page: Page, name: str) -> str:
    """Create a list from the Lists page; returns the import page's URL it leads to."""
    page.get_by_role("navigation").get_by_role("link", name="Lists").click()
    expect(page.get_by_role("heading", name="Lists", exact=True)).to_be_visible()
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Create list").click()
    expect(page.get_by_role("heading", name=f"Import into {name}")).to_be_visible(timeout=EXPECT_MS)
    expect(page).to_have_url(re.compile(r"/lists/\d+/import$"))
    return page.url


def fill_campaign(page: Page, *, name: str, subject: str, text: str, html: str, list_label: str) -> None:
    page.get_by_label("Campaign name").fill(name)
    page.get_by_label("Subject").fill(subject)
    page.get_by_label("From address").fill("news@sender.example")
    page.get_by_label("From name").fill("Sender News")
    page.get_by_label("Transfer encoding").select_option(label="Base64")
    page.get_by_label("Both (multipart/alternative)").check()
    page.get_by_label("Text body").fill(text)
    page.get_by_label("HTML body").fill(html)
    page.get_by_label("Send to lists").select_option(label=list_label)


def field_errors(page: Page, label: str):
    """The error notes under the field labelled `label`."""
    return page.locator("div.field", has=page.get_by_label(label, exact=True)).locator("p.error")


# -- the tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def made_here() -> dict[str, str]:
    """URLs of what the first test created, for the second test (empty when it did not run)."""
    return {}


def test_newcomer_imports_a_list_sends_a_campaign_and_watches_it_arrive(
    stack: LocalStack, new_page: Callable[[], Page], screenshot, tmp_path: Path, made_here: dict[str, str]
) -> None:
    page = new_page()

    # 1. The panel asks to log in; the printed admin e-mail and password let them in.
    log_in(page, stack.settings.admin_email, stack.admin_password)

    # 2. A list, and a CSV file uploaded into it.
    import_url = create_list(page, "Newcomers")
    expect(page.get_by_role("status")).to_contain_text("List “Newcomers” created")
    csv_file = tmp_path / "subscribers.csv"
    csv_file.write_text(CSV_TEXT, encoding="utf-8")
    page.get_by_label("CSV file").set_input_files(csv_file)
    page.get_by_role("button", name="Import").click()
    report = page.locator("#report")
    expect(report.get_by_role("heading", name="Import finished")).to_be_visible(timeout=EXPECT_MS)
    assert page.url == import_url
    expect(report.locator("dd.added")).to_have_text("5")
    expect(report.locator("dd.duplicates")).to_have_text("0")
    expect(report.locator("dd.rejected")).to_have_text("2")
    rows = report.locator("table.data tbody tr")
    expect(rows).to_have_count(2)
    rejected = {}
    for i in range(2):
        line, address, why = (cell.strip() for cell in rows.nth(i).locator("td").all_inner_texts())
        rejected[int(line)] = (address, why)
    assert {line: address for line, (address, _) in rejected.items()} == BAD_LINES
    assert "@-sign" in rejected[4][1], rejected  # "an address needs a part before and after an @-sign"
    assert rejected[6][1] == "no e-mail address", rejected
    screenshot(page, "import-report")

    report.get_by_role("link", name="See the list").click()
    expect(page.get_by_role("heading", name="Newcomers")).to_be_visible(timeout=EXPECT_MS)
    facts = page.locator("dl.facts")
    expect(facts.locator("div", has_text="Recipients").locator("dd")).to_have_text("5")
    for field in ("email", "name", "city"):
        expect(facts.locator("code", has_text=field)).to_be_visible()
    table = page.locator("table.data tbody")
    expect(table.locator("tr")).to_have_count(5)
    for address, (name, city) in GOOD.items():
        expect(table.locator("tr", has_text=address)).to_contain_text(name)
        expect(table.locator("tr", has_text=address)).to_contain_text(city)
    list_url = page.url
    page.get_by_role("navigation").get_by_role("link", name="Lists").click()
    expect(page.get_by_role("row", name=re.compile(r"Newcomers\s+5\b"))).to_be_visible()

    # 3. The composer: a template with mistakes is refused with their lines and names.
    page.get_by_role("navigation").get_by_role("link", name="Campaigns").click()
    page.get_by_role("link", name="New campaign").click()
    expect(page.get_by_role("heading", name="New campaign")).to_be_visible(timeout=EXPECT_MS)
    fill_campaign(
        page, name="First newsletter", subject="Hello {{ name }",
        text=TEXT_BODY.replace("{{ city }}", "{{ nosuchfield }}"), html=HTML_BODY, list_label="Newcomers (5)",
    )
    # The variables hint follows the chosen list.
    expect(page.locator("#variables")).to_contain_text("city")
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("alert")).to_contain_text("The draft was not saved", timeout=EXPECT_MS)
    expect(field_errors(page, "Subject")).to_contain_text(re.compile(r"line 1\b"))
    expect(field_errors(page, "Subject")).to_contain_text("'}'")
    text_error = field_errors(page, "Text body")
    expect(text_error).to_contain_text("line 3")
    expect(text_error).to_contain_text("unknown variable 'nosuchfield'")
    expect(field_errors(page, "HTML body")).to_have_count(0)
    screenshot(page, "composer")
    # What was typed is still there: fix the two mistakes and save.
    expect(page.get_by_label("Campaign name")).to_have_value("First newsletter")
    expect(page.get_by_label("Both (multipart/alternative)")).to_be_checked()
    expect(page.get_by_label("Transfer encoding")).to_have_value(ENCODING)
    page.get_by_label("Subject").fill(SUBJECT)
    page.get_by_label("Text body").fill(TEXT_BODY)
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("status")).to_contain_text("Draft saved.", timeout=EXPECT_MS)
    expect(page).to_have_url(re.compile(r"/campaigns/\d+$"))
    campaign_url = page.url
    expect(page.get_by_role("heading", name="First newsletter")).to_be_visible()
    letter = page.locator("section.card", has=page.get_by_role("heading", name="Letter"))
    expect(letter).to_contain_text("text and HTML, base64")
    expect(letter).to_contain_text(SUBJECT)

    # 4. The preview: rendered for a real recipient of the list.
    page.get_by_role("link", name="Preview").click()
    expect(page.get_by_role("heading", name="Preview of First newsletter")).to_be_visible(timeout=EXPECT_MS)
    shown_for = page.locator("p.hint strong").inner_text().strip()
    assert shown_for in GOOD, shown_for
    headers = page.locator("table.headers")
    expect(headers.get_by_role("row", name=re.compile(r"^Subject"))).to_contain_text(f"Hello {GOOD[shown_for][0]}")
    # … and for a recipient they choose.
    page.get_by_label("Preview for").fill(f"zoe@{DOMAIN}")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("p.hint strong")).to_have_text(f"zoe@{DOMAIN}", timeout=EXPECT_MS)
    expect(headers.get_by_role("row", name=re.compile(r"^Subject"))).to_contain_text("Hello Zoë")
    expect(page.locator("pre.letter-text")).to_contain_text("Dear Zoë,")
    expect(page.locator("pre.letter-text")).to_contain_text("the sun is out in Zürich today.")
    html_part = page.frame_locator("iframe.letter-html")
    expect(html_part.locator("b")).to_have_text("Zoë")
    expect(html_part.locator("i")).to_have_text("Zürich")
    screenshot(page, "preview")

    # 5. Start (confirming the browser's question) and watch the counts fill in by themselves.
    page.get_by_role("link", name="First newsletter").click()
    expect(page).to_have_url(campaign_url)
    dialogs: list[str] = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.get_by_role("status")).to_contain_text("Campaign started.", timeout=EXPECT_MS)
    assert dialogs == ["Start sending this campaign now?"]
    delivered = page.locator('[data-stat="delivered"]')
    rendered = delivered.inner_text()  # as the server rendered it, before the first poll (after 2 s)
    assert int(rendered) < 5, "every letter was delivered before the page was even shown: nothing left to watch"
    page.evaluate("window.__still_the_same_page = true")
    navigations: list[str] = []
    polls: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)
    page.on("request", lambda request: polls.append(request.url) if request.url.endswith("/stats") else None)
    expect(delivered).to_have_text("5", timeout=COUNTS_MS)
    expect(page.locator('[data-stat="total"]')).to_have_text("5")
    expect(page.locator('[data-stat="failed"]')).to_have_text("0")
    expect(page.locator('[data-stat="status"]')).to_have_text("finished", timeout=COUNTS_MS)
    expect(page.get_by_role("button", name="Start", exact=True)).to_be_hidden()
    expect(page.locator("#no-failures")).to_be_visible()
    assert navigations == [], f"the page was reloaded: {navigations}"
    assert page.evaluate("window.__still_the_same_page === true"), "the page was reloaded"
    assert polls, "the counts changed without the page asking for them?"
    screenshot(page, "campaign")

    # 6. The letters as the recipients' server got them.
    wait_for_count(stack.maildir, len(GOOD), timeout=30)
    messages = [m for m in read_maildir(stack.maildir) if m.rcpt_to.endswith("@" + DOMAIN)]
    by_rcpt: dict[str, list] = {}
    for captured in messages:
        by_rcpt.setdefault(captured.rcpt_to, []).append(captured)
    assert set(by_rcpt) == set(GOOD)
    assert all(len(copies) == 1 for copies in by_rcpt.values()), "a recipient got more than one letter"
    for address, (captured,) in by_rcpt.items():
        name, city = GOOD[address]
        message = captured.message
        assert message["Subject"] == f"Hello {name}"
        assert message["To"].addresses[0].addr_spec == address
        assert message["From"].addresses[0].addr_spec == "news@sender.example"
        assert message.get_content_type() == "multipart/alternative"
        text = message.get_body(("plain",))
        html = message.get_body(("html",))
        for part in (text, html):
            assert part["Content-Transfer-Encoding"] == ENCODING, part["Content-Transfer-Encoding"]
            assert f"{city}".encode() not in part.as_bytes(), "the body is not in the chosen encoding"
        # A browser sends a textarea's line ends as CRLF, the canonical form inside base64 text: read as lines.
        text_lines = text.get_content().splitlines()
        assert text_lines[:3] == [f"Dear {name},", "", f"the sun is out in {city} today."], text_lines
        assert f"<b>{name}</b>" in html.get_content() and f"<i>{city}</i>" in html.get_content()

    # Kept for the second test's look from another account.
    made_here.update(list=list_url, campaign=campaign_url)


def test_another_user_sees_none_of_it(stack: LocalStack, new_page: Callable[[], Page], made_here: dict[str, str]) -> None:
    # The admin's own objects: a list and a draft of their own, plus what the first test made.
    admin = new_page()
    log_in(admin, stack.settings.admin_email, stack.admin_password)
    create_list(admin, "Admin private")
    admin_list_url = admin.locator("h1 a", has_text="Admin private").get_attribute("href")
    admin.get_by_role("navigation").get_by_role("link", name="Campaigns").click()
    admin.get_by_role("link", name="New campaign").click()
    admin.get_by_label("Campaign name").fill("Admin secret plans")
    admin.get_by_label("Subject").fill("Secret")
    admin.get_by_label("From address").fill("boss@sender.example")
    admin.get_by_label("Text body").fill("Only for the admin's eyes.\nUnsubscribe: {{ unsubscribe_url }}")
    admin.get_by_label("Send to lists").select_option(label="Admin private (0)")
    admin.get_by_role("button", name="Save draft").click()
    expect(admin.get_by_role("status")).to_contain_text("Draft saved.", timeout=EXPECT_MS)
    urls = [admin_list_url, admin_list_url + "/import", admin.url, admin.url + "/edit", admin.url + "/preview",
            admin.url + "/stats"]
    urls = [re.sub(r"^https?://[^/]+", "", url) for url in [*urls, *made_here.values()]]
    for path in urls:  # they are real pages, for their owner
        response = admin.goto(path)
        assert response is not None and response.status == 200, f"{path}: {response and response.status}"
    admin_names = ["Admin private", "Admin secret plans", "Newcomers", "First newsletter"]

    # Someone else, in their own browser.
    email, password = "second@mailfleet.test", "a second user's password"
    stack.flask("users", "create", email, "--password", password)
    other = new_page()
    log_in(other, email, password)
    expect(other.locator("header .who")).to_have_text(email)
    # They land on their dashboard: nothing of the admin's there.
    expect(other.get_by_text("No campaign is running or scheduled.")).to_be_visible()
    for name in admin_names:
        expect(other.get_by_text(name)).to_have_count(0)
    other.get_by_role("navigation").get_by_role("link", name="Lists").click()
    expect(other.get_by_text("No lists yet.")).to_be_visible()
    for name in admin_names:
        expect(other.get_by_text(name)).to_have_count(0)
    for path in urls:
        response = other.goto(path)
        assert response is not None and response.status == 404, f"{path}: {response and response.status}"
        expect(other.get_by_role("heading", name="Not Found")).to_be_visible()
        expect(other.get_by_role("link", name="Back to the start page")).to_be_visible()
        for name in admin_names:
            expect(other.get_by_text(name)).to_have_count(0)
    other.get_by_role("navigation").get_by_role("link", name="Campaigns").click()
    expect(other.get_by_text("No campaigns yet.")).to_be_visible()
    # Nor does the composer offer the admin's lists.
    other.get_by_role("link", name="Write the first one").click()
    expect(other.get_by_role("heading", name="New campaign")).to_be_visible()
    expect(other.get_by_label("Send to lists").locator("option")).to_have_count(0)
    expect(other.get_by_label("Exclude lists").locator("option")).to_have_count(0)
