"""The apps the fuzz run sends its requests to, in-process through Flask's test client, and the
checks made on every reply: no status 500, no traceback text in the body, and a refused
request (4xx) changes nothing in the database.

"Changes nothing" is counted exactly and cheaply by SQLite triggers the run adds to its own copy
of each database: every INSERT and DELETE, and every UPDATE that changes a value, adds one to a
counter row; the counter is read before and after each request on a connection of our own.
Left out, because they are the bookkeeping of a request that was let in rather than its effect:
the panel's token bucket (api_rate_buckets) and a token's last_used_at; on the agent, the nonce
an opened message leaves behind (so a replay is refused) and the pruning of expired ones. A
refusal before the message was opened (403) must not even leave a nonce.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import sqlite3
import time
import traceback
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cryptography.fernet import Fernet
from flask import Flask, got_request_exception
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from .strategies import AgentRequest, PanelIds, PanelRequest, RawJson, agent_request, build_value_pool, panel_request

TRACEBACK_RE = re.compile(
    r'Traceback \(most recent call last\)|File \\?"[^"\\]*\\?", line|\bsqlalchemy\.|psycopg|'
    r"\b(?:[A-Z][a-z]+)*(?:Error|Exception|Warning)(?:\\?')?: |\bline \d+, in \w")

COUNTER = "fuzz_changes"


@dataclass
class Outcome:
    route: str
    status: int
    problems: tuple[str, ...]  # "status_500", "traceback", "db_changed_on_refusal"
    detail: str = ""


def traceback_text(body: bytes) -> str | None:
    """The first bit of traceback-looking text in a reply body, or None."""
    match = TRACEBACK_RE.search(body.decode("utf-8", "replace"))
    return match.group(0) if match else None


def install_change_counter(db_path: Path, skip: dict[str, set[str] | None]) -> None:
    """Triggers adding 1 to fuzz_changes.n for every row written to any table (`skip`: table ->
    columns whose change is not counted, None for the whole table); `nonces` counts separately."""
    conn = sqlite3.connect(db_path)
    try:
        conn.execute(f"CREATE TABLE {COUNTER} (n INTEGER NOT NULL, nonces INTEGER NOT NULL)")
        conn.execute(f"INSERT INTO {COUNTER} VALUES (0, 0)")
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                             "AND name NOT LIKE 'sqlite_%' AND name != ?", (COUNTER,))]
        for table in tables:
            if table in skip and skip[table] is None:
                continue
            column = "nonces" if table == "nonces" else "n"
            bump = f'BEGIN UPDATE {COUNTER} SET {column} = {column} + 1; END'
            skipped = skip.get(table) or ()
            columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")') if r[1] not in skipped]
            changed = " OR ".join(f'OLD."{c}" IS NOT NEW."{c}"' for c in columns) or "0"
            conn.execute(f'CREATE TRIGGER "fuzz_ins_{table}" AFTER INSERT ON "{table}" {bump}')
            if table != "nonces":  # expired nonces are pruned by whichever request comes next
                conn.execute(f'CREATE TRIGGER "fuzz_del_{table}" AFTER DELETE ON "{table}" {bump}')
            conn.execute(f'CREATE TRIGGER "fuzz_upd_{table}" AFTER UPDATE ON "{table}" WHEN {changed} {bump}')
        conn.commit()
    finally:
        conn.close()


class ChangeCounter:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.conn: sqlite3.Connection | None = None

    def read(self) -> tuple[int, int]:
        if self.conn is None:
            self.conn = sqlite3.connect(self.db_path, isolation_level=None)
        return self.conn.execute(f"SELECT n, nonces FROM {COUNTER}").fetchone()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class SqliteStore:
    """The panel's database as an SQLite file: its counter, and a pristine copy to go back to."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "panel.db"
        self.pristine = workdir / "panel.pristine.db"
        self.url = f"sqlite:///{self.path}"
        self.counter = ChangeCounter(self.path)

    def prepare(self, skip: dict[str, set[str] | None]) -> None:
        """Once the app's connections are closed: add the counter, keep the seeded copy."""
        install_change_counter(self.path, skip)
        shutil.copyfile(self.path, self.pristine)

    def read(self) -> tuple[int, int]:
        return self.counter.read()

    def restore(self) -> None:
        self.counter.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(self.pristine, self.path)

    def close(self) -> None:
        self.counter.close()


