"""The rejected rows of an import, kept on disk while it runs and offered as a CSV file.

While an import runs, every rejected row is appended to a JSON-lines spool (one small
object a line), so a file with millions of bad rows costs no memory; the page shows the
first of them and the download turns the spool into CSV. Every cell of that CSV is safe
to open in a spreadsheet: one starting with = + - @ TAB or CR (a formula to Excel and
LibreOffice) gets a leading single quote.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

REPORT_COLUMNS = ("file", "line", "email", "reason")
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def private_opener(path: str, flags: int) -> int:
    """open()'s opener for files of users' data: 0600 whatever the umask."""
    return os.open(path, flags, 0o600)


class RejectedSpool:
    """Appends rejected rows ({"row", "email", "reason", "file"?}) to a JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = open(path, "w", encoding="utf-8", opener=private_opener)  # noqa: SIM115 (closed by close())

    def __call__(self, item: dict[str, Any]) -> None:
        self._file.write(json.dumps(item, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._file.close()


def read_spool(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The first `limit` rejected rows of a spool (all when None); [] when there is none."""
    return list(itertools.islice(spool_items(path), limit))


def csv_rows(items: Iterable[dict[str, Any]], default_file: str) -> Iterator[str]:
    """The report as CSV text, a row at a time: header, then file, line, email, reason."""
    return csv_stream(REPORT_COLUMNS, ([item.get("file") or default_file, item.get("row"), item.get("email"),
                                        item.get("reason")] for item in items))


def csv_stream(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> Iterator[str]:
    """A header and rows as CSV text in pieces of about 64 KB (memory stays flat however many rows
    come), every cell made safe with safe_cell. Also the lists' and suppressions' exports."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([safe_cell(name) for name in header])
    for row in rows:
        writer.writerow([safe_cell(value) for value in row])
        if buffer.tell() > 1 << 16:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def spool_items(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as spool:
            for line in spool:
                yield json.loads(line)
    except FileNotFoundError:
        return
