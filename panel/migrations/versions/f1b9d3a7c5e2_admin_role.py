"""users: is_admin and disabled_at (the admin area, issue 10 point 3)

An admin manages users, quotas, shared servers and the audit log; a disabled user cannot log in
and their sessions and tokens are refused, their rows kept.

Revision ID: f1b9d3a7c5e2
Revises: a4c9e2f7b3d1
Create Date: 2026-12-04 15:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'f1b9d3a7c5e2'
down_revision = 'a4c9e2f7b3d1'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('is_admin', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('disabled_at', sa.DateTime(), nullable=True))


def downgrade():
    # Plain ALTER TABLE … DROP COLUMN, not a batch copy: on SQLite a copy drops the old table with
    # foreign keys on, and every user's rows would go by cascade.
    op.drop_column('users', 'disabled_at')
    op.drop_column('users', 'is_admin')