PG_BUMP = """
CREATE TABLE fuzz_changes (n bigint NOT NULL, nonces bigint NOT NULL);
INSERT INTO fuzz_changes VALUES (0, 0);
CREATE FUNCTION fuzz_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND to_jsonb(NEW) - TG_ARGV = to_jsonb(OLD) - TG_ARGV THEN
        RETURN NULL;  -- only the skipped columns changed, or nothing did
    END IF;
    UPDATE fuzz_changes SET n = n + 1;
    RETURN NULL;
END $$;
"""


class PostgresStore:
    """The panel's database on a PostgreSQL server (devserver/postgres.py): the same counter made
    by a PL/pgSQL trigger on every table, and a pristine copy kept as a template database."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.name = f"fuzz_{secrets.token_hex(4)}"
        self.pristine = self.name + "_pristine"
        self.url = server.create_database(self.name)
        self.conn: Any = None

    def prepare(self, skip: dict[str, set[str] | None]) -> None:
        from psycopg import sql

        with self.server.connect(self.name) as conn:
            conn.execute(PG_BUMP)
            tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                                 "AND tablename <> 'fuzz_changes'")]
            for table in tables:
                if table in skip and skip[table] is None:
                    continue
                args = sql.SQL(", ").join(sql.Literal(c) for c in sorted(skip.get(table) or {"-"}))
                conn.execute(sql.SQL("CREATE TRIGGER fuzz_bump AFTER INSERT OR UPDATE OR DELETE ON {} "
                                     "FOR EACH ROW EXECUTE FUNCTION fuzz_bump({})").format(sql.Identifier(table), args))
        self.server.create_database(self.pristine, self.name)

    def read(self) -> tuple[int, int]:
        if self.conn is None:
            self.conn = self.server.connect(self.name)
        return self.conn.execute("SELECT n, nonces FROM fuzz_changes").fetchone()

    def restore(self) -> None:
        self.close()
        self.server.drop_database(self.name)
        self.server.create_database(self.name, self.pristine)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def drop(self) -> None:
        self.close()
        self.server.drop_database(self.name)
        self.server.drop_database(self.pristine)


class _ExceptionLog:
    """Remembers the last exception an app raised while handling a request (for the report)."""

    def __init__(self, app: Flask) -> None:
        self.last: str | None = None
        got_request_exception.connect(self._record, app, weak=False)

    def _record(self, sender, exception: BaseException, **_extra) -> None:
        self.last = "".join(traceback.format_exception(exception)[-6:])[-1500:]

    def take(self) -> str | None:
        last, self.last = self.last, None
        return last


def _judge(route: str, status: int, body: bytes, before: tuple[int, int], after: tuple[int, int],
           nonce_allowed: bool, exception: str | None) -> Outcome:
    problems, detail = [], ""
    if status >= 500 and status != 502 or exception:  # 502: the DNS server refused, said in plain words
        problems.append("status_500")
        detail = exception or body[:300].decode("utf-8", "replace")
    found = traceback_text(body)
    if found:
        problems.append("traceback")
        detail = detail or f"{found!r} in {body[:300]!r}"
    if 400 <= status < 500 and (after[0] != before[0] or after[1] - before[1] > (1 if nonce_allowed else 0)):
        problems.append("db_changed_on_refusal")
        detail = detail or f"rows written {after[0] - before[0]}, nonces {after[1] - before[1]}: {body[:200]!r}"
    return Outcome(route, status, tuple(problems), detail)


# -- the panel -------------------------------------------------------------------------------------

PANEL_SKIP = {"api_rate_buckets": None, "api_tokens": {"last_used_at"}}


class PanelTarget:
    """The panel on a migrated SQLite database of its own under `workdir`, seeded with a user who
    owns lists (with recipients), a campaign, a server, a domain and suppressions, and another user
    who owns one of each. `reset()` puts the seeded database back (the run's own creations make
    pages longer and longer otherwise)."""

    def __init__(self, workdir: Path, postgres: Any = None) -> None:
        """`postgres`: a devserver.postgres.PostgresServer to use instead of an SQLite file."""
        from flask_migrate import upgrade

        from panel import create_app
        from panel.extensions import db
        from tests.panel.conftest import preserved_logging

        workdir.mkdir(parents=True, exist_ok=True)
        self.store = PostgresStore(postgres) if postgres is not None else SqliteStore(workdir)
        self.app = create_app({
            "TESTING": False, "SECRET_KEY": secrets.token_hex(16), "SQLALCHEMY_DATABASE_URI": self.store.url,
            "PUBLIC_URL": "http://panel.example.com", "BOUNCE_DOMAIN": "bounces.example.com",
            "SECRETS_KEY": Fernet.generate_key().decode(), "API_RATE": 1e9, "API_BURST": 10**9,
            # the domains' DNS server is a closed port on loopback: refused at once, never a wait
            "ALLOWED_HOST_NETWORKS": "127.0.0.0/8",
        })
        with self.app.app_context(), preserved_logging():
            upgrade()
            self.ids, self.token, self.other_token = self._seed()
        self._close_connections()
        self.store.prepare(PANEL_SKIP)
        self.exceptions = _ExceptionLog(self.app)
        self.client = self.app.test_client()
        self.rules = api_rules(self.app)

    def _close_connections(self) -> None:
        from panel.extensions import db
        from panel.services.tracking import dispose_counting_engine

        with self.app.app_context():
            db.session.remove()
            db.engine.dispose()
            dispose_counting_engine(self.app)

    def _seed(self) -> tuple[PanelIds, str, str]:
        from panel.extensions import db
        from panel.services.campaigns import CampaignInput, save_campaign
        from panel.services.csv_import import import_records
        from panel.services.domains import DomainInput, add_domain
        from panel.services.lists import create_list
        from panel.services.servers import SourceIP, register_server
        from panel.services.suppressions import add_suppression
        from panel.services.users import create_api_token, create_user

        def one_of_each(email: str, n: int) -> dict[str, Any]:
            user = create_user(email, "correct horse battery")
            lists = [create_list(user, f"List {i}") for i in range(2)]
            import_records(lists[0], [{"email": f"r{i}@example.org", "name": f"R {i}"} for i in range(5)])
            server = register_server(user, name=f"worker {n}", host=f"worker{n}.example.net", port=8443,
                                     agent_key=Fernet.generate_key().decode(), fingerprint="ab" * 32,
                                     ips=[SourceIP(ip=f"192.0.2.{10 + n}", helo=f"mx{n}.example.net")])
            domain = add_domain(user, DomainInput(name=f"d{n}.example", dns_host="127.0.0.1", dns_port=1,
                                                  tsig_name="k", tsig_secret="c2VjcmV0"))
            db.session.flush()
            campaign = save_campaign(user, CampaignInput(
                name="Seeded", subject="Hi {{ name }}", from_email="news@example.com", from_name="News", reply_to=None,
                text="Hello {{ name }}\n{{ unsubscribe_url }}\n", html=None, encoding="quoted-printable",
                lists=[lists[0].id], servers=[server.id]))
            for i in range(3):
                add_suppression(user, f"s{i}@example.org", "manual")
            db.session.flush()
            return {"user": user, "lists": tuple(x.id for x in lists), "campaign": campaign.id, "server": server.id,
                    "domain": domain.id, "ip": f"192.0.2.{10 + n}"}

        mine, theirs = one_of_each("fuzz@example.com", 1), one_of_each("other@example.com", 2)
        token, other_token = create_api_token(mine["user"]), create_api_token(theirs["user"])
        db.session.commit()
        ids = PanelIds(
            lists=mine["lists"], campaigns=(mine["campaign"],), servers=(mine["server"],), domains=(mine["domain"],),
            recipients=("r0@example.org", "R1@EXAMPLE.ORG", "r2@example.org"),
            suppressions=("s0@example.org", "s1@example.org"),
            others=(*theirs["lists"], theirs["campaign"], theirs["server"], theirs["domain"]), server_ips=(mine["ip"],))
        return ids, token, other_token

    def strategy(self) -> st.SearchStrategy[PanelRequest]:
        return panel_request(self.rules, self.ids, self.token, self.other_token)

    def send(self, request: PanelRequest) -> Outcome:
        headers = {} if request.auth is None else {"Authorization": request.auth}
        before = self.store.read()
        response = self.client.open(request.path, method=request.method, data=request.body_bytes(), headers=headers,
                                    content_type=request.content_type)
        try:
            body = response.get_data()
        finally:
            response.close()
        return _judge(request.route, response.status_code, body, before, self.store.read(), False,
                      self.exceptions.take())

    def reset(self) -> None:
        self._close_connections()
        self.store.restore()

    def close(self) -> None:
        self._close_connections()
        self.store.close()
        if isinstance(self.store, PostgresStore):
            self.store.drop()


def api_rules(app: Flask) -> list[tuple[str, str, tuple[tuple[str, str, str], ...]]]:
    """Every route under /api/v1 as (method, rule, its variables as (converter, name, placeholder))."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        params = tuple((m.group(1) or "default", m.group(2), m.group(0))
                       for m in re.finditer(r"<(?:([^:<>]+):)?([^<>]+)>", rule.rule))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            found.append((method, rule.rule, params))
    return sorted(found)


