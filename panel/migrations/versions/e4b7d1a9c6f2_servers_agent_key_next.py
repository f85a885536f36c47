"""servers: agent_key_next, a new agent key the daemon hands to the agent (key rotation)

Revision ID: e4b7d1a9c6f2
Revises: 6d1f0c3b8a27
Create Date: 2026-12-04 05:50:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e4b7d1a9c6f2'
down_revision = '6d1f0c3b8a27'
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both backends: a batch copy of servers on SQLite would drop the old
# table with foreign keys on (its IPs, events and jobs deleted by cascade).
def upgrade():
    op.add_column('servers', sa.Column('agent_key_next', sa.Text(), nullable=True))


def downgrade():
    op.drop_column('servers', 'agent_key_next')
