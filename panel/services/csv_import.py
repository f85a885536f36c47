"""Adding recipients to a list from a CSV file or from JSON records, in chunks.

The file is streamed (decoded a line at a time, the csv module reading those lines), so
a file of millions of rows never sits in memory. Every row is checked and normalised; good
rows are inserted in chunks with one executemany each, after one query per chunk for the
addresses the list already holds. Bad rows are reported with their line number and why.
A problem with the file as a whole (no email column, not UTF-8, …) raises ImportFailed and
the caller rolls back: nothing is imported.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import re
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Iterator

from sqlalchemy import insert, select

from ..extensions import db
from ..models import MailingList, Recipient
from .addresses import InvalidAddress, normalise_address

EMAIL_COLUMNS = ("email", "e-mail", "mail")
RESERVED_FIELDS = frozenset({"email", "unsubscribe_url"})
CHUNK_SIZE = 1000
DELIMITERS = (",", ";", "\t")


class ImportFailed(Exception):
    """The file or request as a whole cannot be imported; nothing was."""


@dataclass
class ImportReport:
    added: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"added": self.added, "duplicates": self.duplicates, "rejected": self.rejected}


def field_name(header: str) -> str:
    """A column header as a template variable: `First name` -> `first_name`."""
    name = re.sub(r"\W+", "_", header.strip().lower()).strip("_")
    return f"_{name}" if name[:1].isdigit() else name


def is_email_column(header: str) -> bool:
    return header.strip().lower() in EMAIL_COLUMNS


class _Importer:
    """Collects checked rows and writes them a chunk at a time."""

    def __init__(self, mailing_list: MailingList) -> None:
        self.mailing_list = mailing_list
        self.report = ImportReport()
        self.pending: dict[str, dict[str, Any]] = {}
        self.new_fields: list[str] = []
        self.known_fields = set(mailing_list.fields)

    def note_fields(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self.known_fields:
                self.known_fields.add(name)
                self.new_fields.append(name)

    def reject(self, row: int, email: Any, reason: str) -> None:
        self.report.rejected.append({"row": row, "email": email if isinstance(email, str) else None, "reason": reason})

    def add(self, row: int, raw_email: Any, fields: dict[str, Any]) -> None:
        if not isinstance(raw_email, str) or not raw_email.strip():
            self.reject(row, raw_email, "no e-mail address")
            return
        try:
            email = normalise_address(raw_email)
        except InvalidAddress as exc:
            self.reject(row, raw_email, str(exc))
            return
        if email in self.pending:
            self.report.duplicates += 1
            return
        self.note_fields(fields)
        self.pending[email] = fields
        if len(self.pending) >= CHUNK_SIZE:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        list_id = self.mailing_list.id
        existing = set(
            db.session.scalars(
                select(Recipient.email).where(Recipient.list_id == list_id, Recipient.email.in_(list(self.pending)))
            )
        )
        rows = [
            {"list_id": list_id, "email": email, "fields": fields}
            for email, fields in self.pending.items()
            if email not in existing
        ]
        if rows:
            db.session.execute(insert(Recipient), rows)
        self.report.added += len(rows)
        self.report.duplicates += len(existing)
        self.pending.clear()

    def finish(self) -> ImportReport:
        self.flush()
        if self.report.added:
            if self.new_fields:
                self.mailing_list.fields = [*self.mailing_list.fields, *self.new_fields]
            self.mailing_list.recipient_count = MailingList.recipient_count + self.report.added
        db.session.flush()
        if self.report.added:
            db.session.refresh(self.mailing_list, ["recipient_count"])
        return self.report


def _header(cells: list[str]) -> tuple[int, list[tuple[int, str]]]:
    """The email column's index and the (index, field name) of every other named column."""
    email_columns = [i for i, cell in enumerate(cells) if is_email_column(cell)]
    if not email_columns:
        raise ImportFailed(
            "the first row must name the columns, one of them email (or e-mail, or mail); "
            f"found: {', '.join(repr(c) for c in cells) or 'nothing'}"
        )
    if len(email_columns) > 1:
        names = ", ".join(repr(cells[i]) for i in email_columns)
        raise ImportFailed(f"the file has more than one email column ({names}): keep one and try again")
    columns: list[tuple[int, str]] = []
    seen: dict[str, str] = {}
    for index, cell in enumerate(cells):
        if index == email_columns[0] or not cell.strip():
            continue  # unnamed columns (a trailing comma) carry nothing
        name = field_name(cell)
        if not name:
            raise ImportFailed(f"column {cell!r} has no letters or digits to name a field with: rename it")
        if name in RESERVED_FIELDS:
            raise ImportFailed(f"column {cell!r} is reserved (every letter gets {name} itself): rename or drop it")
        if name in seen:
            raise ImportFailed(f"columns {seen[name]!r} and {cell!r} both name the field {name!r}: rename one")
        seen[name] = cell
        columns.append((index, name))
    return email_columns[0], columns


