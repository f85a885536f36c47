"""Every page of the panel on a phone (issue 10 point 7), in a real browser against the whole system.

One user holds one of everything (a list with long addresses, an import, a started campaign whose
letters reached the capture, a second user for the admin pages, a domain, suppressions, the
stack's server); then every HTML page of the app, taken from app.url_map rather than a list kept
by hand, is opened at 375 and at 1280 px and must:

- not scroll sideways (the document no wider than the window);
- have no element reaching past the window's right edge, unless inside an element that scrolls by
  itself (a wide table in an overflow-x:auto wrapper is how a table stays usable on a phone);
- label every input, select and textarea (label[for], a wrapping label, or aria-label).

A screenshot of each page at each width goes to tests/browser/artifacts/page-<endpoint>-<width>.png
(when MAILFLEET_SCREENSHOTS is set, as for the other browser tests). A GET route added later is
opened like the others; one whose URL variable this file cannot fill, or which is not HTML and not
named in NOT_PAGES, fails here until it is taught. The top bar and a form are then walked with Tab:
each stop shows a focus outline.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Callable, Iterator

import pytest
from flask import Blueprint, Flask
from playwright.sync_api import Browser, BrowserContext, Page, expect
from playwright.sync_api import Error as PlaywrightError

from devserver.mail_capture import wait_for_count
from devserver.stack import LocalStack
from tests.browser.conftest import TIMEOUT_MS
from tests.e2e.conftest import Api

WIDTHS = (375, 1280)
LONG = "a-rather-long-local-part-that-no-phone-can-show-on-one-line"
ACCEPTED, REFUSED = "fits.test", "refused-fits.test"
PEOPLE = [f"ann@{ACCEPTED}", f"{LONG}@{ACCEPTED}", f"bob@{REFUSED}"]

# GET routes that are not pages, each with why (everything else in app.url_map is opened).
NOT_PAGES = {
    "static": "the stylesheet, scripts and icon the pages load",
    "tracking.click_link": "a redirect to the link in a letter",
    "tracking.open_letter": "the 1-pixel image in a letter",
    "campaigns.stats": "JSON the campaign page polls",
    "campaigns.figures": "JSON the campaign page polls",
    "campaigns.breakdown_download": "a CSV download",
    "campaigns.timeline_download": "a CSV download",
    "lists.export": "a CSV download",
    "lists.import_job_json": "JSON the import page polls",
    "lists.import_job_rejected": "a CSV download",
    "servers.jobs_json": "JSON the server page polls",
    "servers.job_json": "JSON the server page polls",
    "suppressions.export": "a CSV download",
    "admin.audit_csv": "a CSV download",
}
NOT_PAGE_PREFIXES = {"api.": "the JSON API (/api/v1), for programs"}

# Run in the page: what does not fit the window, and which fields have no label.
CHECK = """() => {
  const width = window.innerWidth, slack = 1;
  const describe = (el) => {
    let name = el.tagName.toLowerCase();
    if (el.id) name += "#" + el.id;
    if (el.classList.length) name += "." + [...el.classList].join(".");
    const text = (el.innerText || el.value || "").trim().replace(/\\s+/g, " ").slice(0, 40);
    return text ? `${name} "${text}"` : name;
  };
  const scrollsItself = (el) => {
    for (let up = el.parentElement; up && up !== document.body; up = up.parentElement) {
      const x = getComputedStyle(up).overflowX;
      if ((x === "auto" || x === "scroll") && up.getBoundingClientRect().right <= width + slack) return true;
    }
    return false;
  };
  const wide = [], seen = new Set();
  for (const el of document.body.querySelectorAll("*")) {  // in document order: parents first
    const box = el.getBoundingClientRect();
    if (box.width === 0 || box.height === 0 || box.right <= width + slack) continue;
    if (getComputedStyle(el).visibility === "hidden" || scrollsItself(el)) continue;
    seen.add(el);
    if (!seen.has(el.parentElement)) wide.push(`${describe(el)} reaches ${Math.round(box.right)}px`);  // the outermost only
  }
  const unlabelled = [];
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (["hidden", "submit", "button", "reset", "image"].includes(el.type)) continue;
    if (el.labels.length || el.getAttribute("aria-label") || el.getAttribute("aria-labelledby")) continue;
    unlabelled.push(describe(el) + (el.name ? ` name=${el.name}` : ""));
  }
  return {scroll: document.documentElement.scrollWidth - width, wide: wide.slice(0, 6), unlabelled};
}"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def phone_stack(db_backend: str, request: pytest.FixtureRequest) -> LocalStack:
    """The stack on SQLite only: a page's layout does not depend on the database (and every route is
    requested on both by tests/panel/test_tenancy_routes.py); a second stack would cost make test ~25 s."""
    if db_backend != "sqlite":
        pytest.skip("layout only: walked on SQLite")
    return request.getfixturevalue("stack")


