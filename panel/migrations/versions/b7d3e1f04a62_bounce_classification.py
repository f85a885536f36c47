"""bounce classification: what each returned message said, and each letter's bounce

Revision ID: b7d3e1f04a62
Revises: 5e2b7d41c9a0
Create Date: 2026-11-28 04:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b7d3e1f04a62'
down_revision = '5e2b7d41c9a0'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('bounce_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('recipient', sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column('reason', sa.String(length=30), nullable=True))
        batch_op.add_column(sa.Column('bounce_kind', sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column('dsn', sa.String(length=20), nullable=True))
        batch_op.add_column(sa.Column('code', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('mismatch', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('classified_at', sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f('ix_bounce_messages_classified_at'), ['classified_at'], unique=False)

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bounce', sa.String(length=10), nullable=True))
        batch_op.add_column(sa.Column('bounce_reason', sa.String(length=30), nullable=True))
        batch_op.create_index('ix_deliveries_email', ['email'], unique=False)


def downgrade():
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_email')
        batch_op.drop_column('bounce_reason')
        batch_op.drop_column('bounce')

    with op.batch_alter_table('bounce_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_bounce_messages_classified_at'))
        batch_op.drop_column('classified_at')
        batch_op.drop_column('mismatch')
        batch_op.drop_column('code')
        batch_op.drop_column('dsn')
        batch_op.drop_column('bounce_kind')
        batch_op.drop_column('reason')
        batch_op.drop_column('recipient')
