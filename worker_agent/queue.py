"""The agent's SQLite queue: campaigns, letters, outcome events, bounces, nonces.

One file in data_dir, shared by the API process (writes batches, reads outcomes) and
the sender process (claims letters, records results, follows Exim's log). WAL lets
them read while one writes; every change is one short ``BEGIN IMMEDIATE`` transaction.

Letters move queued -> claimed -> submitting -> submitted (or -> failed). ``submitting`` is
committed durably right before the letter's SMTP transaction with Exim starts: a letter a dead
sender left ``claimed`` never reached Exim and is put back by ``recover_claims`` without using
up an attempt, however often the sender is killed; one left ``submitting`` may be in Exim and is
never offered again until reconcile.py has looked for it in Exim's log and queue.
Rows of finished letters stay (with their fields dropped) so a delivery id pushed again
is recognised and never queued twice. A queued letter no SMTP transaction ever carried
may be recalled by the panel (``recall``): its row is deleted, so it is no longer the
agent's, and a later batch may hand the same id back.

Events and bounces share one sequence (table ``counters``) because the panel acks
both with a single number; the counter only grows, so a seq is never reused. A queue file
made anew (an agent reinstalled) starts the sequence again under a new random epoch, made
once with the file: an ack is taken only with the epoch it was given for.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 3
MAX_EVENTS_PER_REPLY = 5000
MAX_BOUNCE_BYTES_PER_REPLY = 8 * 1024 * 1024
MAX_BOUNCES_PER_REPLY = 1000
CAMPAIGN_STATES = ("running", "paused", "cancelled")
EPOCH_KEY = "outcome_epoch"  # in agent_state: this queue file's epoch (16 hex digits)
EPOCH_FORMAT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what an epoch the panel sends back may look like
MAX_RECALL = 10_000  # letters examined by one recall: its reply stays far below the panel's reply bounds

# A letter the agent can give back: waiting, and never carried by an SMTP transaction to Exim.
# attempts > 0 on a queued letter means a sender took it towards Exim before (a crashed claim put
# back, a retry after a lost connection): Exim may hold it, and the log reader will say so. Giving
# it back could send it twice, so it stays the agent's until it is submitted or fails.
_RECALLABLE = "state = 'queued' AND attempts = 0"

# Letters counted against an IP's warm-up allowance (warmup.py), per provider group and day (its start).
_WARMUP_SENT = """
CREATE TABLE IF NOT EXISTS warmup_sent (
    source_ip TEXT NOT NULL,
    provider TEXT NOT NULL,
    day_start INTEGER NOT NULL,
    sent INTEGER NOT NULL,
    PRIMARY KEY (source_ip, day_start, provider)
) WITHOUT ROWID;
"""

_SCHEMA = """
CREATE TABLE campaigns (
    id INTEGER PRIMARY KEY,             -- the panel's campaign id
    json TEXT,                          -- the campaign object as pushed (NULL until a batch brings it)
    state TEXT NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'paused', 'cancelled')),
    updated_at REAL NOT NULL
);
CREATE TABLE batches (
    batch_id TEXT PRIMARY KEY,
    campaign_id INTEGER NOT NULL,
    queued INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    received_at REAL NOT NULL
);
CREATE TABLE letters (
    id INTEGER PRIMARY KEY,             -- the panel's delivery id
    campaign_id INTEGER NOT NULL,
    email TEXT NOT NULL,
    fields TEXT,                        -- template fields as JSON; NULL once the letter is finished
    source_ip TEXT NOT NULL,
    token TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'claimed', 'submitting', 'submitted', 'failed')),
    exim_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_at REAL,
    not_before REAL NOT NULL DEFAULT 0, -- retry / rate-limit hold
    last_error TEXT,
    submitting_at REAL,                 -- when its SMTP transaction with Exim started
    submit_port INTEGER                 -- the sender's local port of that connection (reconcile.py)
);
CREATE INDEX letters_queued ON letters (campaign_id, not_before, id) WHERE state = 'queued';
CREATE INDEX letters_claimed ON letters (claimed_at) WHERE state = 'claimed';
CREATE INDEX letters_submitting ON letters (id) WHERE state = 'submitting';
CREATE INDEX letters_exim_id ON letters (exim_id) WHERE exim_id IS NOT NULL;
CREATE INDEX letters_token ON letters (token COLLATE NOCASE);  -- Exim lowercases local parts
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,            -- from counters('outcome'): shared with bounces
    delivery_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    code INTEGER,
    text TEXT,
    at REAL NOT NULL
);
CREATE TABLE bounces (
    seq INTEGER PRIMARY KEY,            -- from counters('outcome'): shared with events
    token TEXT,
    kind TEXT NOT NULL,                 -- 'bounce' or 'unsubscribe' (from the address it came to)
    raw TEXT NOT NULL,
    spool_name TEXT UNIQUE,             -- a spool file collected twice is stored once
    at REAL NOT NULL
);
CREATE TABLE nonces (nonce TEXT PRIMARY KEY, expires REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX nonces_expires ON nonces (expires);
CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO counters VALUES ('outcome', 0);
CREATE TABLE agent_state (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
""" + _WARMUP_SENT


# Schema 1 -> 2: the 'submitting' state (a CHECK that only a copy of the table can change). A letter
# an older sender left 'claimed' may have reached Exim (it claimed and submitted in one go): it
# becomes 'submitting', so it is looked for in Exim's log and queue before it is sent again.
_LETTERS_AT = _SCHEMA.index("CREATE TABLE letters (")
_TO_V2 = _SCHEMA[_LETTERS_AT:_SCHEMA.index(");\n", _LETTERS_AT)].replace("letters (", "letters_v2 (", 1) + """);
INSERT INTO letters_v2 (id, campaign_id, email, fields, source_ip, token, state, exim_id, attempts, claimed_at,
                        not_before, last_error, submitting_at)
    SELECT id, campaign_id, email, fields, source_ip, token,
           CASE state WHEN 'claimed' THEN 'submitting' ELSE state END, exim_id, attempts, claimed_at,
           not_before, last_error, CASE state WHEN 'claimed' THEN claimed_at END
    FROM letters;
DROP TABLE letters;
ALTER TABLE letters_v2 RENAME TO letters;
""" + "".join(line + "\n" for line in _SCHEMA.splitlines() if line.startswith("CREATE INDEX letters_"))
_MIGRATIONS = {2: _TO_V2, 3: _WARMUP_SENT}  # 2 -> 3: warm-up counts


class QueueError(Exception):
    """A request the queue cannot carry out; the message is meant for the panel."""


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    campaign_id: int
    email: str
    fields: dict[str, Any]
    source_ip: str
    token: str
    attempts: int

    def recipient(self) -> dict[str, Any]:
        """The recipient object as the panel pushed it (what the renderer takes)."""
        fields = dict(self.fields)
        sending = fields.pop(SENDING_KEY, None) or {}
        return {"id": self.id, "email": self.email, "fields": fields,
                "source_ip": self.source_ip, "token": self.token, **sending}


# The letter's sending domain and bounce domain (optional recipient keys) ride in the fields
# JSON under a key no template variable can have.
SENDING_KEY = "@sending"


def _fields_json(recipient: dict[str, Any]) -> str:
    fields = dict(recipient.get("fields") or {})
    sending = {key: recipient[key] for key in ("domain", "bounce_domain") if recipient.get(key)}
    if sending:
        fields[SENDING_KEY] = sending
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class Event:
    delivery_id: int
    status: str  # sent | delivered | deferred | failed | cancelled
    code: int | None = None
    text: str | None = None
    at: float | None = None  # when it happened (Exim's log time); None: now


def connect(path: Path | str, synchronous: str = "FULL") -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=30, check_same_thread=True)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA cache_size = -1024")  # 1 MB per connection (one per thread): flat at any queue size
    return conn


class QueueDB:
    """The queue file; one connection per thread (sqlite3 connections are not shared)."""

    def __init__(self, path: Path | str, *, durable: bool = True) -> None:
        """``durable``: every commit is on disk before it returns (the API: a batch the panel was
        told is queued must survive a power cut; the sender: a letter marked 'submitting' or
        recorded as handed to Exim must too, so its few commits are batched instead)."""
        self.path = Path(path)
        self._synchronous = "FULL" if durable else "NORMAL"
        self._local = threading.local()
        self._migrate()

    # -- plumbing ---------------------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = connect(self.path, self._synchronous)
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @contextmanager
    def write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (IMMEDIATE) so it never has to be retried.

        ``durable``: on disk when this returns even if the DB was opened with durable=False
        (for a commit on the strength of which something else is deleted)."""
        conn = self.conn()
        upgrade = durable and self._synchronous != "FULL"
        if upgrade:
            conn.execute("PRAGMA synchronous = FULL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            if upgrade:
                conn.execute(f"PRAGMA synchronous = {self._synchronous}")

    def _migrate(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # recipients' addresses live here: owner only (SQLite gives -wal/-shm the same mode)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        with self.write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _statements(_SCHEMA):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise QueueError(f"queue {self.path} has schema {version}, newer than this agent ({SCHEMA_VERSION})")
            elif version < SCHEMA_VERSION:
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in _statements(_MIGRATIONS[step]):
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # Made once per file; a queue from before epochs gets its own on first open (its seqs go on).
            conn.execute("INSERT INTO agent_state VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
                         (EPOCH_KEY, json.dumps(secrets.token_hex(8))))

    @staticmethod
    def add_events(conn: sqlite3.Connection, events: Sequence[Event], now: float | None = None) -> None:
        """Append events with fresh seqs (inside the caller's transaction)."""
        if not events:
            return
        first = _take_seqs(conn, len(events))
        now = time.time() if now is None else now
        conn.executemany(
            "INSERT INTO events (seq, delivery_id, status, code, text, at) VALUES (?, ?, ?, ?, ?, ?)",
            [(first + i, e.delivery_id, e.status, e.code, e.text, now if e.at is None else e.at)
             for i, e in enumerate(events)],
        )

    # -- the API side -------------------------------------------------------------------------

    def queue_batch(self, batch_id: str, campaign: Mapping[str, Any], recipients: Sequence[Mapping[str, Any]]
                    ) -> tuple[int, int]:
        """Queue a checked batch in one transaction; return (queued, duplicates).

        A batch_id seen before queues nothing; a delivery id already known is a duplicate.
        Letters of a campaign the panel cancelled are not queued but reported cancelled.
        """
        now = time.time()
        campaign_json = json.dumps(campaign, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
        with self.write() as conn:
            if conn.execute("SELECT 1 FROM batches WHERE batch_id = ?", (batch_id,)).fetchone():
                return 0, len(recipients)
            conn.execute(
                "INSERT INTO campaigns (id, json, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET json = excluded.json, updated_at = excluded.updated_at",
                (campaign["id"], campaign_json, now),
            )
            state = conn.execute("SELECT state FROM campaigns WHERE id = ?", (campaign["id"],)).fetchone()[0]
            if state == "cancelled":
                known = _known_ids(conn, [r["id"] for r in recipients])
                fresh = list(dict.fromkeys(r["id"] for r in recipients if r["id"] not in known))
                self.add_events(conn, [Event(i, "cancelled", None, "campaign was cancelled") for i in fresh], now)
                queued, duplicates = 0, len(recipients) - len(fresh)
            else:
                before = conn.total_changes
                conn.executemany(
                    # ON CONFLICT, not OR IGNORE: only a known id is skipped, a broken row still fails
                    "INSERT INTO letters (id, campaign_id, email, fields, source_ip, token) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
                    [(r["id"], campaign["id"], r["email"], _fields_json(r), r["source_ip"], r["token"])
                     for r in recipients],
                )
                queued = conn.total_changes - before
                duplicates = len(recipients) - queued
            conn.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?)", (batch_id, campaign["id"], queued, duplicates, now))
        return queued, duplicates

    def set_campaign_state(self, campaign_id: int, state: str) -> int:
        """Pause, resume or cancel; return the letters affected (held, released or removed)."""
        if state not in CAMPAIGN_STATES:
            raise QueueError(f"state must be one of {', '.join(CAMPAIGN_STATES)}")
        now = time.time()
        with self.write() as conn:
            conn.execute(
                "INSERT INTO campaigns (id, state, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                (campaign_id, state, now),
            )
            if state == "cancelled":
                return _cancel_queued(conn, "campaign_id = ?", (campaign_id,), now)
            return conn.execute(
                "SELECT count(*) FROM letters WHERE campaign_id = ? AND state = 'queued'", (campaign_id,)
            ).fetchone()[0]

    def recall(self, *, ids: Sequence[int] | None = None, campaign_id: int | None = None,
               emails: Sequence[str] | None = None, campaign_ids: Sequence[int] | None = None,
               after: int | None = None, limit: int = MAX_RECALL) -> dict[str, Any]:
        """Give back letters not yet submitted to Exim, in one transaction (the sender's claim
        waits for it or went first: a letter is either given back or the sender's, never both).

        ``ids``: every id is answered in exactly one of recalled / sending / submitted / finished /
        unknown. ``campaign_id``, or ``emails`` (any case; optionally only in ``campaign_ids``):
        the unfinished letters they select, by id above ``after``, at most ``limit`` of them,
        each either recalled or still ``sending``; ``more`` says whether to ask again from
        ``next_after``. A recalled letter's row is deleted: no outcome is ever reported for it.
        """
        if (ids is not None) + (campaign_id is not None) + (emails is not None) != 1:
            raise QueueError("give exactly one of ids, campaign_id or emails")
        if ids is not None:
            ids = list(dict.fromkeys(ids))
            with self.write() as conn:
                found = _recall_states(conn, ids)
                buckets: dict[str, list[int]] = {"sending": [], "submitted": [], "finished": [], "unknown": []}
                recalled = []
                for delivery_id in ids:
                    state = found.get(delivery_id, "unknown")
                    (recalled if state == "recalled" else buckets[state]).append(delivery_id)
                _delete_recallable(conn, recalled)
            return {"recalled": recalled, "not_recalled": buckets}
        if campaign_id is not None:
            where, params = "campaign_id = ?", [campaign_id]
        else:
            where, params = "lower(email) IN (SELECT lower(value) FROM json_each(?))", [json.dumps(emails)]
            if campaign_ids is not None:
                where += " AND campaign_id IN (SELECT value FROM json_each(?))"
                params.append(json.dumps(campaign_ids))
        # Found before the write lock is taken: this scan may cover every letter the agent ever held,
        # and the sender must not wait for it. Each is looked at again inside the transaction.
        selected = [row[0] for row in self.conn().execute(
            f"SELECT id FROM letters WHERE state NOT IN ('submitted', 'failed') AND id > ? AND {where} "
            "ORDER BY id LIMIT ?", (-(2**63) if after is None else after, *params, limit + 1))]
        more, selected = len(selected) > limit, selected[:limit]
        with self.write() as conn:
            found = _recall_states(conn, selected)
            recalled = [i for i in selected if found.get(i) == "recalled"]
            sending = [i for i in selected if found.get(i) == "sending"]  # meanwhile submitted or failed: not listed
            _delete_recallable(conn, recalled)
        reply: dict[str, Any] = {"recalled": recalled, "not_recalled": {"sending": sending}, "more": more}
        if more:
            reply["next_after"] = selected[-1]
        return reply

    def counts(self) -> tuple[int, int]:
        """(letters waiting, letters claimed by the sender: being built or handed to Exim)."""
        rows = dict(self.conn().execute(
            "SELECT state, count(*) FROM letters WHERE state IN ('queued', 'claimed', 'submitting') GROUP BY state"
        ).fetchall())
        return rows.get("queued", 0), rows.get("claimed", 0) + rows.get("submitting", 0)

    def remember_nonce(self, nonce: str, expires: float) -> bool:
        """Record a request nonce; False when it was seen before (a replay). Prunes expired ones."""
        with self.write() as conn:
            conn.execute("DELETE FROM nonces WHERE expires < ?", (time.time(),))
            return conn.execute("INSERT OR IGNORE INTO nonces VALUES (?, ?)", (nonce, expires)).rowcount == 1

    @property
    def epoch(self) -> str:
        """This queue file's epoch: its outcome seqs count from 1 under it."""
        return self.get_state(EPOCH_KEY)

    def outcomes(self, ack: int, max_events: int = MAX_EVENTS_PER_REPLY,
                 max_bounce_bytes: int = MAX_BOUNCE_BYTES_PER_REPLY, *, epoch: str | None = None) -> dict[str, Any]:
        """Forget everything with seq <= ack, return what follows: no seq below the highest one
        returned is ever held back, so the panel can ack that highest seq safely.

        ``epoch``: the epoch the ack was given for. Another one (the panel's ack for a queue this
        agent had before it was reinstalled) acknowledges nothing: all is returned from seq 1,
        with this queue's epoch. None (a panel from before epochs): the ack is taken."""
        with self.write() as conn:
            own = json.loads(conn.execute("SELECT value FROM agent_state WHERE key = ?", (EPOCH_KEY,)).fetchone()[0])
            if epoch is not None and epoch != own:
                ack = 0
            conn.execute("DELETE FROM events WHERE seq <= ?", (ack,))
            conn.execute("DELETE FROM bounces WHERE seq <= ?", (ack,))
            events = conn.execute(
                "SELECT seq, delivery_id, status, code, text, at FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (ack, max_events + 1),
            ).fetchall()
            bounces = conn.execute(
                "SELECT seq, length(CAST(raw AS BLOB)) FROM bounces WHERE seq > ? ORDER BY seq LIMIT ?",
                (ack, MAX_BOUNCES_PER_REPLY + 1),
            ).fetchall()
            cutoff, more = None, False
            if len(events) > max_events:
                cutoff, more = events[max_events - 1][0], True
            size = 0
            for i, (seq, length) in enumerate(bounces):
                size += length
                if i >= MAX_BOUNCES_PER_REPLY or (size > max_bounce_bytes and i > 0):
                    cutoff, more = min(cutoff if cutoff is not None else seq - 1, seq - 1), True
                    break
            if cutoff is None:
                cutoff = max([e[0] for e in events[-1:]] + [b[0] for b in bounces[-1:]] + [ack])
            out_events = []
            for seq, delivery_id, status, code, text, at in events:
                if seq > cutoff:
                    break
                event: dict[str, Any] = {"seq": seq, "id": delivery_id, "status": status, "at": at}
                if code is not None:
                    event["code"] = code
                if text is not None:
                    event["text"] = text
                out_events.append(event)
            out_bounces = [
                {"seq": seq, "token": token, "kind": kind, "raw": raw}
                for seq, token, kind, raw in conn.execute(
                    "SELECT seq, token, kind, raw FROM bounces WHERE seq > ? AND seq <= ? ORDER BY seq", (ack, cutoff)
                )
            ]
        return {"events": out_events, "bounces": out_bounces, "more": more, "epoch": own}

    # -- the sender side ----------------------------------------------------------------------

    def running_campaigns(self) -> list[tuple[int, str]]:
        return self.conn().execute(
            "SELECT id, json FROM campaigns WHERE state = 'running' AND json IS NOT NULL ORDER BY id"
        ).fetchall()

    def claim(self, limit: int, now: float | None = None) -> list[Claimed]:
        """Claim up to ``limit`` due letters of running campaigns, shared fairly among them.

        The claim counts an attempt; one given back before its SMTP transaction started (a rate
        limit, Exim unreachable, the sender stopped or killed) is handed back its attempt."""
        now = time.time() if now is None else now
        campaigns = [cid for cid, _ in self.running_campaigns()]
        if not campaigns or limit <= 0:
            return []
        share = max(1, limit // len(campaigns))
        claimed: list[Claimed] = []
        with self.write() as conn:
            for cid in campaigns:
                rows = conn.execute(
                    "UPDATE letters SET state = 'claimed', claimed_at = ?, attempts = attempts + 1 "
                    "WHERE id IN (SELECT id FROM letters WHERE state = 'queued' AND campaign_id = ? "
                    "AND not_before <= ? ORDER BY not_before, id LIMIT ?) "
                    "RETURNING id, campaign_id, email, fields, source_ip, token, attempts",
                    (now, cid, now, min(share, limit - len(claimed))),
                ).fetchall()
                claimed.extend(
                    Claimed(i, c, e, json.loads(f) if f else {}, ip, t, a) for i, c, e, f, ip, t, a in rows
                )
                if len(claimed) >= limit:
                    break
        claimed.sort(key=lambda c: c.id)
        return claimed

    def next_due(self) -> float | None:
        """When the earliest held letter of a running campaign becomes due (None: none waiting)."""
        row = self.conn().execute(
            "SELECT min(l.not_before) FROM letters l JOIN campaigns c ON c.id = l.campaign_id "
            "WHERE l.state = 'queued' AND c.state = 'running'"
        ).fetchone()
        return row[0]

    def finish(self, *, submitted: Iterable[tuple[int, str | None, int, str]] = (),
               failed: Iterable[tuple[int, int | None, str]] = (),
               retry: Iterable[tuple[int, float, int | None, str]] = (),
               release: Iterable[tuple[int, float]] = (),
               max_attempts: int = 5) -> None:
        """Record what happened to claimed (or submitting) letters, all in one transaction.

        submitted: (id, exim_id, code, reply) -> state submitted + a 'sent' event
        failed:    (id, code, text) -> state failed + a 'failed' event
        retry:     (id, not_before, code, text) -> queued again, or failed after max_attempts
        release:   (id, not_before) -> queued again without using up an attempt
                   (rate limit, local Exim unreachable: not the letter's fault)
        """
        now = time.time()
        events: list[Event] = []
        with self.write() as conn:
            for delivery_id, exim_id, code, reply in submitted:
                cur = conn.execute(
                    "UPDATE letters SET state = 'submitted', exim_id = ?, fields = NULL, last_error = NULL "
                    "WHERE id = ? AND state IN ('claimed', 'submitting')", (exim_id, delivery_id))
                if cur.rowcount:
                    events.append(Event(delivery_id, "sent", code, reply))
            for delivery_id, code, text in failed:
                if _fail(conn, delivery_id, text):
                    events.append(Event(delivery_id, "failed", code, text))
            for delivery_id, not_before, code, text in retry:
                row = conn.execute("SELECT attempts FROM letters WHERE id = ? AND state IN ('claimed', 'submitting')",
                                   (delivery_id,)).fetchone()
                if row is None:
                    continue
                if row[0] >= max_attempts:
                    if _fail(conn, delivery_id, text):
                        events.append(Event(delivery_id, "failed", code, f"gave up after {row[0]} attempts: {text}"))
                else:
                    conn.execute(
                        "UPDATE letters SET state = 'queued', claimed_at = NULL, not_before = ?, last_error = ? "
                        "WHERE id = ?", (not_before, text, delivery_id))
            conn.executemany(
                "UPDATE letters SET state = 'queued', claimed_at = NULL, not_before = ?, "
                "attempts = max(attempts - 1, 0) WHERE id = ? AND state IN ('claimed', 'submitting')",
                [(not_before, delivery_id) for delivery_id, not_before in release],
            )
            self.add_events(conn, events, now)
            # a letter that went back to the queue after its campaign was cancelled is removed now
            _cancel_queued(conn, "campaign_id IN (SELECT id FROM campaigns WHERE state = 'cancelled')", (), now)

    def release_rate_holds(self, now: float) -> int:
        """Make letters held back by a rate limit due now (the limits changed). A letter waiting
        to be retried after a failed attempt carries its error and keeps its time."""
        with self.write() as conn:
            return conn.execute(
                "UPDATE letters SET not_before = ? WHERE state = 'queued' AND not_before > ? AND last_error IS NULL",
                (now, now)).rowcount

    def recover_claims(self, claimed_before: float, max_attempts: int) -> tuple[int, int]:
        """Put back letters claimed before ``claimed_before`` by a sender that is gone.

        A 'claimed' letter never reached Exim (the sender marks it 'submitting' first), so it is
        queued again with its attempt handed back, however many times that happens. Letters left
        'submitting' are reconcile.py's. Returns (requeued, failed); failed is always 0 now.
        """
        with self.write() as conn:
            requeued = conn.execute(
                "UPDATE letters SET state = 'queued', claimed_at = NULL, attempts = max(attempts - 1, 0) "
                "WHERE state = 'claimed' AND claimed_at < ?", (claimed_before,),
            ).rowcount
        return requeued, 0

    def mark_submitting(self, letters: Iterable[tuple[int, int | None]], now: float | None = None) -> set[int]:
        """Mark claimed letters 'submitting' with their connection's local port, on disk before
        this returns: only then may their SMTP transaction start. Returns the ids marked (a letter
        no longer claimed, e.g. its campaign cancelled meanwhile, is not)."""
        now = time.time() if now is None else now
        marked: set[int] = set()
        with self.write(durable=True) as conn:
            for delivery_id, port in letters:
                if conn.execute(
                    "UPDATE letters SET state = 'submitting', submitting_at = ?, submit_port = ? "
                    "WHERE id = ? AND state IN ('claimed', 'submitting')", (now, port, delivery_id)
                ).rowcount:
                    marked.add(delivery_id)
        return marked

    def submitting(self) -> list[tuple[int, str, float | None, int | None, int]]:
        """(id, token, submitting_at, submit_port, attempts) of every letter in 'submitting'."""
        return self.conn().execute(
            "SELECT id, token, submitting_at, submit_port, attempts FROM letters WHERE state = 'submitting'"
        ).fetchall()

    def settle_submitting(self, *, found: Iterable[tuple[int, str, str]] = (),
                          requeue: Iterable[tuple[int, float, str]] = (), max_attempts: int = 5) -> None:
        """Record what reconciling 'submitting' letters showed, in one durable transaction.

        found:   (id, exim_id, text) -> Exim holds it: submitted + a 'sent' event
        requeue: (id, not_before, why) -> Exim never took it: queued again (its attempt counted),
                 or failed once it used ``max_attempts``
        """
        now = time.time()
        events: list[Event] = []
        with self.write(durable=True) as conn:
            for delivery_id, exim_id, text in found:
                if conn.execute(
                    "UPDATE letters SET state = 'submitted', exim_id = ?, fields = NULL, last_error = NULL "
                    "WHERE id = ? AND state = 'submitting'", (exim_id, delivery_id)
                ).rowcount:
                    events.append(Event(delivery_id, "sent", None, text))
            for delivery_id, not_before, why in requeue:
                row = conn.execute("SELECT attempts FROM letters WHERE id = ? AND state = 'submitting'",
                                   (delivery_id,)).fetchone()
                if row is None:
                    continue
                if row[0] >= max_attempts:
                    if _fail(conn, delivery_id, why):
                        events.append(Event(delivery_id, "failed", None, f"gave up after {row[0]} attempts: {why}"))
                else:
                    conn.execute(
                        "UPDATE letters SET state = 'queued', claimed_at = NULL, not_before = ?, last_error = ? "
                        "WHERE id = ?", (not_before, why, delivery_id))
            self.add_events(conn, events, now)
            _cancel_queued(conn, "campaign_id IN (SELECT id FROM campaigns WHERE state = 'cancelled')", (), now)

    def cancel_orphans(self) -> int:
        """Remove queued letters of cancelled campaigns (e.g. put back by a retry after the cancel)."""
        with self.write() as conn:
            return _cancel_queued(conn, "campaign_id IN (SELECT id FROM campaigns WHERE state = 'cancelled')", (),
                                  time.time())

    # -- Exim log and bounces -----------------------------------------------------------------

    def letter_by_exim_id(self, exim_id: str) -> tuple[int, str] | None:
        """(delivery id, state) of the letter Exim knows as ``exim_id``."""
        return self.conn().execute(
            "SELECT id, state FROM letters WHERE exim_id = ?", (exim_id,)).fetchone()

    def letter_by_token(self, token: str) -> tuple[int, str, str] | None:
        """(delivery id, state, token as the panel wrote it) for a VERP token in any letter case:
        Exim hands local parts on lower-cased."""
        return self.conn().execute(
            "SELECT id, state, token FROM letters WHERE token = ? COLLATE NOCASE ORDER BY token = ? DESC LIMIT 1",
            (token, token)).fetchone()

    def letter_state(self, delivery_id: int) -> str | None:
        row = self.conn().execute("SELECT state FROM letters WHERE id = ?", (delivery_id,)).fetchone()
        return None if row is None else row[0]

    def add_bounce(self, conn: sqlite3.Connection, token: str | None, kind: str, raw: str, spool_name: str) -> bool:
        """Store a piped bounce (inside the caller's transaction); False if that spool file was stored before."""
        if conn.execute("SELECT 1 FROM bounces WHERE spool_name = ?", (spool_name,)).fetchone():
            return False
        conn.execute("INSERT INTO bounces (seq, token, kind, raw, spool_name, at) VALUES (?, ?, ?, ?, ?, ?)",
                     (_take_seqs(conn, 1), token, kind, raw, spool_name, time.time()))
        return True

    def add_warmup_sent(self, counts: Iterable[tuple[tuple[str, str, int], int]]) -> None:
        """Add letters to the warm-up counts ((source IP, provider, day start), letters), on disk before
        this returns: they are written before those letters reach Exim. Days over a week old go."""
        with self.write(durable=True) as conn:
            conn.executemany(
                "INSERT INTO warmup_sent VALUES (?, ?, ?, ?) "
                "ON CONFLICT (source_ip, day_start, provider) DO UPDATE SET sent = sent + excluded.sent",
                [(ip, provider, day_start, n) for (ip, provider, day_start), n in counts])
            conn.execute("DELETE FROM warmup_sent WHERE day_start < ?", (time.time() - 8 * 86400,))

    def warmup_sent(self, source_ip: str, day_start: int) -> dict[str, int]:
        """Letters counted per provider group for that IP's day."""
        return dict(self.conn().execute("SELECT provider, sent FROM warmup_sent WHERE source_ip = ? AND day_start = ?",
                                        (source_ip, day_start)).fetchall())

    def get_state(self, key: str) -> Any:
        row = self.conn().execute("SELECT value FROM agent_state WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    @staticmethod
    def set_state(conn: sqlite3.Connection, key: str, value: Any) -> None:
        conn.execute("INSERT INTO agent_state VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                     (key, json.dumps(value)))


def _statements(script: str) -> Iterator[str]:
    """Split a script into statements (executescript would commit the open transaction)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""


def _take_seqs(conn: sqlite3.Connection, n: int) -> int:
    """Reserve ``n`` consecutive outcome seqs; return the first."""
    last = conn.execute("UPDATE counters SET value = value + ? WHERE name = 'outcome' RETURNING value",
                        (n,)).fetchone()[0]
    return last - n + 1


def _fail(conn: sqlite3.Connection, delivery_id: int, text: str) -> bool:
    return conn.execute(
        "UPDATE letters SET state = 'failed', fields = NULL, claimed_at = NULL, last_error = ? "
        "WHERE id = ? AND state IN ('claimed', 'submitting', 'queued')", (text, delivery_id)).rowcount == 1


def _known_ids(conn: sqlite3.Connection, ids: list[int]) -> set[int]:
    known: set[int] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        known.update(r[0] for r in conn.execute(
            f"SELECT id FROM letters WHERE id IN ({','.join('?' * len(chunk))})", chunk))
    return known


def _recall_states(conn: sqlite3.Connection, ids: list[int]) -> dict[int, str]:
    """What a recall makes of each known letter: recalled, sending, submitted or finished."""
    found: dict[int, str] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        for delivery_id, state, recallable in conn.execute(
                f"SELECT id, state, {_RECALLABLE} FROM letters WHERE id IN ({','.join('?' * len(chunk))})", chunk):
            if recallable:
                found[delivery_id] = "recalled"
            elif state in ("submitted", "failed"):
                found[delivery_id] = "submitted" if state == "submitted" else "finished"
            else:  # claimed, or tried before and waiting: the sender's until it submits or fails
                found[delivery_id] = "sending"
    return found


def _delete_recallable(conn: sqlite3.Connection, ids: list[int]) -> None:
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        conn.execute(f"DELETE FROM letters WHERE {_RECALLABLE} AND id IN ({','.join('?' * len(chunk))})", chunk)


def _cancel_queued(conn: sqlite3.Connection, where: str, params: tuple[Any, ...], now: float) -> int:
    """Delete queued letters matching ``where`` and add a 'cancelled' event for each, in SQL
    (a cancelled campaign may hold 100,000 letters; none of them pass through Python)."""
    first = conn.execute("SELECT value FROM counters WHERE name = 'outcome'").fetchone()[0] + 1
    n = conn.execute(
        "INSERT INTO events (seq, delivery_id, status, code, text, at) "
        f"SELECT ? - 1 + row_number() OVER (ORDER BY id), id, 'cancelled', NULL, 'campaign was cancelled', ? "
        f"FROM letters WHERE state = 'queued' AND {where}", (first, now, *params)).rowcount
    if n:
        conn.execute("UPDATE counters SET value = value + ? WHERE name = 'outcome'", (n,))
        conn.execute(f"DELETE FROM letters WHERE state = 'queued' AND {where}", params)
    return n
