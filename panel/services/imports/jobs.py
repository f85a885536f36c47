"""Import jobs: an upload saved under instance/imports/, imported by a thread of the web process.

Why a thread here and not the daemon: the upload is already on this machine's disk, the
work is one streaming pass that needs nothing the daemon has, and the page that started it
polls for its progress. What makes it safe to lose the thread (a restart, a crash) is the
transaction: every row goes in through one transaction that also marks the job done, so a
job that stops half-way leaves no recipients behind. Its row stays "running"; the next
look at it finds its progress file silent for longer than IMPORT_STALE_SECONDS and marks it
failed, saying nothing was imported.

Files of job N, in the imports folder (IMPORTS_DIR, by default instance/imports/): N.upload (deleted when the job ends), N.progress
(JSON, replaced atomically a few times a second while it runs), N.rejected.jsonl (the
rejected rows, kept for the report's download for IMPORT_REPORT_DAYS, then pruned when an
import starts). The folder is 0700 and its files 0600: they are users' lists. What a user's
files take at once is bounded by IMPORT_MAX_STORED, checked while an upload is saved.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import IO, Any

from flask import Flask
from sqlalchemy import select

from ...config import private_folder
from ...extensions import db
from ...models import ImportJob, MailingList, User
from ...models.base import utcnow
from ..csv_import import ImportOptions, import_file
from .errors import ImportFailed
from .mx import MxChecker
from .report import RejectedSpool, private_opener
from .sources import ImportLimits

log = logging.getLogger(__name__)

PROGRESS_EVERY = 0.25  # seconds between progress file updates
STALE_MESSAGE = ("the import stopped half-way (the panel was restarted or stopped while it ran); "
                 "nothing was imported: upload the file again")
CRASH_MESSAGE = ("the import stopped on an unexpected error; nothing was imported: try again, "
                 "and tell the administrator if it happens again")
# One import at a time per process: SQLite takes one writer at a time, and a second import
# into the same list would only wait for the first one's rows.
_RUN_LOCK = threading.Lock()


class UploadTooLarge(Exception):
    """The upload is over IMPORT_MAX_UPLOAD; the message says so in plain words."""


def imports_dir(app: Flask) -> Path:
    """IMPORTS_DIR, by default the instance folder's imports/."""
    path = Path(app.config.get("IMPORTS_DIR") or Path(app.instance_path) / "imports")
    private_folder(path)
    return path


def job_file(directory: Path, job_id: int, kind: str) -> Path:
    """kind: upload | progress | rejected.jsonl"""
    return directory / f"{job_id}.{kind}"


def create_job(user: User, mailing_list: MailingList, filename: str, source: IO[bytes], directory: Path,
               limits: ImportLimits, *, check_mx: bool = False, all_or_nothing: bool = False) -> ImportJob:
    """Record a job and save its upload, streamed to disk with the size limits enforced (one upload,
    and what the user keeps stored in all); flushes. Old files are pruned first."""
    prune_files(directory, limits.report_days)
    stored = stored_bytes(user, directory)
    if stored >= limits.max_stored:
        raise UploadTooLarge(over_quota_message(limits, stored))
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1] or "upload"  # some browsers send a path
    job = ImportJob(user_id=user.id, list_id=mailing_list.id, filename=name[:255],
                    state="queued", check_mx=check_mx, all_or_nothing=all_or_nothing)
    db.session.add(job)
    db.session.flush()
    target = job_file(directory, job.id, "upload")
    size = 0
    try:
        with open(target, "wb", opener=private_opener) as out:
            while chunk := source.read(1 << 20):
                size += len(chunk)
                if size > limits.max_upload:
                    raise UploadTooLarge(too_large_message(limits))
                if stored + size > limits.max_stored:
                    raise UploadTooLarge(over_quota_message(limits, stored))
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    job.bytes_total = size
    db.session.flush()
    return job


def too_large_message(limits: ImportLimits) -> str:
    return (f"The file is larger than the import limit of {limits.max_upload / (1 << 20):,.0f} MB. "
            "Zip it (archives are unpacked while importing) or split it into smaller files.")


def _mb(size: int) -> str:
    return f"{size / (1 << 20):,.{0 if size >= 10 << 20 else 1}f} MB"


def over_quota_message(limits: ImportLimits, stored: int) -> str:
    return (f"This file would take your stored imports past your limit of {_mb(limits.max_stored)}: "
            f"{_mb(stored)} are in use by imports still running and by reports of rejected rows "
            f"(kept for {limits.report_days} days, then deleted). Wait for your running imports to finish, "
            "or upload a smaller file (zip it, or split it).")


def stored_bytes(user: User, directory: Path) -> int:
    """What the user's import files take on disk now (uploads, progress, reports)."""
    total = 0
    for job_id in db.session.scalars(select(ImportJob.id).where(ImportJob.user_id == user.id)):
        for kind in ("upload", "progress", "rejected.jsonl"):
            try:
                total += job_file(directory, job_id, kind).stat().st_size
            except FileNotFoundError:
                pass
    return total


