"""servers: shaping, the backoff state of each (source IP, provider) its agent last reported

The agent's ping lists the pairs a provider throttled (state, share of the limit, why, since);
the panel keeps the last list as JSON text to show it and to tell changes (one server event
each). NULL: nothing reported yet.

Revision ID: c1a7e3b5d9f2
Revises: b8e2d4f6a1c3
Create Date: 2026-12-04 11:10:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c1a7e3b5d9f2'
down_revision = 'b8e2d4f6a1c3'
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both backends: a batch copy of servers on SQLite would drop the old
# table with foreign keys on (its IPs, events and jobs deleted by cascade).
def upgrade():
    op.add_column('servers', sa.Column('shaping', sa.Text(), nullable=True))


def downgrade():
    op.drop_column('servers', 'shaping')
