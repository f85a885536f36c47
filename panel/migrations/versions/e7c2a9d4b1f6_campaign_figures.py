"""campaign figures: per-minute outcomes, breakdowns by provider / domain / server / IP / reason

The campaign page's graph and tables (issue 10 point 1) read a few kept rows, never the letters:

- campaign_minutes, by the minute Exim logged each outcome (delivery_events.created_at), plus
  clicks and opens a minute: triggers on delivery_events, clicks and opens insert.
- campaign_breakdowns, a letter handed to Exim (sent, delivered, deferred, failed) counted under
  its provider, recipient domain, server, source IP and bounce reason: triggers on deliveries
  (insert, and updates of its state, bounce, unsubscribe, server or IP), clicks.
- the provider of a letter: its recipient domain looked up in a table of well-known mailbox
  domains (PROVIDER_DOMAINS, a copy of models/campaign_figures.py's), else "other".

On SQLite row triggers, each one statement (one grouped upsert) and only for letters in a counted
state: a start's pending letters and a push cost nothing. On PostgreSQL statement triggers over
the transition tables, one grouped upsert per statement in (campaign, dim, key) order, beside
(not inside) campaign_counts' own. Deletes subtract nothing: the figures outlive the letters.

Revision ID: e7c2a9d4b1f6
Revises: b3d7f9a1c5e4
Create Date: 2026-12-04 15:20:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e7c2a9d4b1f6'
down_revision = 'b3d7f9a1c5e4'
branch_labels = None
depends_on = None

# Well-known mailbox domains and their provider, named as worker_agent/providers.py names the
# groups it shapes by (which it finds by MX: a company domain hosted at Google is "other" here).
PROVIDER_DOMAINS = {
    "google": ("gmail.com", "googlemail.com"),
    "microsoft": ("hotmail.com", "hotmail.co.uk", "hotmail.fr", "hotmail.de", "hotmail.it", "hotmail.es",
                  "outlook.com", "outlook.fr", "outlook.de", "live.com", "live.co.uk", "live.fr", "live.de",
                  "msn.com", "passport.com"),
    "yahoo": ("yahoo.com", "yahoo.co.uk", "yahoo.fr", "yahoo.de", "yahoo.it", "yahoo.es", "yahoo.co.jp",
              "yahoo.com.br", "ymail.com", "rocketmail.com", "aol.com", "aim.com", "aol.co.uk"),
    "apple": ("icloud.com", "me.com", "mac.com"),
    "mailru": ("mail.ru", "bk.ru", "list.ru", "inbox.ru", "internet.ru"),
    "yandex": ("yandex.ru", "yandex.com", "ya.ru", "yandex.by", "yandex.kz", "yandex.ua"),
    "gmx": ("gmx.net", "gmx.de", "gmx.com", "gmx.at", "gmx.ch", "web.de", "mail.com"),
    "comcast": ("comcast.net",),
    "zoho": ("zoho.com", "zohomail.com", "zohomail.eu"),
    "proton": ("protonmail.com", "proton.me", "pm.me", "protonmail.ch"),
    "fastmail": ("fastmail.com", "fastmail.fm"),
    "t-online": ("t-online.de",),
}

COUNTED = ('sent', 'delivered', 'deferred', 'failed')


def _counted(r):
    """A letter handed to Exim; ORs, not an IN list (SQLite makes a table of one on every trigger run)."""
    return "(" + " OR ".join(f"{r}.status = '{state}'" for state in COUNTED) + ")"
_BREAKDOWN_COLUMNS = ("sent", "delivered", "deferred", "failed", "bounced_hard", "bounced_soft", "complaints",
                      "unsubscribed", "clicks")
_MINUTE_COLUMNS = ("sent", "delivered", "deferred", "failed", "clicks", "opens")


def _domain(r, dialect):
    if dialect == 'postgresql':
        return f"lower(split_part({r}.email, '@', 2))"
    return f"lower(substr({r}.email, instr({r}.email, '@') + 1))"


def _provider(domain):
    """The provider of a domain expression: a CASE over the table above, in the trigger itself (no
    table to read, and nothing a test's emptied database can lose)."""
    # A simple CASE (one comparison a WHEN): an IN list of constants made SQLite build a lookup
    # table on every trigger run, which cost ten times the rest of it.
    cases = " ".join(f"WHEN '{name}' THEN '{provider}'" for provider, names in PROVIDER_DOMAINS.items()
                     for name in names)
    return f"(CASE {domain} {cases} ELSE 'other' END)"


def _keys(r, dialect):
    """(dimension, key expression) of a letter row alias; a NULL key: not counted under it."""
    domain = _domain(r, dialect)
    return (
        ("provider", _provider(domain)),
        ("domain", domain),
        ("server", f"CAST({r}.server_id AS VARCHAR(12))"),
        ("ip", f"{r}.source_ip"),
        ("reason", f"{r}.bounce_reason"),
    )


def _letter_rows(r, sign, dialect, source=""):
    """A letter's contribution (times sign) to each of its rows, if it is in a counted state."""
    values = {
        "sent": sign,
        "delivered": f"CASE WHEN {r}.status = 'delivered' THEN {sign} ELSE 0 END",
        "deferred": f"CASE WHEN {r}.status = 'deferred' THEN {sign} ELSE 0 END",
        "failed": f"CASE WHEN {r}.status = 'failed' THEN {sign} ELSE 0 END",
        "bounced_hard": f"CASE WHEN {r}.bounce = 'hard' THEN {sign} ELSE 0 END",
        "bounced_soft": f"CASE WHEN {r}.bounce = 'soft' THEN {sign} ELSE 0 END",
        "complaints": "0",
        "unsubscribed": f"CASE WHEN {r}.unsubscribed_at IS NOT NULL THEN {sign} ELSE 0 END",
        "clicks": "0",
    }
    columns = ", ".join(f"{v} AS {c}" for c, v in values.items())
    return " UNION ALL ".join(
        f"SELECT {r}.campaign_id AS campaign_id, '{dim}' AS dim, {key} AS key, {columns} {source} "
        f"WHERE {_counted(r)} AND {key} IS NOT NULL"
        for dim, key in _keys(r, dialect)
    )


def _click_rows(dialect, source):
    """A click's one to each row of its letter (c: the click, d: its letter)."""
    columns = ", ".join(f"{1 if c == 'clicks' else 0} AS {c}" for c in _BREAKDOWN_COLUMNS)
    return " UNION ALL ".join(
        f"SELECT d.campaign_id AS campaign_id, '{dim}' AS dim, {key} AS key, {columns} {source} WHERE {key} IS NOT NULL"
        for dim, key in _keys("d", dialect)
    )


def _upsert_breakdowns(rows, table_prefix):
    sums = ", ".join(f"sum({c})" for c in _BREAKDOWN_COLUMNS)
    nonzero = " OR ".join(f"sum({c}) <> 0" for c in _BREAKDOWN_COLUMNS)
    sets = ", ".join(f"{c} = {table_prefix}{c} + excluded.{c}" for c in _BREAKDOWN_COLUMNS)
    return (f"INSERT INTO campaign_breakdowns (campaign_id, dim, key, {', '.join(_BREAKDOWN_COLUMNS)}) "
            f"SELECT campaign_id, dim, key, {sums} FROM ({rows}) AS c WHERE 1 = 1 GROUP BY campaign_id, dim, key "
            f"HAVING {nonzero} ORDER BY campaign_id, dim, key "
            f"ON CONFLICT (campaign_id, dim, key) DO UPDATE SET {sets}")


def _upsert_minutes(select_rows, table_prefix):
    sets = ", ".join(f"{c} = {table_prefix}{c} + excluded.{c}" for c in _MINUTE_COLUMNS)
    return (f"INSERT INTO campaign_minutes (campaign_id, minute, {', '.join(_MINUTE_COLUMNS)}) {select_rows} "
            f"ON CONFLICT (campaign_id, minute) DO UPDATE SET {sets}")


def _minute_sums(kinds):
    """The six sums of a minute's rows; `kinds` maps a column to the expression it counts."""
    return ", ".join(f"sum({kinds[c]})" if c in kinds else "0" for c in _MINUTE_COLUMNS)


def _status_kinds(r):
    return {c: f"CASE WHEN {r}.status = '{c}' THEN 1 ELSE 0 END" for c in ("sent", "delivered", "deferred", "failed")}


_SQLITE_MINUTE = "CAST(strftime('%s', substr({r}.created_at, 1, 16)) AS INTEGER)"
_PG_MINUTE = "CAST(floor(extract(epoch FROM {r}.created_at) / 60) * 60 AS BIGINT)"
_LETTER_COLUMNS = ("status", "bounce", "unsubscribed_at", "server_id", "source_ip", "bounce_reason")
SQLITE_TRIGGERS = ("deliveries_figures_insert", "deliveries_figures_update", "delivery_events_figures",
                   "clicks_figures", "opens_figures")


def _sqlite_statements():
    d = "sqlite"
    yield (f"CREATE TRIGGER deliveries_figures_insert AFTER INSERT ON deliveries WHEN {_counted('NEW')} "
           f"BEGIN {_upsert_breakdowns(_letter_rows('NEW', 1, d), '')}; END")
    changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _LETTER_COLUMNS if c != "unsubscribed_at")
    changed += " OR (OLD.unsubscribed_at IS NULL) <> (NEW.unsubscribed_at IS NULL)"
    rows = _letter_rows("OLD", -1, d) + " UNION ALL " + _letter_rows("NEW", 1, d)
    yield (f"CREATE TRIGGER deliveries_figures_update AFTER UPDATE OF {', '.join(_LETTER_COLUMNS)} ON deliveries "
           f"WHEN ({_counted('OLD')} OR {_counted('NEW')}) AND ({changed}) "
           f"BEGIN {_upsert_breakdowns(rows, '')}; END")
    minute = _SQLITE_MINUTE.format(r="NEW")
    events = (f"SELECT d.campaign_id, {minute}, {_minute_sums(_status_kinds('NEW'))} FROM deliveries d "
              f"WHERE d.id = NEW.delivery_id GROUP BY d.campaign_id")
    yield (f"CREATE TRIGGER delivery_events_figures AFTER INSERT ON delivery_events WHEN {_counted('NEW')} "
           f"BEGIN {_upsert_minutes(events, '')}; END")
    clicks = f"SELECT NEW.campaign_id, {minute}, {_minute_sums({'clicks': '1'})} WHERE 1 = 1"
    yield (f"CREATE TRIGGER clicks_figures AFTER INSERT ON clicks BEGIN {_upsert_minutes(clicks, '')}; "
           f"{_upsert_breakdowns(_click_rows(d, 'FROM deliveries d WHERE d.id = NEW.delivery_id AND'), '')}; END"
           .replace("AND WHERE", "AND"))
    opens = f"SELECT NEW.campaign_id, {minute}, {_minute_sums({'opens': '1'})} WHERE 1 = 1"
    yield f"CREATE TRIGGER opens_figures AFTER INSERT ON opens BEGIN {_upsert_minutes(opens, '')}; END"


