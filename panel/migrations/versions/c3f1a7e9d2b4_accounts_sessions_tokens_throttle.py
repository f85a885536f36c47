"""accounts: session generation, API token scope / expiry / revocation, failed-login counters

users.session_generation is part of every session's user id, bumped by logout and a password
change; api_tokens gain scope ("read" or "write"), expires_at and revoked_at; login_throttles
counts failed logins per (account, address), address and account for every panel worker.

Revision ID: c3f1a7e9d2b4
Revises: d5a8c2e7f1b3
Create Date: 2026-12-04 05:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c3f1a7e9d2b4'
down_revision = 'd5a8c2e7f1b3'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('session_generation', sa.Integer(), server_default='0', nullable=False))
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scope', sa.String(length=5), server_default='write', nullable=False))
        batch_op.add_column(sa.Column('expires_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('revoked_at', sa.DateTime(), nullable=True))
    op.create_table(
        'login_throttles',
        sa.Column('key', sa.String(length=400), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_login_throttles')),
    )
    op.create_index('ix_login_throttles_at', 'login_throttles', ['at'], unique=False)


def downgrade():
    op.drop_index('ix_login_throttles_at', table_name='login_throttles')
    op.drop_table('login_throttles')
    # Plain ALTER TABLE … DROP COLUMN (SQLite 3.35+), not a batch copy: on SQLite a copy drops the
    # old table with foreign keys on, and every user's lists, tokens and servers go by cascade.
    for column in ('revoked_at', 'expires_at', 'scope'):
        op.drop_column('api_tokens', column)
    op.drop_column('users', 'session_generation')
