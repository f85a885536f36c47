"""recipients: no index on email alone

Every query that looks a recipient up by address also names its list (or lists), and the
unique (list_id, email) index serves those; the index on email alone served none and cost
each imported row one more B-tree insert: about 2 µs of the ~12 µs a row PostgreSQL spends
on a list import (COPY into a staging table, then INSERT … SELECT). Starting a campaign
(services/sending) keeps its plan on PostgreSQL (hash anti-joins); SQLite reads the chosen
lists by the unique index instead of walking the whole email index for its GROUP BY.

Revision ID: a9d4e6b2c1f8
Revises: b5e1d7c3a9f2
Create Date: 2026-11-28 06:45:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = 'a9d4e6b2c1f8'
down_revision = 'b5e1d7c3a9f2'
branch_labels = None
depends_on = None


def upgrade():
    # Plain DROP INDEX on both backends: SQLite drops an index in place, no batch copy of the table.
    op.drop_index('ix_recipients_email', table_name='recipients')


def downgrade():
    op.create_index('ix_recipients_email', 'recipients', ['email'], unique=False)
