"""One upload being imported into a list, run by a thread of the web process.

The rows go into the list in one transaction that also marks the job done, so a job that
stops half-way (an error in the file, the panel restarting) leaves nothing behind but its
own row, marked failed with the reason. Progress while it runs lives in a small file beside
the upload (see services/imports/jobs.py), because the job's own transaction is not
visible to other connections until it ends.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from .base import utcnow
from .mailing_list import MailingList

IMPORT_STATES = ("queued", "running", "done", "failed")


class ImportJob(db.Model):
    __tablename__ = "import_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    list_id: Mapped[int] = mapped_column(ForeignKey("lists.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(20), default="queued", index=True)
    check_mx: Mapped[bool] = mapped_column(default=False)
    # True: a single rejected row imports nothing ("all or nothing"); False: the good rows go in.
    all_or_nothing: Mapped[bool] = mapped_column(default=False)
    bytes_total: Mapped[int] = mapped_column(BigInteger, default=0)
    added: Mapped[int] = mapped_column(default=0)
    duplicates: Mapped[int] = mapped_column(default=0)
    rejected: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    mailing_list: Mapped[MailingList] = relationship()

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")
