"""Adding recipients to a list from a file (CSV, plain text, ZIP or RAR of them) or from JSON
records, in chunks.

The file is streamed (services/imports: the archive's members one after the other, each
decoded a line at a time in its detected encoding, the csv module reading those lines), so
a file of millions of rows never sits in memory. Every row is checked and normalised (and,
when asked, its domain's MX looked up once per domain); good rows are inserted in chunks:
on SQLite with one executemany each, after one query per chunk for the addresses the list
already holds; on PostgreSQL COPYed into a temporary table and inserted from there with ON
CONFLICT DO NOTHING. Bad rows are reported with their line number and why. A problem with
the file as a whole (no email column, a NUL byte, a damaged archive, …) raises ImportFailed
and the caller rolls back: nothing is imported.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Callable, Iterable

from sqlalchemy import select

from ..extensions import db
from ..models import MailingList, Recipient, Suppression
from ..models.base import insert_unless_present, utcnow
from .addresses import InvalidAddress, normalise_address
from . import quotas
from .imports.errors import ImportFailed
from .imports.mx import MxChecker
from .imports.sources import ImportLimits, archive_kind, open_members
from .imports.text import SAMPLE_SIZE, Lines, describe_binary, detect_encoding, looks_like_address_line, sniff_delimiter

__all__ = ["ImportFailed", "ImportOptions", "ImportReport", "TooManyRows", "import_csv", "import_file", "import_records"]

EMAIL_COLUMNS = ("email", "e-mail", "mail")
RESERVED_FIELDS = frozenset({"email", "unsubscribe_url"})
CHUNK_SIZE = 1000  # rows a chunk
# Rows a chunk of a list on PostgreSQL: each chunk costs a COPY, an INSERT and a TRUNCATE, ~15 %
# of the time at 1,000 rows; the rows stream into the COPY, so the memory stays that of the dict.
COPY_CHUNK_SIZE = 10_000
STAGING_TABLE = "pg_temp.recipients_import"  # PostgreSQL: the chunk's temporary table


@dataclass
class ImportOptions:
    check_mx: MxChecker | None = None  # look up each domain's MX (once per domain)
    all_or_nothing: bool = False  # a single rejected row imports nothing
    limits: ImportLimits = field(default_factory=ImportLimits)
    keep_rejected: int | None = None  # rejected rows kept in the report's list (None: all)
    on_reject: Callable[[dict[str, Any]], None] | None = None  # hears every rejected row
    on_progress: Callable[[int, int], None] | None = None  # (bytes read, bytes expected)
    max_rows: int | None = None  # rows (good, duplicate or rejected) one import may hold; more raise TooManyRows


class TooManyRows(ImportFailed):
    """More rows than ImportOptions.max_rows: nothing is imported (the API answers 413)."""


@dataclass
class ImportReport:
    added: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    rejected_count: int = 0  # all rejected rows, also those past keep_rejected

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

    def __init__(self, mailing_list: MailingList | None, options: ImportOptions | None = None) -> None:
        self.mailing_list = mailing_list
        self.options = options or ImportOptions()
        self.report = ImportReport()
        self.file: str | None = None  # the archive member being read, named in rejected rows
        self.pending: dict[str, dict[str, Any]] = {}
        self.new_fields: list[str] = []
        self.known_fields = set(mailing_list.fields) if mailing_list is not None else set()
        self.rows = 0
        self.staging = False  # PostgreSQL: STAGING_TABLE made in this transaction
        self.chunk_size = self._chunk_size()

    def _chunk_size(self) -> int:
        postgresql = db.session.get_bind().dialect.name == "postgresql"
        return COPY_CHUNK_SIZE if postgresql else CHUNK_SIZE

    def count_row(self) -> None:
        self.rows += 1
        limit = self.options.max_rows
        if limit is not None and self.rows > limit:
            raise TooManyRows(f"more than {limit:,} rows in one request: nothing was added; "
                              f"send at most {limit:,} rows a request")

    def note_fields(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self.known_fields:
                self.known_fields.add(name)
                self.new_fields.append(name)

    def reject(self, row: int, email: Any, reason: str) -> None:
        self.count_row()
        item = {"row": row, "email": email if isinstance(email, str) else None, "reason": reason}
        if self.file is not None:
            item["file"] = self.file
        self.report.rejected_count += 1
        keep = self.options.keep_rejected
        if keep is None or len(self.report.rejected) < keep:
            self.report.rejected.append(item)
        if self.options.on_reject is not None:
            self.options.on_reject(item)

    def add(self, row: int, raw_email: Any, fields: dict[str, Any]) -> None:
        if not isinstance(raw_email, str) or not raw_email.strip():
            self.reject(row, raw_email, "no e-mail address")
            return
        self.count_row()
        try:
            email = normalise_address(raw_email)
        except InvalidAddress as exc:
            self.reject(row, raw_email, str(exc))
            return
        if self.options.check_mx is not None:
            reason = self.options.check_mx.reason(email.rpartition("@")[2])
            if reason:
                self.reject(row, raw_email, reason)
                return
        if email in self.pending:
            self.report.duplicates += 1
            return
        self.note_fields(fields)
        self.pending[email] = fields
        if len(self.pending) >= self.chunk_size:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        list_id = self.mailing_list.id
        connection = db.session.connection()
        if connection.dialect.name == "postgresql":
            self._flush_postgresql(connection, list_id)
            return
        existing = set(
            db.session.scalars(
                select(Recipient.email).where(Recipient.list_id == list_id, Recipient.email.in_(list(self.pending)))
            )
        )
        insert_sql, as_json, created_at = _recipient_insert(connection.dialect)
        rows = [
            (list_id, email, as_json(fields), created_at)
            for email, fields in self.pending.items()
            if email not in existing
        ]
        if rows:
            connection.exec_driver_sql(insert_sql, rows)
        self.report.added += len(rows)
        self.report.duplicates += len(existing)
        self.pending.clear()

    def _flush_postgresql(self, connection: Any, list_id: int) -> None:
        """The chunk COPYed into a temporary table, then one INSERT … SELECT … ON CONFLICT DO NOTHING
        from it: no look-up first, and an address another import adds meanwhile is a duplicate, not
        an error. COPY (psycopg's, in binary) costs the client and the server a fraction of what
        parameters do (the fields' JSON escaped into a text[] literal and parsed back)."""
        _, as_json, created_at = _recipient_insert(connection.dialect)
        with connection.connection.cursor() as cursor:  # the driver's cursor: COPY is not in the DB-API
            if not self.staging:
                # Dropped with the transaction; IF NOT EXISTS: an earlier import of it left it (empty).
                cursor.execute(f"CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (email text, fields json) "
                               "ON COMMIT DROP")
                self.staging = True
            with cursor.copy(f"COPY {STAGING_TABLE} (email, fields) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "json"])
                for email, fields in self.pending.items():
                    copy.write_row((email, as_json(fields)))
            # Each row's foreign-key check is a prepared statement the panel's plan_cache_mode =
            # force_custom_plan (panel/__init__.py) would plan again for every row: a third of the
            # INSERT's time. Generic plans for this INSERT only.
            cursor.execute("SET LOCAL plan_cache_mode = auto")
            cursor.execute(
                "INSERT INTO recipients (list_id, email, fields, created_at) "
                f"SELECT %s, email, fields, %s FROM {STAGING_TABLE} "
                "ON CONFLICT (list_id, email) DO NOTHING",
                (list_id, created_at),
            )
            added = cursor.rowcount
            cursor.execute("RESET plan_cache_mode")
            cursor.execute(f"TRUNCATE {STAGING_TABLE}")
        self.report.added += added
        self.report.duplicates += len(self.pending) - added
        self.pending.clear()

    def finish(self) -> ImportReport:
        self.flush()
        count = self.report.rejected_count
        if count and self.options.all_or_nothing:
            raise ImportFailed(
                f"{count:,} row{'s were' if count != 1 else ' was'} rejected and you chose to import nothing "
                "in that case: correct the rows the report lists and import the file again"
            )
        if self.report.added and self.mailing_list is not None:
            refusal = quotas.recipients_refusal(self.mailing_list.user_id, self.report.added)
            if refusal:
                raise ImportFailed(refusal)
            if self.new_fields:
                self.mailing_list.fields = [*self.mailing_list.fields, *self.new_fields]
            self.mailing_list.recipient_count = MailingList.recipient_count + self.report.added
        db.session.flush()
        if self.report.added and self.mailing_list is not None:
            db.session.refresh(self.mailing_list, ["recipient_count"])
        return self.report


def _recipient_insert(dialect: Any) -> tuple[str, Callable[[Any], Any], Any]:
    """The driver's INSERT for recipients, how a fields dict becomes its column value, and this
    chunk's created_at, converted as SQLAlchemy would: one executemany with no per-row work
    in SQLAlchemy (what it does per row costs more than the database's own insert)."""
    table = Recipient.__table__
    mark = "?" if dialect.paramstyle == "qmark" else "%s"
    sql = f"INSERT INTO {table.name} (list_id, email, fields, created_at) VALUES ({mark}, {mark}, {mark}, {mark})"

    def processor(column: str) -> Callable[[Any], Any]:
        type_ = table.c[column].type.dialect_impl(dialect)
        return type_.bind_processor(dialect) or (lambda value: value)

    return sql, processor("fields"), processor("created_at")(utcnow())


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


class _Prepended:
    """A binary stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, stream: IO[bytes]) -> None:
        self.head = head
        self.stream = stream

    def read(self, size: int = -1) -> bytes:
        if self.head:
            data, self.head = self.head, b""
            return data
        return self.stream.read(size)


def _read_sample(stream: IO[bytes]) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size < SAMPLE_SIZE:
        chunk = stream.read(SAMPLE_SIZE - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _import_text(importer: _Importer, stream: IO[bytes], what: str, where: str = "") -> None:
    """Import one text file: CSV with a header row, or one address a line.
    `what` names it in messages ("the file", "people.csv in list.zip"); `where` is put after line numbers."""
    sample = _read_sample(stream)
    if not sample.strip():
        raise ImportFailed(f"{what} is empty: the first line must name the columns (one of them email), "
                           "or the file must hold one address a line")
    kind = archive_kind(sample)
    if kind:
        raise ImportFailed(f"{what} is a {kind} archive inside an archive: archives inside archives are not "
                           "unpacked; unpack it and upload its files")
    binary = describe_binary(sample)
    if binary:
        raise ImportFailed(f"{what} is not a text file (it looks like {binary}): "
                           "export the list as CSV (UTF-8) or as plain text with one address a line and upload that")
    encoding = detect_encoding(sample)
    lines = Lines(_Prepended(sample, stream), encoding, max_bytes=importer.options.limits.max_line, where=where)
    sample_text = sample.decode("utf-8" if encoding == "utf-8-sig" else encoding, errors="replace").lstrip("\ufeff")
    first = sample_text.splitlines()[0] if sample_text.splitlines() else ""
    if looks_like_address_line(first):
        _import_plain(importer, lines)
    else:
        _import_table(importer, lines, sniff_delimiter(sample_text))


def _import_plain(importer: _Importer, lines: Lines) -> None:
    """One address a line; blank lines are skipped."""
    for line in lines:
        lines.mark()
        raw_email = line.strip()
        if raw_email:
            importer.add(lines.number, raw_email, {})


def _import_table(importer: _Importer, lines: Lines, delimiter: str) -> None:
    iterator = iter(lines)
    first = next(iterator, "")
    if not first.strip():
        raise ImportFailed(f"the first line{lines.where_suffix} is blank: the first line must name the columns")
    reader = csv.reader(itertools.chain([first], iterator), delimiter=delimiter)
    line = 0
    try:
        header = next(reader)
        try:
            email_index, columns = _header(header)
        except ImportFailed as exc:
            if lines.where:
                raise ImportFailed(f"in {lines.where}, {exc}") from None
            raise
        width = len(header)
        line = reader.line_num
        lines.mark()
        for cells in reader:
            row, line = line + 1, reader.line_num
            lines.mark()
            if not "".join(cells).strip():
                continue  # blank lines
            raw_email = cells[email_index].strip() if email_index < len(cells) else ""
            if len(cells) > width and any(cell.strip() for cell in cells[width:]):
                importer.reject(row, raw_email, f"the row has {len(cells)} values but the header names {width} columns")
                continue
            cells += [""] * (width - len(cells))
            importer.add(row, raw_email, {name: cells[index].strip() for index, name in columns})
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise ImportFailed(
                f"the row starting on line {line + 1}{lines.where_suffix} has a value longer than "
                f"{csv.field_size_limit():,} characters: a quote mark there probably has no partner; fix the quotes"
            ) from None
        raise ImportFailed(f"line {line + 1}{lines.where_suffix} cannot be read as CSV: {exc}") from None


def import_csv(mailing_list: MailingList, stream: IO[bytes], options: ImportOptions | None = None) -> ImportReport:
    """Import one CSV or plain-text stream (the API's body; the encoding and delimiter are detected)."""
    importer = _Importer(mailing_list, options)
    _import_text(importer, stream, "the file")
    return importer.finish()


def records_too_many(records: Any, options: ImportOptions | None) -> None:
    if options is not None and options.max_rows is not None and isinstance(records, list) \
            and len(records) > options.max_rows:
        raise TooManyRows(f"{len(records):,} rows in one request: nothing was added; "
                          f"send at most {options.max_rows:,} rows a request")


def import_file(mailing_list: MailingList, path: Path, name: str, options: ImportOptions | None = None) -> ImportReport:
    """Import an uploaded file: CSV, plain text, or a ZIP or RAR archive of such files (each
    with its own header). `name` is the file's name as the user knows it, for messages."""
    importer = _Importer(mailing_list, options)
    _read_file(importer, path, name)
    return importer.finish()


def _read_file(importer: _Importer, path: Path, name: str) -> None:
    """Feed every row of a CSV, text, ZIP or RAR file to the importer."""
    limits = importer.options.limits
    with open_members(path, name, limits, importer.options.on_progress) as (kind, members):
        for member in members:
            importer.file = member.name if kind else None
            what = f"{member.name!r} in {name}" if kind else "the file"
            with contextlib.closing(member.open()) as stream:  # type: ignore[type-var]
                _import_text(importer, stream, what, f"{member.name!r}" if kind else "")
    importer.file = None


class _SuppressionImporter(_Importer):
    """The same readers and checks, writing the user's suppression list (reason "manual") instead
    of a list: addresses already suppressed count as duplicates and keep their reason."""

    def __init__(self, user_id: int, options: ImportOptions | None = None) -> None:
        super().__init__(None, options)
        self.user_id = user_id

    def _chunk_size(self) -> int:
        return CHUNK_SIZE  # one executemany a chunk on both databases

    def flush(self) -> None:
        if not self.pending:
            return
        existing = set(
            db.session.scalars(
                select(Suppression.email).where(Suppression.user_id == self.user_id,
                                                Suppression.email.in_(list(self.pending)))
            )
        )
        created_at = utcnow()
        rows = [{"user_id": self.user_id, "email": email, "domain": email.rpartition("@")[2], "reason": "manual",
                 "created_at": created_at} for email in self.pending if email not in existing]
        if rows:  # ON CONFLICT DO NOTHING: a bounce suppressing one of them meanwhile is no error
            db.session.execute(insert_unless_present(db.session, Suppression), rows)
        self.report.added += len(rows)
        self.report.duplicates += len(existing)
        self.pending.clear()


def import_suppressions(user_id: int, path: Path, name: str, options: ImportOptions | None = None) -> ImportReport:
    """Add every address of a CSV, text, ZIP or RAR file to the user's suppression list as "manual"."""
    importer = _SuppressionImporter(user_id, options)
    _read_file(importer, path, name)
    return importer.finish()


def import_records(mailing_list: MailingList, records: Any, options: ImportOptions | None = None) -> ImportReport:
    """Import a JSON array of objects with an "email" key; other keys become fields. row = 1-based index."""
    if not isinstance(records, list):
        raise ImportFailed('send a JSON array of objects like [{"email": "ann@example.org", "name": "Ann"}]')
    records_too_many(records, options)
    importer = _Importer(mailing_list, options)
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
