"""server_ips: warmup_start, warmup_schedule; servers: warmup (IP warm-up, issue 9 point 6)

An IP warming up has the time its day 1 began and, unless it follows the default schedule, its
own (JSON steps); the server keeps the last warm-up report its agent's ping carried (JSON).
NULL: not warming up / the default schedule / nothing reported yet.

Revision ID: a4c9e2f7b3d1
Revises: b5d8f1a3c7e9
Create Date: 2026-12-04 15:20:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'a4c9e2f7b3d1'
down_revision = 'b5d8f1a3c7e9'
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both backends, as for servers.shaping: a batch copy of servers or server_ips
# on SQLite would drop the old table with foreign keys on (rows deleted by cascade).
def upgrade():
    op.add_column('server_ips', sa.Column('warmup_start', sa.DateTime(), nullable=True))
    op.add_column('server_ips', sa.Column('warmup_schedule', sa.Text(), nullable=True))
    op.add_column('servers', sa.Column('warmup', sa.Text(), nullable=True))


def downgrade():
    op.drop_column('servers', 'warmup')
    op.drop_column('server_ips', 'warmup_schedule')
    op.drop_column('server_ips', 'warmup_start')
