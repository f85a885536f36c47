"""test_letters: a campaign's test sends, apart from its deliveries (issue 10 point 5)

Revision ID: b7c1e4d9a2f6
Revises: a3e9c7f1d5b2
Create Date: 2026-12-04 21:00:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b7c1e4d9a2f6'
down_revision = 'a3e9c7f1d5b2'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'test_letters',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('campaign_id', sa.Integer(), nullable=False),
        sa.Column('server_id', sa.Integer(), nullable=False),
        sa.Column('email', sa.String(length=320), nullable=False),
        sa.Column('source_ip', sa.String(length=45), nullable=False),
        sa.Column('sending_domain', sa.String(length=253), nullable=True),
        sa.Column('push_token', sa.String(length=40), nullable=False),
        sa.Column('status', sa.String(length=20), nullable=False),
        sa.Column('code', sa.Integer(), nullable=True),
        sa.Column('reply', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_test_letters_campaign_id_campaigns'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['server_id'], ['servers.id'], name=op.f('fk_test_letters_server_id_servers'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_test_letters')),
    )
    with op.batch_alter_table('test_letters', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_test_letters_campaign_id'), ['campaign_id'], unique=False)
        batch_op.create_index('ix_test_letters_server_status', ['server_id', 'status'], unique=False)


def downgrade():
    with op.batch_alter_table('test_letters', schema=None) as batch_op:
        batch_op.drop_index('ix_test_letters_server_status')
        batch_op.drop_index(batch_op.f('ix_test_letters_campaign_id'))
    op.drop_table('test_letters')
