"""campaign counts kept by triggers on deliveries; deliveries indexed by campaign, state and change time

Every INSERT, UPDATE or DELETE of a letter adds to / subtracts from campaign_counts in the same
transaction: on SQLite with row triggers (each a few index look-ups), on PostgreSQL with statement
triggers over the statement's transition tables (one grouped upsert however many rows changed,
in a fixed order of (campaign, name) so concurrent writers lock counters in the same order).
A letter's delete only subtracts (UPDATE), so deleting a campaign, whose counts go by cascade,
inserts nothing.

Revision ID: c9f3b5d2e8a1
Revises: d5a91c3e7b20
Create Date: 2026-11-28 05:00:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c9f3b5d2e8a1'
down_revision = 'd5a91c3e7b20'
branch_labels = None
depends_on = None

# (name expression, condition) of each count a letter adds to, over a row alias.
_COUNTS = (
    ("'status:' || {r}.status", "TRUE"),
    ("'bounce:' || {r}.bounce", "{r}.bounce IS NOT NULL"),
    ("'unsubscribed'", "{r}.unsubscribed_at IS NOT NULL"),
)

_UPSERT_SQLITE = ("INSERT INTO campaign_counts (campaign_id, name, n) SELECT NEW.campaign_id, {name}, 1 WHERE {cond} "
                  "ON CONFLICT (campaign_id, name) DO UPDATE SET n = n + 1;")
_SUBTRACT_SQLITE = "UPDATE campaign_counts SET n = n - 1 WHERE campaign_id = OLD.campaign_id AND name = {name} AND {cond};"


def _sqlite_triggers():
    adds = [_UPSERT_SQLITE.format(name=n.format(r="NEW"), cond=c.format(r="NEW")) for n, c in _COUNTS]
    subtracts = [_SUBTRACT_SQLITE.format(name=n.format(r="OLD"), cond=c.format(r="OLD")) for n, c in _COUNTS]
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


def _pg_rows(table, sign):
    return " UNION ALL ".join(
        f"SELECT r.campaign_id, {n.format(r='r')} AS name, {sign} AS k FROM {table} r WHERE {c.format(r='r')}"
        for n, c in _COUNTS
    )


_PG_FUNCTION = """
CREATE FUNCTION deliveries_counts() RETURNS trigger LANGUAGE plpgsql AS $$
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


def _pg_statements():
    yield _PG_FUNCTION.format(inserted=_pg_rows("new_rows", 1), deleted=_pg_rows("old_rows", -1))
    yield ("CREATE TRIGGER deliveries_counts_insert AFTER INSERT ON deliveries REFERENCING NEW TABLE AS new_rows "
           "FOR EACH STATEMENT EXECUTE FUNCTION deliveries_counts()")
    yield ("CREATE TRIGGER deliveries_counts_update AFTER UPDATE ON deliveries "
           "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION deliveries_counts()")
    yield ("CREATE TRIGGER deliveries_counts_delete AFTER DELETE ON deliveries REFERENCING OLD TABLE AS old_rows "
           "FOR EACH STATEMENT EXECUTE FUNCTION deliveries_counts()")


def upgrade():
    op.create_table('campaign_counts',
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=30), nullable=False),
    sa.Column('n', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_campaign_counts_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('campaign_id', 'name', name=op.f('pk_campaign_counts'))
    )
    # What the letters already there count.
    for name, cond in _COUNTS:
        op.execute(f"INSERT INTO campaign_counts (campaign_id, name, n) SELECT d.campaign_id, {name.format(r='d')}, "
                   f"count(*) FROM deliveries d WHERE {cond.format(r='d')} GROUP BY 1, 2")
    statements = _pg_statements() if op.get_bind().dialect.name == 'postgresql' else _sqlite_triggers()
    for statement in statements:
        op.execute(statement)
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_campaign_status')
        batch_op.create_index('ix_deliveries_campaign_status_updated', ['campaign_id', 'status', 'updated_at', 'id'],
                              unique=False)


def downgrade():
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_campaign_status_updated')
        batch_op.create_index('ix_deliveries_campaign_status', ['campaign_id', 'status'], unique=False)
    if op.get_bind().dialect.name == 'postgresql':
        for kind in ('insert', 'update', 'delete'):
            op.execute(f"DROP TRIGGER deliveries_counts_{kind} ON deliveries")
        op.execute("DROP FUNCTION deliveries_counts()")
    else:
        for kind in ('insert', 'delete', 'status', 'bounce', 'unsubscribed_at'):
            op.execute(f"DROP TRIGGER deliveries_counts_{kind}")
    op.drop_table('campaign_counts')
