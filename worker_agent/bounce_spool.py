"""Moving bounces from the intake's spool into the queue DB (in the sender process).

A spool file is deleted only after its row is committed; the row remembers the file
name, so a file collected twice (crash between commit and delete) is stored once.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from .bounce_intake import parse_spool_name
from .queue import QueueDB

log = logging.getLogger("worker_agent.bounce_spool")

MAX_RAW = 2 * 1024 * 1024  # bytes kept of one bounce: headers and the DSN part come first
MAX_ROUND_BYTES = 8 * 1024 * 1024  # bytes read per collection round
STALE_TMP = 24 * 3600  # s after which a half-written tmp file (intake died, Exim retried) is removed


def collect(queue: QueueDB, spool: Path, limit: int = 200) -> int:
    """Store up to ``limit`` spooled messages as bounce rows; return how many were stored."""
    new = spool / "new"
    try:
        names = sorted(os.listdir(new))[:limit]
    except FileNotFoundError:
        return 0
    found: list[tuple[str, str, str | None, str]] = []
    size = 0
    for name in names:
        if size > MAX_ROUND_BYTES:
            break  # the rest next round: memory stays bounded however big the backlog
        meta = parse_spool_name(name)
        if meta is None:
            continue
        kind, token = meta
        if token:  # Exim lower-cases local parts: report the token as the panel wrote it
            row = queue.letter_by_token(token)
            token = row[2] if row else token
        try:
            with open(new / name, "rb") as f:
                data = f.read(MAX_RAW + 1)
        except FileNotFoundError:
            continue
        found.append((name, kind, token, _as_text(data)))
        size += len(data)
    if not found:
        return 0
    stored = 0
    with queue.write(durable=True) as conn:  # on disk before the files go
        for name, kind, token, raw in found:
            stored += queue.add_bounce(conn, token, kind, raw, name)
    for name, *_ in found:
        try:
            (new / name).unlink()
        except OSError as exc:
            log.error("bounce %s is stored but cannot be removed from the spool: %s", name, exc)
    return stored


def _as_text(data: bytes) -> str:
    """The raw message as text: without the mbox "From " line a pipe may put in front."""
    if data.startswith(b"From ") and b"\n" in data:
        data = data.split(b"\n", 1)[1]
    truncated = len(data) > MAX_RAW
    text = data[:MAX_RAW].decode("utf-8", "replace")
    return text + "\n[truncated by the agent]\n" if truncated else text


def remove_stale_tmp(spool: Path, now: float | None = None) -> None:
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(spool / "tmp"))
    except FileNotFoundError:
        return
    for entry in entries:
        try:
            if entry.stat().st_mtime < now - STALE_TMP:
                os.unlink(entry.path)
        except OSError:
            pass
