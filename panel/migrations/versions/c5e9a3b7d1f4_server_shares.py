"""server_shares: an admin's servers lent to chosen users (issue 10 point 3)

Revision ID: c5e9a3b7d1f4
Revises: e7c2a9d4b1f6
Create Date: 2026-12-04 16:05:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c5e9a3b7d1f4'
down_revision = 'e7c2a9d4b1f6'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'server_shares',
        sa.Column('server_id', sa.Integer(), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['server_id'], ['servers.id'], name=op.f('fk_server_shares_server_id_servers'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_server_shares_user_id_users'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('server_id', 'user_id', name=op.f('pk_server_shares')),
    )
    op.create_index(op.f('ix_server_shares_user_id'), 'server_shares', ['user_id'], unique=False)


def downgrade():
    op.drop_index(op.f('ix_server_shares_user_id'), table_name='server_shares')
    op.drop_table('server_shares')