# -- the agent ---------------------------------------------------------------------------------------

AGENT_SOURCE_IP = "127.0.0.2"


class AgentTarget:
    """The agent's Flask app with its own data directory (key, queue DB) under `workdir`."""

    def __init__(self, workdir: Path) -> None:
        from worker_agent.api import create_app
        from worker_agent.config import load_config
        from worker_agent.setup_node import init_node

        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "agent.json"
        config_path.write_text(json.dumps({
            "data_dir": str(workdir / "data"), "exim_mainlog": str(workdir / "mainlog"), "listen": "127.0.0.1:0",
            "hostname": "worker.test", "source_ips": [AGENT_SOURCE_IP]}))
        self.config = load_config(config_path)
        init_node(self.config)
        self.key = self.config.read_key()
        self.other_key = Fernet.generate_key()
        self.app = create_app(self.config)
        install_change_counter(self.config.queue_db, {})
        self.counter = ChangeCounter(self.config.queue_db)
        self.exceptions = _ExceptionLog(self.app)
        self.client = self.app.test_client()
        self.paths = sorted(r.rule for r in self.app.url_map.iter_rules() if r.rule.startswith("/v1/"))
        self.last_sealed: dict[str, bytes] = {}

    def strategy(self) -> st.SearchStrategy[AgentRequest]:
        return agent_request(self.paths, AGENT_SOURCE_IP)

    @staticmethod
    def _envelope_text(path: str, data: Any) -> str:
        inner = data.text if isinstance(data, RawJson) else json.dumps(data)
        return f'{{"path":{json.dumps(path)},"nonce":"{secrets.token_hex(16)}","data":{inner}}}'

    def body_of(self, request: AgentRequest) -> bytes:
        now, path, kind = int(time.time()), request.path, request.kind
        fernet = Fernet(self.other_key if kind == "wrong_key" else self.key)

        def sealed(text: str, at: int = now) -> bytes:
            return fernet.encrypt_at_time(zlib.compress(text.encode("utf-8", "surrogatepass"), 1), at)

        if kind in ("garbage", "huge", "empty"):
            return request.raw if kind == "garbage" else b"A" * request.size
        if kind == "replay" and path in self.last_sealed:
            return self.last_sealed[path]
        if kind == "bad_envelope":
            return sealed(json.dumps(request.envelope))
        if kind == "not_zlib":
            return fernet.encrypt_at_time(self._envelope_text(path, request.data).encode("utf-8", "surrogatepass"), now)
        if kind == "zlib_not_json":
            return fernet.encrypt_at_time(zlib.compress(request.raw), now)
        if kind == "inflating":
            return sealed(self._envelope_text(path, "a" * request.size))
        target = "/v1/elsewhere" if kind == "wrong_path" else path
        body = sealed(self._envelope_text(target, request.data), now + request.offset)
        return body[:len(body) // 2] if kind == "truncated" else body

    def send(self, request: AgentRequest) -> Outcome:
        from worker_agent import protocol

        body = self.body_of(request)
        before = self.counter.read()
        response = self.client.open(request.path, method=request.method, data=body,
                                    headers={"Content-Type": protocol.CONTENT_TYPE})
        reply, status = response.get_data(), response.status_code
        response.close()
        after = self.counter.read()
        opened = False
        if response.content_type == protocol.CONTENT_TYPE:
            try:  # a sealed reply: what matters is the text inside
                reply = json.dumps(protocol.unseal(self.key, request.path, reply).data).encode()
                opened = True
            except protocol.ProtocolError:
                pass
        if opened and request.kind == "sealed" and status == 200:
            self.last_sealed[request.path] = body
        return _judge(request.route, status, reply, before, after, opened, self.exceptions.take())

    def close(self) -> None:
        self.counter.close()


# -- the run ---------------------------------------------------------------------------------------------

@dataclass
class Tally:
    requests: int = 0
    status_500: int = 0
    tracebacks: int = 0
    db_changed_on_refusal: int = 0

    def __post_init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.routes: Counter[str] = Counter()

    def add(self, outcome: Outcome) -> None:
        self.requests += 1
        self.statuses[outcome.status] += 1
        self.routes[outcome.route.partition(" ")[2]] += 1
        self.status_500 += "status_500" in outcome.problems
        self.tracebacks += "traceback" in outcome.problems
        self.db_changed_on_refusal += "db_changed_on_refusal" in outcome.problems

    def headline(self) -> dict[str, Any]:
        return {"requests": self.requests, "status_500": self.status_500, "tracebacks": self.tracebacks,
                "db_changed_on_refusal": self.db_changed_on_refusal}


class Fuzzer:
    """Sends `count` drawn requests, a share of them to the panel and the rest to the agent, and
    calls `report(request, outcome)` for each (it may raise to stop the run: the test does)."""

    def __init__(self, workdir: Path, panel_share: float = 0.6, reset_every: int = 500, pool: int = 1000,
                 postgres: Any = None) -> None:
        build_value_pool(pool)
        logging.getLogger("worker_agent").setLevel(logging.ERROR)  # each refusal is logged: 100,000 lines
        self.panel = PanelTarget(workdir / "panel", postgres)
        self.agent = AgentTarget(workdir / "agent")
        self.panel_share = panel_share
        self.reset_every = reset_every
        self.tally = Tally()

    def strategy(self) -> st.SearchStrategy[PanelRequest | AgentRequest]:
        weight = max(1, round(self.panel_share * 10))
        panel, agent = self.panel.strategy(), self.agent.strategy()  # made once: making one costs ~10 ms
        return st.sampled_from([True] * weight + [False] * (10 - weight)).flatmap(
            lambda to_panel: panel if to_panel else agent)

    def send(self, request: PanelRequest | AgentRequest) -> Outcome:
        if self.tally.requests and self.tally.requests % self.reset_every == 0:
            self.panel.reset()
        outcome = (self.panel if isinstance(request, PanelRequest) else self.agent).send(request)
        self.tally.add(outcome)
        return outcome

    def run(self, count: int, report: Callable[[Any, Outcome], None], *, seed: int = 0, shrink: bool = False,
            batch: int = 1) -> Tally:
        """Send `count` more requests, `batch` to one Hypothesis example (the engine's own cost, ~1 ms
        an example, then counts once for them all). Hypothesis may end a round short of its
        max_examples: rounds go on, the next with the next seed, until they are all sent."""
        target = self.tally.requests + count
        requests = st.lists(self.strategy(), min_size=batch, max_size=batch)
        while self.tally.requests < target:
            @settings(max_examples=-(-(target - self.tally.requests) // batch), database=None, deadline=None,
                      verbosity=Verbosity.quiet, phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(requests)
            def some(drawn: list[PanelRequest | AgentRequest]) -> None:
                for request in drawn[:target - self.tally.requests]:
                    report(request, self.send(request))

            hypothesis_seed(seed)(some)()
            seed += 1
        return self.tally

    def close(self) -> None:
        self.panel.close()
        self.agent.close()
