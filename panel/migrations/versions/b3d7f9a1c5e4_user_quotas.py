"""user_quotas and user_letter_counts: quotas per user and the letters handed a day and a month
(issue 10 point 3)

Revision ID: b3d7f9a1c5e4
Revises: a2c6e8b4d0f3
Create Date: 2026-12-04 15:50:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b3d7f9a1c5e4'
down_revision = 'a2c6e8b4d0f3'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'user_quotas',
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('letters_per_day', sa.Integer(), nullable=True),
        sa.Column('letters_per_month', sa.Integer(), nullable=True),
        sa.Column('recipients', sa.Integer(), nullable=True),
        sa.Column('lists', sa.Integer(), nullable=True),
        sa.Column('running_campaigns', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_quotas_user_id_users'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('user_id', name=op.f('pk_user_quotas')),
    )
    op.create_table(
        'user_letter_counts',
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('period', sa.String(length=10), nullable=False),
        sa.Column('letters', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_letter_counts_user_id_users'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('user_id', 'period', name=op.f('pk_user_letter_counts')),
    )


def downgrade():
    op.drop_table('user_letter_counts')
    op.drop_table('user_quotas')
