"""Looking letters up in Exim's queue by Message-ID: its spool keeps each message's headers in
``input/[<c>/]<exim id>-H`` (``split_spool_directory`` adds the one-character folder), written
completely (under another name, then renamed) before Exim logs the arrival or answers 250.
A letter found there was taken by Exim even if its log never said so (Exim killed in between)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

_HEADER_FILE = re.compile(r"^(?P<id>[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4})-H$")
_MESSAGE_ID = re.compile(rb"^\d{3,}[A-Za-z* ] Message-ID:[ \t]*<([^>\s]+)>", re.IGNORECASE | re.MULTILINE)
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
CLOCK_SLACK = 300.0  # s: a message id names its arrival second; files older than the wanted letters are skipped
MAX_HEADER_BYTES = 1 << 20


def arrival_time(exim_id: str) -> int | None:
    """The arrival second an Exim message id begins with (six base-62 digits)."""
    value = 0
    for ch in exim_id[:6]:
        digit = _BASE62.find(ch)
        if digit < 0:
            return None
        value = value * 62 + digit
    return value


def find_message_ids(spool: Path, wanted: Mapping[str, int], since: float) -> dict[int, str]:
    """{delivery id: Exim id} for each Message-ID of ``wanted`` (its local part -> delivery id)
    held in the queue by a message that arrived after ``since`` (less CLOCK_SLACK). A spool that
    does not exist holds nothing; one that cannot be read raises OSError (the caller must not
    conclude that a letter is not there)."""
    found: dict[int, str] = {}
    if not wanted:
        return found
    root = spool / "input"
    try:
        folders = [root] + [root / name for name in os.listdir(root) if len(name) == 1]
    except FileNotFoundError:
        return found
    oldest = since - CLOCK_SLACK
    for folder in folders:
        try:
            names = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            m = _HEADER_FILE.match(name)
            if m is None:
                continue
            arrived = arrival_time(m["id"])
            if arrived is not None and arrived < oldest:
                continue
            try:
                with open(folder / name, "rb") as f:
                    head = f.read(MAX_HEADER_BYTES)
            except FileNotFoundError:
                continue  # delivered and removed meanwhile: its log lines say so
            for message_id in _MESSAGE_ID.findall(head):
                delivery_id = wanted.get(message_id.decode("ascii", "replace").rpartition("@")[0])
                if delivery_id is not None:
                    found[delivery_id] = m["id"]
    return found
