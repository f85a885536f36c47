"""deliveries: no foreign keys on recipient_id and server_id

Starting a campaign inserts every letter in one INSERT … SELECT that takes recipient_id from
the recipients it reads and server_id from the servers the panel just checked, so the two keys
were right by construction; PostgreSQL still checked both for each row (an index look-up each,
and a row lock on every one of a million recipients), about 5 s of a million-letter start.
Both were ON DELETE SET NULL, references that letters may lose anyway: the services that delete
a recipient or a server (services/recipients.delete_recipient, services/provisioning.delete_server)
now set them to NULL themselves. campaign_id and batch_id keep theirs.

On SQLite the constraints are removed from the table's stored CREATE TABLE (SQLite's documented
way to drop a FOREIGN KEY clause, which changes nothing on disk): a batch copy of deliveries
would drop its count triggers, and dropping the old table with foreign keys on would delete the
letters' events by cascade.

Revision ID: fd6e2f53dfd6
Revises: f3a8c61d5e27
Create Date: 2026-11-28 06:40:00.000000

"""
import re

from alembic import op


# revision identifiers, used by Alembic.
revision = 'fd6e2f53dfd6'
down_revision = 'f3a8c61d5e27'
branch_labels = None
depends_on = None

# (constraint, column, referenced table) of the two keys.
_KEYS = (
    ('fk_deliveries_recipient_id_recipients', 'recipient_id', 'recipients'),
    ('fk_deliveries_server_id_servers', 'server_id', 'servers'),
)


def _clause(name, column, table):
    return f"CONSTRAINT {name} FOREIGN KEY({column}) REFERENCES {table} (id) ON DELETE SET NULL"


def _rewrite_sqlite_table(change):
    """Replace deliveries' stored CREATE TABLE by change(sql), in the steps SQLite's ALTER TABLE
    page gives for changes that leave the stored rows as they are."""
    bind = op.get_bind()
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'deliveries'").scalar()
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'deliveries'",
                         (change(sql),))
    bind.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def _without_keys(sql):
    for key in _KEYS:
        sql, found = re.subn(r",\s*" + re.escape(_clause(*key)), "", sql)
        assert found == 1, f"{key[0]} not found in the stored CREATE TABLE deliveries"
    return sql


def _with_keys(sql):
    clauses = "".join(f", \n\t{_clause(*key)}" for key in _KEYS)
    return re.sub(r"\s*\)\s*$", clauses + "\n)", sql)


def upgrade():
    if op.get_bind().dialect.name == 'sqlite':
        _rewrite_sqlite_table(_without_keys)
        return
    for name, _column, _table in _KEYS:
        op.drop_constraint(name, 'deliveries', type_='foreignkey')


def downgrade():
    # References to rows deleted meanwhile go, as ON DELETE SET NULL would have done.
    for _name, column, table in _KEYS:
        op.execute(f"UPDATE deliveries SET {column} = NULL WHERE {column} IS NOT NULL "
                   f"AND NOT EXISTS (SELECT 1 FROM {table} t WHERE t.id = deliveries.{column})")
    if op.get_bind().dialect.name == 'sqlite':
        _rewrite_sqlite_table(_with_keys)
        return
    for name, column, table in _KEYS:
        op.create_foreign_key(name, 'deliveries', table, [column], ['id'], ondelete='SET NULL')