def prune_files(directory: Path, keep_days: int) -> int:
    """Delete files of the imports folder untouched for keep_days (reports, and uploads or progress
    left by a crash: a running import touches its progress file); returns how many."""
    cutoff = time.time() - keep_days * 86400
    pruned = 0
    for path in directory.iterdir():
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                pruned += 1
        except FileNotFoundError:
            pass  # another process pruned it first
    if pruned:
        log.info("pruned %s import files older than %s days", pruned, keep_days)
    return pruned


def report_pruned(job: ImportJob, directory: Path) -> bool:
    """The job had rejected rows but their report is gone (older than IMPORT_REPORT_DAYS)."""
    return job.finished and job.rejected > 0 and not job_file(directory, job.id, "rejected.jsonl").exists()


def start_job(app: Flask, job_id: int) -> threading.Thread:
    thread = threading.Thread(target=run_job, args=(app, job_id), name=f"import-{job_id}", daemon=True)
    thread.start()
    return thread


class _ProgressFile:
    def __init__(self, path: Path, total: int) -> None:
        self.path = path
        self.state = {"bytes_done": 0, "bytes_total": total, "rejected": 0}
        self.last = 0.0
        self.write()

    def write(self) -> None:
        tmp = self.path.with_suffix(".progress-tmp")
        with open(tmp, "w", opener=private_opener) as f:
            f.write(json.dumps(self.state))
        os.replace(tmp, self.path)
        self.last = time.monotonic()

    def bytes(self, done: int, total: int) -> None:
        self.state["bytes_done"], self.state["bytes_total"] = done, total
        if time.monotonic() - self.last >= PROGRESS_EVERY:
            self.write()

    def rejected(self, _item: dict[str, Any]) -> None:
        self.state["rejected"] += 1


def run_job(app: Flask, job_id: int) -> None:
    """The thread's body: import the upload, commit the rows and the job's end together."""
    with app.app_context():
        directory = imports_dir(app)
        progress_path = job_file(directory, job_id, "progress")
        upload = job_file(directory, job_id, "upload")
        while not _RUN_LOCK.acquire(timeout=5):
            progress_path.touch(mode=0o600)  # queued behind another import, and alive
        try:
            _run(app, job_id, directory, progress_path, upload)
        finally:
            _RUN_LOCK.release()
            db.session.remove()
            upload.unlink(missing_ok=True)
            progress_path.unlink(missing_ok=True)


def _run(app: Flask, job_id: int, directory: Path, progress_path: Path, upload: Path) -> None:
    job = db.session.get(ImportJob, job_id)
    if job is None or job.state != "queued":
        return
    job.state = "running"
    db.session.commit()
    progress = _ProgressFile(progress_path, job.bytes_total)
    spool = RejectedSpool(job_file(directory, job_id, "rejected.jsonl"))
    reporter = _Tee(spool, progress.rejected)
    options = ImportOptions(
        check_mx=MxChecker.from_config(app.config) if job.check_mx else None,
        all_or_nothing=job.all_or_nothing, limits=ImportLimits.from_config(app.config),
        keep_rejected=0, on_reject=reporter, on_progress=progress.bytes,
    )
    error = None
    try:
        report = import_file(job.mailing_list, upload, job.filename, options)
    except ImportFailed as exc:
        error = str(exc)
    except Exception:  # noqa: BLE001 (whatever it was, the user gets a plain sentence and nothing half-done)
        log.exception("import job %s failed", job_id)
        error = CRASH_MESSAGE
    finally:
        spool.close()
    if error is not None:
        db.session.rollback()
        job = db.session.get(ImportJob, job_id)
        job.state, job.error, job.rejected = "failed", error, progress.state["rejected"]
    else:
        job.state, job.added, job.duplicates, job.rejected = "done", report.added, report.duplicates, report.rejected_count
    job.finished_at = utcnow()
    db.session.commit()


class _Tee:
    def __init__(self, *targets) -> None:
        self.targets = targets

    def __call__(self, item: dict[str, Any]) -> None:
        for target in self.targets:
            target(item)


def job_progress(job: ImportJob, directory: Path, stale_after: float) -> dict[str, Any]:
    """What the page shows about a job; a running job whose progress went silent for longer
    than `stale_after` seconds is marked failed here (flushes; the caller commits)."""
    data: dict[str, Any] = {"state": job.state, "bytes_done": 0, "bytes_total": job.bytes_total,
                            "added": job.added, "duplicates": job.duplicates, "rejected": job.rejected,
                            "error": job.error}
    if job.finished:
        data["bytes_done"] = job.bytes_total
        return data
    path = job_file(directory, job.id, "progress")
    try:
        data.update(json.loads(path.read_text()))
        last_sign = path.stat().st_mtime
    except (OSError, ValueError):
        last_sign = (job.created_at - utcnow()).total_seconds() + time.time()
    if time.time() - last_sign > stale_after:
        job.state, job.error, job.finished_at = "failed", STALE_MESSAGE, utcnow()
        db.session.flush()
        job_file(directory, job.id, "upload").unlink(missing_ok=True)
        data.update(state="failed", error=STALE_MESSAGE)
    return data


def delete_job_files(directory: Path, job_id: int) -> None:
    for kind in ("upload", "progress", "rejected.jsonl"):
        job_file(directory, job_id, kind).unlink(missing_ok=True)

