"""Import through the panel: the upload, the job that runs it with a progress bar, the report
page and its CSV download, the size limit, and a job whose process dies half-way."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from sqlalchemy import select
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart

from panel.extensions import db
from panel.models import ImportJob, MailingList, Recipient, User
from panel.services.imports.jobs import STALE_MESSAGE, create_job, imports_dir, job_file
from panel.services.imports.sources import ImportLimits

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def app_config(tmp_path):
    return {"IMPORTS_DIR": str(tmp_path / "imports"), "IMPORT_MAX_UPLOAD": 30 << 20}


def upload(browser, list_id, content: bytes, filename="people.csv", json_reply=False, **fields):
    """Post the form as a browser does. The body is encoded here, in memory: the test client
    would spool a big one to a temporary file it never closes."""
    if browser.token is None:
        browser.get(f"/lists/{list_id}/import")
    values = {"csrf_token": browser.token, "file": FileStorage(io.BytesIO(content), filename), **fields}
    boundary, body = encode_multipart(values)
    headers = {"Accept": "application/json"} if json_reply else {}
    return browser.client.post(f"/lists/{list_id}/import", data=body, headers=headers,
                               content_type=f"multipart/form-data; boundary={boundary}")


def emails(seed, list_id):
    return seed.query(lambda s: s.scalars(select(Recipient.email).where(Recipient.list_id == list_id)
                                          .order_by(Recipient.id)).all())


def big_csv(rows: int) -> bytes:
    return b"email,name\n" + b"".join(b"user%d@example.org,User %d\n" % (i, i) for i in range(rows))


def test_zip_upload_shows_the_report_and_offers_the_rejected_rows(as_alice, seed, alice, tmp_path):
    list_id = seed.list(alice, "People")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("people.csv", "email,name\nann@example.org,Ann\n=HYPERLINK(\"http://x\"),Eve\n"
                                       "+cmd@example.org|calc,Mallory\n")
        archive.writestr("more.txt", "bob@example.org\n-oops\n@evil\n")
    response = upload(as_alice, list_id, buffer.getvalue(), "lists.zip")
    assert response.status_code == 200, response.get_data(as_text=True)
    page = response.get_data(as_text=True)
    assert 'class="added">2<' in page and 'class="rejected">4<' in page
    assert "<td>people.csv</td><td class=\"num\">3</td>" in page
    assert "Download all 4 rejected rows (CSV)" in page
    assert emails(seed, list_id) == ["ann@example.org", "bob@example.org"]
    job_id = seed.query(lambda s: s.scalar(select(ImportJob.id)))
    report = as_alice.get(f"/lists/{list_id}/imports/{job_id}/rejected.csv")
    assert report.status_code == 200 and report.mimetype == "text/csv"
    assert "attachment" in report.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(report.get_data(as_text=True))))
    assert rows[0] == ["file", "line", "email", "reason"]
    assert [row[:3] for row in rows[1:]] == [
        ["people.csv", "3", "'=HYPERLINK(\"http://x\")"],
        ["people.csv", "4", "'+cmd@example.org|calc"],
        ["more.txt", "2", "'-oops"],
        ["more.txt", "3", "'@evil"],
    ]
    assert all(row[3] for row in rows[1:])  # every row says why
    # The upload itself is gone; the rejected rows stay for the download.
    directory = tmp_path / "imports"
    assert sorted(p.name for p in directory.iterdir()) == [f"{job_id}.rejected.jsonl"]


def test_the_page_script_path_follows_the_job_to_its_end(as_alice, seed, alice):
    list_id = seed.list(alice, "People")
    content = b"email\nann@example.org\nnope\n"
    response = upload(as_alice, list_id, content, json_reply=True, check_mx="", all_or_nothing="")
    assert response.status_code == 202
    reply = response.get_json()
    for _ in range(100):
        progress = as_alice.get(reply["progress"]).get_json()
        if progress["state"] in ("done", "failed"):
            break
        time.sleep(0.05)
    assert progress == {"state": "done", "bytes_done": len(content), "bytes_total": len(content), "added": 1,
                                          "duplicates": 0, "rejected": 1, "error": None}
    page = as_alice.get(reply["url"]).get_data(as_text=True)
    assert "Import finished" in page and 'class="added">1<' in page and "<td>nope</td>" in page


def test_progress_moves_while_nothing_is_in_the_list_yet(as_alice, seed, alice, app):
    """A big upload: the progress endpoint reports bytes read going up while the job runs, and
    the list stays empty until the whole file is in."""
    app.config["IMPORT_WAIT_SECONDS"] = 0
    list_id = seed.list(alice, "Big")
    content = big_csv(150_000)
    response = upload(as_alice, list_id, content, "big.csv")
    assert response.status_code == 303
    job_url = response.headers["Location"]
    page = as_alice.get(job_url).get_data(as_text=True)
    assert "Importing…" in page and '<progress id="import-bar"' in page
    seen = []
    empty_while_running = 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        progress = as_alice.get(job_url + ".json").get_json()
        if progress["state"] in ("done", "failed"):
            break
        if progress["state"] == "running":
            seen.append(progress["bytes_done"])
            if 0 < progress["bytes_done"] < len(content):
                # Read the list, then the job: the rows and the job's end are one commit, so
                # a job still running after the read means the read saw the list as it was.
                count, stored = seed.get(MailingList, list_id).recipient_count, emails(seed, list_id)
                if seed.get(ImportJob, int(job_url.rsplit("/", 1)[1])).state == "running":
                    assert (count, stored) == (0, [])
                    empty_while_running += 1
        time.sleep(0.05)
    assert progress["state"] == "done", progress
    partial = [done for done in seen if 0 < done < len(content)]
    assert len(set(partial)) >= 2, seen  # it moved
    assert empty_while_running >= 1
    assert seed.get(MailingList, list_id).recipient_count == 150_000
    assert "Import finished" in as_alice.get(job_url).get_data(as_text=True)


def test_upload_over_the_size_limit(as_alice, seed, alice, app, tmp_path):
    app.config["IMPORT_MAX_UPLOAD"] = 100_000
    list_id = seed.list(alice, "People")
    response = upload(as_alice, list_id, big_csv(10_000))
    assert response.status_code == 413
    page = response.get_data(as_text=True)
    assert "larger than the import limit" in page and "Zip it" in page
    assert "Traceback" not in page
    assert emails(seed, list_id) == [] and seed.query(lambda s: s.query(ImportJob).count()) == 0
    # Under the limit (the app-wide MAX_CONTENT_LENGTH is smaller than the import's own)
    app.config["IMPORT_MAX_UPLOAD"] = 30 << 20
    app.config["MAX_CONTENT_LENGTH"] = 50_000
    assert upload(as_alice, list_id, big_csv(10_000)).status_code == 200
    assert seed.get(MailingList, list_id).recipient_count == 10_000


def test_upload_saved_while_streaming_stops_at_the_limit(app, seed, alice, tmp_path):
    list_id = seed.list(alice, "People")
    from panel.services.imports.jobs import UploadTooLarge

    with app.app_context():
        user, mailing_list = db.session.get(User, alice), db.session.get(MailingList, list_id)
        with pytest.raises(UploadTooLarge, match="larger than the import limit"):
            create_job(user, mailing_list, "big.csv", io.BytesIO(big_csv(10_000)), imports_dir(app),
                       ImportLimits(max_upload=50_000))
        db.session.rollback()
        assert list((tmp_path / "imports").iterdir()) == []


def test_all_or_nothing_from_the_form(as_alice, seed, alice):
    list_id = seed.list(alice, "People")
    response = upload(as_alice, list_id, b"email\nann@example.org\nbroken\n", all_or_nothing="y")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "Nothing was imported: 1 row was rejected and you chose to import nothing" in page
    assert "Download all 1 rejected rows (CSV)" in page and "<td>broken</td>" in page
    assert emails(seed, list_id) == []


def test_bad_upload_imports_nothing_and_says_why(as_alice, seed, alice):
    list_id = seed.list(alice, "People")
    response = upload(as_alice, list_id, b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "photo.csv")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "Nothing was imported: the file is not a text file (it looks like a PNG image)" in page
    job = seed.query(lambda s: s.scalars(select(ImportJob)).one())
    assert (job.state, job.added) == ("failed", 0)


def test_form_without_its_csrf_token_is_refused(as_alice, seed, alice):
    list_id = seed.list(alice, "People")
    response = as_alice.post(f"/lists/{list_id}/import", {"file": (io.BytesIO(b"email\na@example.org\n"), "a.csv")},
                             csrf=False, content_type="multipart/form-data")
    assert response.status_code == 400
    assert "did not come from this site" in response.get_data(as_text=True)
    assert seed.query(lambda s: s.query(ImportJob).count()) == 0


def test_another_users_jobs_are_404(as_alice, seed, alice, bob, app):
    bob_list = seed.list(bob, "Bob's")
    with app.app_context():
        job = create_job(db.session.get(User, bob), db.session.get(MailingList, bob_list), "x.csv",
                         io.BytesIO(b"email\n"), imports_dir(app), ImportLimits())
        db.session.commit()
        job_id = job.id
    alice_list = seed.list(alice, "Alice's")
    for list_id in (bob_list, alice_list):
        for suffix in ("", ".json", "/rejected.csv"):
            assert as_alice.get(f"/lists/{list_id}/imports/{job_id}{suffix}").status_code == 404


def test_a_job_whose_process_dies_half_way_leaves_nothing(as_alice, seed, alice, app, tmp_path):
    """A real crash: the import runs in a child process that is killed with SIGKILL half-way;
    no row of it is in the list, and the job's page then says it failed and why."""
    list_id = seed.list(alice, "People", [{"email": "old@example.org"}])
    with app.app_context():
        job = create_job(db.session.get(User, alice), db.session.get(MailingList, list_id), "big.csv",
                         io.BytesIO(big_csv(300_000)), imports_dir(app), ImportLimits())
        db.session.commit()
        job_id = job.id
    script = f"""
from panel import create_app
from panel.services.imports.jobs import run_job
app = create_app({{"SQLALCHEMY_DATABASE_URI": {app.config["SQLALCHEMY_DATABASE_URI"]!r}, "SECRET_KEY": "x",
                  "IMPORTS_DIR": {app.config["IMPORTS_DIR"]!r}}})
run_job(app, {job_id})
"""
    child = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    progress_file = job_file(Path(app.config["IMPORTS_DIR"]), job_id, "progress")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if json.loads(progress_file.read_text())["bytes_done"] > 3_000_000:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        else:
            pytest.fail("the child never got half-way")
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(10)
    assert emails(seed, list_id) == ["old@example.org"]
    assert seed.get(MailingList, list_id).recipient_count == 1
    assert seed.get(ImportJob, job_id).state == "running"  # nobody has looked yet
    app.config["IMPORT_STALE_SECONDS"] = 0.5
    time.sleep(0.6)
    page = as_alice.get(f"/lists/{list_id}/imports/{job_id}").get_data(as_text=True)
    assert "Nothing was imported" in page and STALE_MESSAGE in page
    assert seed.get(ImportJob, job_id).state == "failed"
    assert not job_file(Path(app.config["IMPORTS_DIR"]), job_id, "upload").exists()
