"""servers: agent keys sealed like TSIG and DKIM secrets

servers.agent_key held each worker's Fernet key in plain text: a copy of the database let
anyone talk to every agent. It now holds the key sealed by services.secret_box (the instance's
secrets key), a longer text; the downgrade opens them again.

On SQLite the column's type is changed in the table's stored CREATE TABLE (VARCHAR and TEXT
store the same; SQLite's documented way for changes that leave the rows as they are): a batch
copy of servers would drop the old table with foreign keys on, deleting every server's IPs,
rate limits, events and jobs by cascade.

Revision ID: d5a8c2e7f1b3
Revises: 54b964245abc
Create Date: 2026-12-04 05:30:00.000000

"""
import re

from alembic import op
import sqlalchemy as sa

from panel.services import secret_box


# revision identifiers, used by Alembic.
revision = 'd5a8c2e7f1b3'
down_revision = '54b964245abc'
branch_labels = None
depends_on = None

_servers = sa.table('servers', sa.column('id', sa.Integer), sa.column('agent_key', sa.Text))


def _convert(change) -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(_servers.c.id, _servers.c.agent_key).where(_servers.c.agent_key.is_not(None))).all()
    for server_id, key in rows:
        bind.execute(_servers.update().where(_servers.c.id == server_id).values(agent_key=change(key)))


def _column_type(old: str, new: str, old_type, new_type) -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'sqlite':
        op.alter_column('servers', 'agent_key', existing_type=old_type, type_=new_type, existing_nullable=True)
        return
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'servers'").scalar()
    sql, found = re.subn(r"\bagent_key " + re.escape(old) + r"(?=[,\s])", f"agent_key {new}", sql)
    assert found == 1, f"agent_key {old} not found in the stored CREATE TABLE servers"
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'servers'", (sql,))
    bind.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def upgrade():
    _column_type('VARCHAR(64)', 'TEXT', sa.String(length=64), sa.Text())
    _convert(secret_box.seal)


def downgrade():
    _convert(secret_box.unseal)
    _column_type('TEXT', 'VARCHAR(64)', sa.Text(), sa.String(length=64))
