"""lists and campaigns: archived_at (issue 10 point 6, tidy up)

An archived list is hidden from the lists page and the composer's choices, and can be restored;
an archived campaign keeps its state and figures, its letters and events deleted.

Revision ID: a3e9c7f1d5b2
Revises: d2f6b8a4c1e7
Create Date: 2026-12-04 19:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'a3e9c7f1d5b2'
down_revision = 'd2f6b8a4c1e7'
branch_labels = None
depends_on = None


def upgrade():
    # Plain ALTER TABLE on both backends: a batch copy of campaigns or lists would drop the table
    # with foreign keys on (SQLite), taking letters and recipients by cascade.
    op.add_column('lists', sa.Column('archived_at', sa.DateTime(), nullable=True))
    op.add_column('campaigns', sa.Column('archived_at', sa.DateTime(), nullable=True))


def downgrade():
    op.drop_column('campaigns', 'archived_at')
    op.drop_column('lists', 'archived_at')
