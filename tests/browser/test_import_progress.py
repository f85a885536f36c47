"""A big list file uploaded in a real browser: the progress bar moves while the file goes up
and while it is imported, the report then takes the page's place at the same address, and
the rejected rows can be downloaded."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, expect

from devserver.stack import LocalStack
from tests.browser.test_newcomer import create_list, log_in

ROWS = 300_000
READ_STATE = """() => {
  const box = document.getElementById("upload-progress");
  const shown = box && !box.hidden;
  return {report: !!document.getElementById("report"),
          value: shown ? box.querySelector("progress").value : null,
          label: shown ? box.querySelector('[data-field="label"]').textContent : ""};
}"""


def test_progress_bar_moves_and_the_report_follows(stack: LocalStack, new_page: Callable[[], Page],
                                                    screenshot, tmp_path: Path) -> None:
    page = new_page()
    log_in(page, stack.settings.admin_email, stack.admin_password)
    import_url = create_list(page, "Big upload")
    big = tmp_path / "big.csv"
    with open(big, "w") as out:
        out.write("email,name\n")
        for i in range(ROWS):
            out.write(f"user{i}@big.example,User {i}\n")
        out.write("=SUM(A1:A2),Formula\n")
    page.get_by_label("CSV file").set_input_files(big)
    page.get_by_role("button", name="Import").click()

    bar = page.locator("#upload-progress progress")
    expect(bar).to_be_visible()
    values = set()
    report = page.locator("#report")
    deadline = time.monotonic() + 180
    while True:
        assert time.monotonic() < deadline, "no report within 3 minutes"
        # One read of the page's state: the report replaces the box at any moment, so asking
        # for the box's parts one by one could wait on a box that has just gone.
        state = page.evaluate(READ_STATE)
        if state["report"]:
            break
        if state["value"] is not None and "Importing" in state["label"]:
            values.add(state["value"])
        page.wait_for_timeout(50)
    screenshot(page, "import-big-report")
    assert len([v for v in values if v > 0]) >= 2, values  # the bar moved while the rows were read

    expect(report.get_by_role("heading", name="Import finished")).to_be_visible()
    assert page.url == import_url
    expect(report.locator("dd.added")).to_have_text(f"{ROWS:,}")
    expect(report.locator("dd.rejected")).to_have_text("1")
    with page.expect_download() as download:
        report.get_by_role("link", name="Download all 1 rejected rows (CSV)").click()
    rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text())))
    assert rows == [["file", "line", "email", "reason"],
                    ["big.csv", str(ROWS + 2), "'=SUM(A1:A2)", rows[1][3]]]
