"""servers: agent keys sealed like TSIG and DKIM secrets

servers.agent_key held each worker's Fernet key in plain text: a copy of the database let
anyone talk to every agent. It now holds the key sealed by services.secret_box (the instance's
secrets key), a longer text; the downgrade opens them again.

Revision ID: d5a8c2e7f1b3
Revises: 54b964245abc
Create Date: 2026-12-04 05:30:00.000000

"""
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


def upgrade():
    with op.batch_alter_table('servers', schema=None) as batch_op:
        batch_op.alter_column('agent_key', existing_type=sa.String(length=64), type_=sa.Text(), existing_nullable=True)
    _convert(secret_box.seal)


def downgrade():
    _convert(secret_box.unseal)
    with op.batch_alter_table('servers', schema=None) as batch_op:
        batch_op.alter_column('agent_key', existing_type=sa.Text(), type_=sa.String(length=64), existing_nullable=True)