_PG_FUNCTIONS = {
    "deliveries_figures": """
CREATE FUNCTION deliveries_figures() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        {inserted};
    ELSE
        {updated};
    END IF;
    RETURN NULL;
END $$""",
    "delivery_events_figures": """
CREATE FUNCTION delivery_events_figures() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {events};
    RETURN NULL;
END $$""",
    "clicks_figures": """
CREATE FUNCTION clicks_figures() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {minutes};
    {breakdowns};
    RETURN NULL;
END $$""",
    "opens_figures": """
CREATE FUNCTION opens_figures() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {minutes};
    RETURN NULL;
END $$""",
}


def _pg_statements():
    d = "postgresql"
    b, m = "campaign_breakdowns.", "campaign_minutes."
    inserted = _upsert_breakdowns(_letter_rows("r", 1, d, "FROM new_rows r"), b)
    updated = _upsert_breakdowns(_letter_rows("r", -1, d, "FROM old_rows r") + " UNION ALL "
                                 + _letter_rows("r", 1, d, "FROM new_rows r"), b)
    yield _PG_FUNCTIONS["deliveries_figures"].format(inserted=inserted, updated=updated)
    minute = _PG_MINUTE.format(r="e")
    events = (f"SELECT d.campaign_id, {minute} AS minute, {_minute_sums(_status_kinds('e'))} "
              f"FROM new_rows e JOIN deliveries d ON d.id = e.delivery_id WHERE {_counted('e')} "
              f"GROUP BY 1, 2 ORDER BY 1, 2")
    yield _PG_FUNCTIONS["delivery_events_figures"].format(events=_upsert_minutes(events, m))
    minute = _PG_MINUTE.format(r="c")
    clicks = (f"SELECT c.campaign_id, {minute} AS minute, {_minute_sums({'clicks': '1'})} FROM new_rows c "
              "GROUP BY 1, 2 ORDER BY 1, 2")
    breakdowns = _upsert_breakdowns(_click_rows(d, "FROM new_rows c JOIN deliveries d ON d.id = c.delivery_id"), b)
    yield _PG_FUNCTIONS["clicks_figures"].format(minutes=_upsert_minutes(clicks, m), breakdowns=breakdowns)
    minute = _PG_MINUTE.format(r="o")
    opens = (f"SELECT o.campaign_id, {minute} AS minute, {_minute_sums({'opens': '1'})} FROM new_rows o "
             "GROUP BY 1, 2 ORDER BY 1, 2")
    yield _PG_FUNCTIONS["opens_figures"].format(minutes=_upsert_minutes(opens, m))
    yield ("CREATE TRIGGER deliveries_figures_insert AFTER INSERT ON deliveries REFERENCING NEW TABLE AS new_rows "
           "FOR EACH STATEMENT EXECUTE FUNCTION deliveries_figures()")
    yield ("CREATE TRIGGER deliveries_figures_update AFTER UPDATE ON deliveries "
           "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION deliveries_figures()")
    for table in ("delivery_events", "clicks", "opens"):
        yield (f"CREATE TRIGGER {table}_figures AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows "
               f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_figures()")


def _backfill(dialect):
    """What the letters, events, clicks and opens already there count."""
    op.execute(_upsert_breakdowns(_letter_rows("r", 1, dialect, "FROM deliveries r"),
                                  "campaign_breakdowns." if dialect == "postgresql" else ""))
    op.execute(_upsert_breakdowns(_click_rows(dialect, "FROM clicks c JOIN deliveries d ON d.id = c.delivery_id"),
                                  "campaign_breakdowns." if dialect == "postgresql" else ""))
    minute = (_PG_MINUTE if dialect == "postgresql" else _SQLITE_MINUTE)
    prefix = "campaign_minutes." if dialect == "postgresql" else ""
    e, c, o = minute.format(r="e"), minute.format(r="c"), minute.format(r="o")
    op.execute(_upsert_minutes(f"SELECT d.campaign_id, {e}, {_minute_sums(_status_kinds('e'))} FROM delivery_events e "
                               f"JOIN deliveries d ON d.id = e.delivery_id WHERE {_counted('e')} GROUP BY 1, 2",
                               prefix))
    op.execute(_upsert_minutes(f"SELECT c.campaign_id, {c}, {_minute_sums({'clicks': '1'})} FROM clicks c "
                               "WHERE 1 = 1 GROUP BY 1, 2", prefix))
    op.execute(_upsert_minutes(f"SELECT o.campaign_id, {o}, {_minute_sums({'opens': '1'})} FROM opens o "
                               "WHERE 1 = 1 GROUP BY 1, 2", prefix))


def upgrade():
    counter = lambda name: sa.Column(name, sa.BigInteger(), nullable=False)  # noqa: E731
    op.create_table('campaign_minutes',
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('minute', sa.BigInteger(), autoincrement=False, nullable=False),
    *[counter(c) for c in _MINUTE_COLUMNS],
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_campaign_minutes_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('campaign_id', 'minute', name=op.f('pk_campaign_minutes'))
    )
    op.create_table('campaign_breakdowns',
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('dim', sa.String(length=10), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    *[counter(c) for c in _BREAKDOWN_COLUMNS],
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_campaign_breakdowns_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('campaign_id', 'dim', 'key', name=op.f('pk_campaign_breakdowns'))
    )
    dialect = op.get_bind().dialect.name
    _backfill(dialect)
    for statement in (_pg_statements() if dialect == 'postgresql' else _sqlite_statements()):
        op.execute(statement)


def downgrade():
    if op.get_bind().dialect.name == 'postgresql':
        for table in ("deliveries", "delivery_events", "clicks", "opens"):
            kinds = ("insert", "update") if table == "deliveries" else ("",)
            for kind in kinds:
                op.execute(f"DROP TRIGGER {table}_figures{'_' + kind if kind else ''} ON {table}")
            op.execute(f"DROP FUNCTION {table}_figures()")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table('campaign_breakdowns')
    op.drop_table('campaign_minutes')
