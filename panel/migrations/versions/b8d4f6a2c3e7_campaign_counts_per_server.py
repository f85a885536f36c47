"""campaign counts per server: `server:<id>:<state>` kept by the same triggers

The campaign and server pages show each server's letters by state; the triggers on deliveries now
also count a letter under its server (once it has one) and move it when its server changes
(taken by a server, given back by failover). The triggers are made anew with one more count.

Revision ID: b8d4f6a2c3e7
Revises: a7c3e5f9b1d2
Create Date: 2026-12-04 10:40:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = 'b8d4f6a2c3e7'
down_revision = 'a7c3e5f9b1d2'
branch_labels = None
depends_on = None

# (name expression, condition) of each count a letter adds to, over a row alias.
_BEFORE = (
    ("'status:' || {r}.status", "TRUE"),
    ("'bounce:' || {r}.bounce", "{r}.bounce IS NOT NULL"),
    ("'unsubscribed'", "{r}.unsubscribed_at IS NOT NULL"),
)
_AFTER = _BEFORE + (
    ("'server:' || CAST({r}.server_id AS VARCHAR(12)) || ':' || {r}.status", "{r}.server_id IS NOT NULL"),
)

_UPSERT_SQLITE = ("INSERT INTO campaign_counts (campaign_id, name, n) SELECT NEW.campaign_id, {name}, 1 WHERE {cond} "
                  "ON CONFLICT (campaign_id, name) DO UPDATE SET n = n + 1;")
_SUBTRACT_SQLITE = "UPDATE campaign_counts SET n = n - 1 WHERE campaign_id = OLD.campaign_id AND name = {name} AND {cond};"
_SQLITE_TRIGGERS = ('insert', 'delete', 'status', 'bounce', 'unsubscribed_at', 'server_id')


def _sqlite_triggers(counts):
    adds = [_UPSERT_SQLITE.format(name=n.format(r="NEW"), cond=c.format(r="NEW")) for n, c in counts]
    subtracts = [_SUBTRACT_SQLITE.format(name=n.format(r="OLD"), cond=c.format(r="OLD")) for n, c in counts]
    yield "CREATE TRIGGER deliveries_counts_insert AFTER INSERT ON deliveries BEGIN " + " ".join(adds) + " END"
    yield "CREATE TRIGGER deliveries_counts_delete AFTER DELETE ON deliveries BEGIN " + " ".join(subtracts) + " END"
    changed = {
        "status": "OLD.status IS NOT NEW.status",
        "bounce": "OLD.bounce IS NOT NEW.bounce",
        "unsubscribed_at": "(OLD.unsubscribed_at IS NULL) <> (NEW.unsubscribed_at IS NULL)",
    }
    for (column, when), add, subtract in zip(changed.items(), adds, subtracts):
        yield (f"CREATE TRIGGER deliveries_counts_{column} AFTER UPDATE OF {column} ON deliveries WHEN {when} "
               f"BEGIN {subtract} {add} END")
    if len(counts) > len(_BEFORE):
        # The per-server count moves with the status too (above: its own trigger, as one UPDATE may
        # change both columns) and with the server.
        per_server_add, per_server_subtract = adds[-1], subtracts[-1]
        yield ("CREATE TRIGGER deliveries_counts_server_status AFTER UPDATE OF status ON deliveries "
               "WHEN OLD.status IS NOT NEW.status AND OLD.server_id IS NEW.server_id "
               f"BEGIN {per_server_subtract} {per_server_add} END")
        yield ("CREATE TRIGGER deliveries_counts_server_id AFTER UPDATE OF server_id, status ON deliveries "
               "WHEN OLD.server_id IS NOT NEW.server_id "
               f"BEGIN {per_server_subtract} {per_server_add} END")


def _pg_rows(counts, table, sign):
    return " UNION ALL ".join(
        f"SELECT r.campaign_id, {n.format(r='r')} AS name, {sign} AS k FROM {table} r WHERE {c.format(r='r')}"
        for n, c in counts
    )


_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION deliveries_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO campaign_counts (campaign_id, name, n)
        SELECT campaign_id, name, sum(k) FROM ({inserted}) AS c
        GROUP BY campaign_id, name ORDER BY campaign_id, name
        ON CONFLICT (campaign_id, name) DO UPDATE SET n = campaign_counts.n + excluded.n;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO campaign_counts (campaign_id, name, n)
        SELECT campaign_id, name, sum(k) FROM ({inserted} UNION ALL {deleted}) AS c
        GROUP BY campaign_id, name HAVING sum(k) <> 0 ORDER BY campaign_id, name
        ON CONFLICT (campaign_id, name) DO UPDATE SET n = campaign_counts.n + excluded.n;
    ELSE
        UPDATE campaign_counts AS t SET n = t.n + d.k
        FROM (SELECT campaign_id, name, sum(k) AS k FROM ({deleted}) AS c GROUP BY campaign_id, name
              ORDER BY campaign_id, name) AS d
        WHERE t.campaign_id = d.campaign_id AND t.name = d.name;
    END IF;
    RETURN NULL;
END $$
"""


def _recreate(counts, old_triggers):
    if op.get_bind().dialect.name == 'postgresql':
        # Statement triggers call the function: replacing it is enough.
        op.execute(_PG_FUNCTION.format(inserted=_pg_rows(counts, "new_rows", 1),
                                       deleted=_pg_rows(counts, "old_rows", -1)))
        return
    for kind in old_triggers:
        op.execute(f"DROP TRIGGER IF EXISTS deliveries_counts_{kind}")
    for statement in _sqlite_triggers(counts):
        op.execute(statement)


def upgrade():
    _recreate(_AFTER, _SQLITE_TRIGGERS[:5])
    name = _AFTER[-1][0].format(r='d')
    op.execute(f"INSERT INTO campaign_counts (campaign_id, name, n) SELECT d.campaign_id, {name}, count(*) "
               "FROM deliveries d WHERE d.server_id IS NOT NULL GROUP BY 1, 2")


def downgrade():
    _recreate(_BEFORE, _SQLITE_TRIGGERS + ('server_status',))
    op.execute("DELETE FROM campaign_counts WHERE name LIKE 'server:%'")
