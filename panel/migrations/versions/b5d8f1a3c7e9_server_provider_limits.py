"""server_provider_limits, server_provider_tables: limits per (source IP, mailbox provider) set per
server, and a server's own provider table (issue 9 point 4)

No row: the built-in defaults (worker_agent/providers.py) apply, as before.

Revision ID: b5d8f1a3c7e9
Revises: c1a7e3b5d9f2
Create Date: 2026-12-04 15:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b5d8f1a3c7e9'
down_revision = 'c1a7e3b5d9f2'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('server_provider_limits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('server_id', sa.Integer(), nullable=False),
    sa.Column('source_ip', sa.String(length=45), nullable=False),
    sa.Column('provider', sa.String(length=253), nullable=False),
    sa.Column('per_minute', sa.Integer(), nullable=True),
    sa.Column('per_hour', sa.Integer(), nullable=True),
    sa.Column('connections', sa.Integer(), nullable=True),
    sa.Column('per_connection', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['server_id'], ['servers.id'], name=op.f('fk_server_provider_limits_server_id_servers'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_server_provider_limits')),
    sa.UniqueConstraint('server_id', 'source_ip', 'provider', name=op.f('uq_server_provider_limits_server_id'))
    )
    with op.batch_alter_table('server_provider_limits', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_server_provider_limits_server_id'), ['server_id'], unique=False)
    op.create_table('server_provider_tables',
    sa.Column('server_id', sa.Integer(), nullable=False),
    sa.Column('providers', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['server_id'], ['servers.id'], name=op.f('fk_server_provider_tables_server_id_servers'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('server_id', name=op.f('pk_server_provider_tables'))
    )


def downgrade():
    op.drop_table('server_provider_tables')
    with op.batch_alter_table('server_provider_limits', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_server_provider_limits_server_id'))
    op.drop_table('server_provider_limits')