def _text_lines(stream: IO[bytes], chunk_size: int = 1 << 16) -> Iterator[str]:
    """The stream's lines as text, decoded one line at a time (UTF-8, a leading BOM dropped),
    so a decoding error names its line. Line ends are kept, as the csv module wants them."""
    number = 0
    pending = b""
    while True:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            number += 1
            yield _decode(line + b"\n", number)
    if pending:
        yield _decode(pending, number + 1)


def _decode(line: bytes, number: int) -> str:
    if number == 1 and line.startswith(codecs.BOM_UTF8):
        line = line[len(codecs.BOM_UTF8):]
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise ImportFailed(f"line {number} is not valid UTF-8: save the file as CSV UTF-8 and upload it again") from None


def import_csv(mailing_list: MailingList, stream: IO[bytes]) -> ImportReport:
    """Import a CSV file (UTF-8, with or without BOM; comma, semicolon or tab separated)."""
    lines = _text_lines(stream)
    importer = _Importer(mailing_list)
    first = next(lines, "")
    if not first.strip():
        raise ImportFailed("the file is empty or its first line is blank: the first line must name the columns")
    delimiter = max(DELIMITERS, key=first.count)
    reader = csv.reader(itertools.chain([first], lines), delimiter=delimiter)
    line = 0
    try:
        header = next(reader)
        email_index, columns = _header(header)
        width = len(header)
        line = reader.line_num
        for cells in reader:
            row, line = line + 1, reader.line_num
            if not any(cell.strip() for cell in cells):
                continue  # blank lines
            raw_email = cells[email_index].strip() if email_index < len(cells) else ""
            if len(cells) > width and any(cell.strip() for cell in cells[width:]):
                importer.reject(row, raw_email, f"the row has {len(cells)} values but the header names {width} columns")
                continue
            cells += [""] * (width - len(cells))
            importer.add(row, raw_email, {name: cells[index].strip() for index, name in columns})
    except csv.Error as exc:
        raise ImportFailed(f"line {line + 1} cannot be read as CSV: {exc}") from None
    return importer.finish()


def import_records(mailing_list: MailingList, records: Any) -> ImportReport:
    """Import a JSON array of objects with an "email" key; other keys become fields. row = 1-based index."""
    if not isinstance(records, list):
        raise ImportFailed('send a JSON array of objects like [{"email": "ann@example.org", "name": "Ann"}]')
    importer = _Importer(mailing_list)
    for row, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            importer.reject(row, None, 'each item must be an object like {"email": "ann@example.org"}')
            continue
        email_keys = [key for key in record if is_email_column(str(key))]
        if len(email_keys) != 1:
            reason = "no email key" if not email_keys else "more than one email key"
            importer.reject(row, None, reason)
            continue
        fields: dict[str, Any] = {}
        problem = None
        for key, value in record.items():
            if key == email_keys[0]:
                continue
            name = field_name(str(key))
            if not name or name in RESERVED_FIELDS or name in fields:
                problem = f"key {key!r} cannot be a field name (empty, reserved or repeated)"
                break
            if isinstance(value, (dict, list)):
                problem = f"the value of {key!r} must be text, a number, true/false or null"
                break
            fields[name] = value.strip() if isinstance(value, str) else value
        if problem:
            importer.reject(row, record.get(email_keys[0]), problem)
            continue
        importer.add(row, record[email_keys[0]], fields)
    return importer.finish()
