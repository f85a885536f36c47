"""server settings pushed to the agent: config version, rate limits

Revision ID: 3c1f7a9e52d4
Revises: 828b540d28c1
Create Date: 2026-11-28 03:20:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '3c1f7a9e52d4'
down_revision = '828b540d28c1'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('server_rate_limits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('server_id', sa.Integer(), nullable=False),
    sa.Column('source_ip', sa.String(length=45), nullable=False),
    sa.Column('domain', sa.String(length=253), nullable=False),
    sa.Column('per_minute', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['server_id'], ['servers.id'], name=op.f('fk_server_rate_limits_server_id_servers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_server_rate_limits')),
    sa.UniqueConstraint('server_id', 'source_ip', 'domain', name=op.f('uq_server_rate_limits_server_id'))
    )
    with op.batch_alter_table('server_rate_limits', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_server_rate_limits_server_id'), ['server_id'], unique=False)

    with op.batch_alter_table('servers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('config_version', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('config_applied', sa.Integer(), server_default='0', nullable=False))


def downgrade():
    with op.batch_alter_table('servers', schema=None) as batch_op:
        batch_op.drop_column('config_applied')
        batch_op.drop_column('config_version')

    with op.batch_alter_table('server_rate_limits', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_server_rate_limits_server_id'))

    op.drop_table('server_rate_limits')
