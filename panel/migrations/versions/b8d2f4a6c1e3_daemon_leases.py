"""daemon leases: several daemons share the servers and the global work

Revision ID: b8d2f4a6c1e3
Revises: b8d4f6a2c3e7
Create Date: 2026-12-04 10:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b8d2f4a6c1e3'
down_revision = 'b8d4f6a2c3e7'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'daemon_leases',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('holder', sa.String(length=200), nullable=False),
        sa.Column('expires_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    op.create_index('ix_daemon_leases_expires_at', 'daemon_leases', ['expires_at'])


def downgrade():
    op.drop_index('ix_daemon_leases_expires_at', table_name='daemon_leases')
    op.drop_table('daemon_leases')
