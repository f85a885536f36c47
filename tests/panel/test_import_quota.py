"""Uploads limited per user (issue 12, point 5): one upload's size and what a user keeps stored
in all (running uploads and reports of rejected rows), a 413 saying the limit and what to do,
nothing half-written; old reports pruned; the imports folder and its files private."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from panel.models import ImportJob
from panel.services.imports.jobs import job_file
from panel.services.imports.sources import ImportLimits
from tests.panel.test_import_panel import upload

DAY = 86400


@pytest.fixture
def app_config(tmp_path):
    return {"IMPORTS_DIR": str(tmp_path / "imports"), "IMPORT_MAX_UPLOAD": 30 << 20}


@pytest.fixture
def imports(app) -> Path:
    return Path(app.config["IMPORTS_DIR"])


def _csv(rows: int, bad: int = 0) -> bytes:
    lines = ["email,name"] + [f"person{n}@example.org,P{n}" for n in range(rows)]
    lines += [f"not-an-address-{n},X" for n in range(bad)]
    return ("\n".join(lines) + "\n").encode()


def _files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_one_upload_defaults_to_at_most_256_mib() -> None:
    assert ImportLimits().max_upload == 256 << 20
    assert ImportLimits().max_stored == 1 << 30


def test_an_upload_past_the_users_stored_total_is_refused_and_stores_nothing(app, seed, alice, bob, as_alice,
                                                                            imports) -> None:
    app.config["IMPORT_MAX_STORED"] = 150_000
    list_id = seed.list(alice, "People")
    # A first import whose rejected rows stay as a report: ~110 kB of alice's allowance.
    first = upload(as_alice, list_id, _csv(10, bad=1_000))
    assert first.status_code == 200
    stored = sum(p.stat().st_size for p in imports.iterdir())
    assert 60_000 < stored < 150_000
    jobs_before = seed.query(lambda s: s.query(ImportJob).count())
    files_before = _files(imports)
    refused = upload(as_alice, list_id, _csv(3_000))  # ~75 kB more than her allowance holds
    assert refused.status_code == 413
    page = refused.get_data(as_text=True)
    assert "0.1 MB" in page and "stored" in page  # the limit, and what fills it
    assert "reports of rejected rows" in page and "30 days" in page  # what to do
    assert "Traceback" not in page
    assert seed.query(lambda s: s.query(ImportJob).count()) == jobs_before
    assert _files(imports) == files_before  # nothing half-written
    # Bob's allowance is his own.
    bob_list = seed.list(bob, "Bob's")
    as_bob = type(as_alice)(app.test_client())
    as_bob.login("bob@example.com")
    assert upload(as_bob, bob_list, _csv(3_000)).status_code == 200


def test_reports_older_than_the_keep_time_are_pruned_when_an_import_starts(app, seed, alice, as_alice,
                                                                           imports) -> None:
    list_id = seed.list(alice, "People")
    assert upload(as_alice, list_id, _csv(1, bad=3)).status_code == 200
    old_job = seed.query(lambda s: s.query(ImportJob).one().id)
    old_report = job_file(imports, old_job, "rejected.jsonl")
    assert old_report.exists()
    stale_upload = imports / "999.upload"  # left by a crash long ago
    stale_upload.write_bytes(b"x")
    long_ago = time.time() - 31 * DAY
    for path in (old_report, stale_upload):
        os.utime(path, (long_ago, long_ago))
    assert upload(as_alice, list_id, _csv(1, bad=3)).status_code == 200
    assert not old_report.exists() and not stale_upload.exists()
    new_job = seed.query(lambda s: max(j.id for j in s.query(ImportJob)))
    assert job_file(imports, new_job, "rejected.jsonl").exists()  # this month's report stays
    assert not job_file(imports, new_job, "upload").exists()  # the finished upload is gone
    page = as_alice.get(f"/lists/{list_id}/imports/{old_job}").get_data(as_text=True)
    assert "deleted after 30 days" in page


def test_the_imports_folder_and_its_files_are_private(app, seed, alice, as_alice, imports) -> None:
    old = os.umask(0o022)
    try:
        list_id = seed.list(alice, "People")
        assert upload(as_alice, list_id, _csv(1, bad=3)).status_code == 200
    finally:
        os.umask(old)
    assert stat.S_IMODE(imports.stat().st_mode) == 0o700
    files = list(imports.iterdir())
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_the_daemon_prunes_old_reports_too(app, imports) -> None:
    from panel.daemon.loop import DaemonState, run_round

    imports.mkdir(parents=True, exist_ok=True)
    old, recent = imports / "7.rejected.jsonl", imports / "8.rejected.jsonl"
    for path in (old, recent):
        path.write_text('{"row": 2}\n')
    long_ago = time.time() - 31 * DAY
    os.utime(old, (long_ago, long_ago))
    with app.app_context():
        run_round(DaemonState())
    assert not old.exists() and recent.exists()
