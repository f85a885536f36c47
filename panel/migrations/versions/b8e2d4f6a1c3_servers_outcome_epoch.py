"""servers: outcome_epoch, the epoch of the agent's queue that outcome_ack counts in

An agent reinstalled with a fresh queue counts its outcome seqs from 1 again under a new epoch;
the panel's ack is sent with the epoch it was given for, so it never deletes the new queue's
events unread. NULL (every server before this revision): the next outcomes reply sets it.

Revision ID: b8e2d4f6a1c3
Revises: b8d2f4a6c1e3
Create Date: 2026-12-04 10:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b8e2d4f6a1c3'
down_revision = 'b8d2f4a6c1e3'
branch_labels = None
depends_on = None


# Plain ALTER TABLE on both backends: a batch copy of servers on SQLite would drop the old
# table with foreign keys on (its IPs, events and jobs deleted by cascade).
def upgrade():
    op.add_column('servers', sa.Column('outcome_epoch', sa.String(length=64), nullable=True))


def downgrade():
    op.drop_column('servers', 'outcome_epoch')