@pytest.fixture(scope="module")
def seeded(phone_stack: LocalStack, chromium: Browser) -> dict[str, object]:
    """One of everything, by the URL variable that names it."""
    stack = phone_stack
    (stack.root / "capture-rules.json").write_text(json.dumps({f"@{REFUSED}": "reject"}))
    api = Api(stack.panel_url, stack.api_token)
    list_id = api.post("/lists", {"name": f"Subscribers of {LONG}"})["id"]
    api.post(f"/lists/{list_id}/recipients", [{"email": e, "name": "Ann"} for e in PEOPLE])
    campaign_id = api.post("/campaigns", {
        "name": "Spring news for everyone on the list", "subject": "Hello {{ name }}",
        "from_email": "news@mailfleet.test", "lists": [list_id],
        "text": f"Hello\nSee https://{ACCEPTED}/{LONG}/{LONG}\nUnsubscribe: {{{{ unsubscribe_url }}}}\n"})["id"]
    api.post(f"/campaigns/{campaign_id}/start", {})
    # A domain whose DNS server refuses the connection: kept, with the error on its page.
    domain_id = api.post("/domains", {"name": f"{LONG}.example", "dns_host": "127.0.0.1", "dns_port": _free_port(),
                                      "tsig_key_name": "mailfleet", "tsig_secret": "c2VjcmV0c2VjcmV0"})["id"]
    entry_id = [api.post("/suppressions", {"email": email})["id"]
                for email in (f"{LONG}@gone.example", "carol@gone.example")][0]
    user_id = api.post("/admin/users", {"email": f"{LONG}@mailfleet.test"})["id"]

    # An import, through the page (the API adds recipients without one).
    context = chromium.new_context(base_url=stack.panel_url)
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        log_in(page, stack)
        page.goto(f"/lists/{list_id}/import")
        page.get_by_label("CSV file").set_input_files(
            {"name": "more.csv", "mimeType": "text/csv", "buffer": f"email\ncleo@{ACCEPTED}\nnot-an-address\n".encode()})
        page.get_by_role("button", name="Import").click()
        # The report takes the form's place; its rejected rows' link names the job.
        rejected = page.get_by_role("link", name=re.compile("rejected rows")).get_attribute("href")
        job_id = int(re.search(r"/imports/(\d+)/", rejected).group(1))
    finally:
        context.close()

    # A letter that arrived, for its unsubscribe link (the page a recipient opens on a phone).
    letters = wait_for_count(stack.maildir, 1, timeout=90)
    text = letters[0].message.get_body(("plain",)).get_content()
    token = re.search(r"/u/([^\s/]+)", text).group(1)
    return {"list_id": list_id, "campaign_id": campaign_id, "domain_id": domain_id, "server_id": stack.server_id,
            "user_id": user_id, "job_id": job_id, "token": token, "entry_id": entry_id}


def log_in(page: Page, stack: LocalStack) -> None:
    page.goto("/login")
    page.get_by_label("E-mail").fill(stack.settings.admin_email)
    page.get_by_label("Password").fill(stack.admin_password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("button", name="Log out")).to_be_visible()


def routes_app() -> Flask:
    """The panel app, only to read its routes."""
    from panel import create_app

    # Settings given, not put in os.environ: later tests (make run's) must find it as they left it.
    return create_app({"SECRET_KEY": "only-to-read-the-routes", "SQLALCHEMY_DATABASE_URI": "sqlite://"})


def panel_pages(app: Flask, seeded: dict[str, object]) -> tuple[list[tuple[str, str]], list[str]]:
    """(endpoint, path) of every HTML page of the app, and what this file cannot fill."""
    pages, unknown = [], []
    adapter = app.url_map.bind("localhost")
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if "GET" not in rule.methods or rule.endpoint in NOT_PAGES:
            continue
        if any(rule.endpoint.startswith(prefix) for prefix in NOT_PAGE_PREFIXES):
            continue
        missing = sorted(set(rule.arguments) - set(seeded))
        if missing:
            unknown.append(f"{rule.rule}: nothing seeded for <{'>, <'.join(missing)}>: teach `seeded` to make one, "
                           "or name the route in NOT_PAGES if it is not a page")
            continue
        pages.append((rule.endpoint, adapter.build(rule.endpoint, {n: seeded[n] for n in rule.arguments})))
    return pages, unknown


@pytest.fixture
def contexts(chromium: Browser, phone_stack: LocalStack) -> Iterator[Callable[[int], Page]]:
    made: list[BrowserContext] = []

    def make(width: int) -> Page:
        context = chromium.new_context(base_url=phone_stack.panel_url, viewport={"width": width, "height": 800})
        context.set_default_timeout(TIMEOUT_MS)
        made.append(context)
        return context.new_page()

    try:
        yield make
    finally:
        for context in made:
            context.close()


def test_every_page_fits_a_phone_and_labels_its_fields(
        phone_stack: LocalStack, seeded: dict[str, object], contexts: Callable[[int], Page], screenshot) -> None:
    stack = phone_stack
    pages, unknown = panel_pages(routes_app(), seeded)
    assert not unknown, "\n".join(unknown)
    assert len(pages) >= 20, pages  # the walk sees the app's pages, not an empty map
    wrong: list[str] = []
    for width in WIDTHS:
        page = contexts(width)
        script_errors: list[str] = []
        page.on("pageerror", lambda error: script_errors.append(f"{page.url}: {error}"))
        # The login page first, as someone not logged in sees it.
        login_first = sorted(pages, key=lambda p: p[0] != "auth.login")
        for endpoint, path in login_first:
            if endpoint != "auth.login" and page.get_by_role("button", name="Log out").count() == 0:
                log_in(page, stack)
            try:
                response = page.goto(path)
            except PlaywrightError as exc:  # a download, most likely: not a page
                wrong.append(f"{width}px {path} ({endpoint}): {exc.message.splitlines()[0]}: "
                             "if it is not a page, name it in NOT_PAGES with why")
                continue
            if response is None or "text/html" not in response.headers.get("content-type", ""):
                wrong.append(f"{width}px {path} ({endpoint}): not an HTML page: name it in NOT_PAGES with why")
                continue
            if response.status >= 400 and response.status != 422:
                wrong.append(f"{width}px {path} ({endpoint}): answered {response.status}")
            found = page.evaluate(CHECK)
            if found["scroll"] > 0:
                wrong.append(f"{width}px {path} ({endpoint}): scrolls sideways by {found['scroll']}px")
            for item in found["wide"]:
                wrong.append(f"{width}px {path} ({endpoint}): {item}")
            for item in found["unlabelled"]:
                wrong.append(f"{width}px {path} ({endpoint}): no label for {item}")
            screenshot(page, f"page-{endpoint}-{width}")
        wrong += script_errors
    assert not wrong, "\n".join(wrong)


def test_the_top_bar_and_a_form_are_walked_with_tab_and_show_where_the_focus_is(
        phone_stack: LocalStack, seeded: dict[str, object], contexts: Callable[[int], Page]) -> None:
    stack = phone_stack
    page = contexts(375)
    log_in(page, stack)
    page.goto("/lists/")
    stops: list[dict] = []
    for _ in range(25):
        page.keyboard.press("Tab")
        stops.append(page.evaluate("""() => {
          const el = document.activeElement, style = getComputedStyle(el);
          return {name: (el.labels && el.labels[0] ? el.labels[0].innerText : el.innerText || el.value || "").trim(),
                  tag: el.tagName.toLowerCase(), outline: style.outlineStyle, width: parseFloat(style.outlineWidth)};
        }"""))
        if stops[-1]["name"] == "Create list":
            break
    names = [stop["name"] for stop in stops]
    for expected in ("Lists", "Suppressions", "Campaigns", "Servers", "Domains", "Admin", "Log out", "Name",
                     "Create list"):
        assert expected in names, f"Tab never reaches {expected!r}: {names}"
    assert names.index("Lists") < names.index("Name") < names.index("Create list"), names
    faint = [stop for stop in stops if stop["outline"] == "none" or stop["width"] < 2]
    assert not faint, f"focused with no visible outline: {faint}"

    # The first Tab stop skips the top bar: Enter on it, and the next Tab is in the page's content.
    page.goto("/lists/")
    page.keyboard.press("Tab")
    skip = page.locator(":focus")
    expect(skip).to_have_text("Skip to content")
    assert skip.bounding_box()["x"] >= 0, "the skip link is not shown when it has the focus"
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    assert page.evaluate("!!document.activeElement.closest('main')"), "Tab after the skip link is not in the content"

    # The composer, the longest form: Tab reaches every field and button of it (a radio group once,
    # a closed fold-out by its summary).
    page.goto("/campaigns/new")
    fields = page.evaluate("""() => {
      const form = document.querySelector("main form"), names = [];
      // A closed fold-out's fields are no Tab stops until it is opened; its summary is one.
      form.querySelectorAll("input, select, textarea, button, summary").forEach((el, i) => {
        if (el.type === "hidden" || !el.checkVisibility()) return;
        el.dataset.tabStop = el.type === "radio" ? "radio:" + el.name : i + ":" + (el.name || el.id || el.innerText);
        names.push(el.dataset.tabStop);
      });
      return [...new Set(names)];
    }""")
    assert len(fields) >= 8, fields
    reached = set()
    for _ in range(len(fields) + 40):
        page.keyboard.press("Tab")
        reached.add(page.evaluate("document.activeElement.dataset.tabStop || ''"))
        if reached >= set(fields):
            break
    assert set(fields) <= reached, f"Tab never reaches {sorted(set(fields) - reached)} of the composer's form"


def test_a_page_added_later_is_walked_too() -> None:
    """The walk is not a list: a new page is opened like the others, or fails the walk until taught."""
    app = routes_app()
    later = Blueprint("later", __name__)
    later.add_url_rule("/later/<int:list_id>", "by_list", lambda list_id: "")
    later.add_url_rule("/later/<int:widget_id>/widget", "widget", lambda widget_id: "")
    app.register_blueprint(later)
    pages, unknown = panel_pages(app, {"list_id": 7})
    assert ("later.by_list", "/later/7") in pages
    assert any(line.startswith("/later/<int:widget_id>/widget: nothing seeded for <widget_id>") for line in unknown), unknown
