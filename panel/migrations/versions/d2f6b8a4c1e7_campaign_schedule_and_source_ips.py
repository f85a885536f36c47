"""campaigns: a scheduled start (UTC, its zone, why it failed) and chosen source IPs (issue 10 point 5)

Revision ID: d2f6b8a4c1e7
Revises: c5e9a3b7d1f4
Create Date: 2026-12-04 19:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'd2f6b8a4c1e7'
down_revision = 'c5e9a3b7d1f4'
branch_labels = None
depends_on = None


def upgrade():
    # Plain ALTER TABLE on both backends: a batch copy of campaigns would drop it with foreign keys
    # on (SQLite), taking every campaign's letters by cascade.
    op.add_column('campaigns', sa.Column('scheduled_at', sa.DateTime(), nullable=True))
    op.add_column('campaigns', sa.Column('schedule_zone', sa.String(length=64), nullable=True))
    op.add_column('campaigns', sa.Column('schedule_error', sa.Text(), nullable=True))
    op.create_index(op.f('ix_campaigns_scheduled_at'), 'campaigns', ['scheduled_at'], unique=False)
    op.create_table(
        'campaign_source_ips',
        sa.Column('campaign_id', sa.Integer(), nullable=False),
        sa.Column('server_ip_id', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'],
                                name=op.f('fk_campaign_source_ips_campaign_id_campaigns'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['server_ip_id'], ['server_ips.id'],
                                name=op.f('fk_campaign_source_ips_server_ip_id_server_ips'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('campaign_id', 'server_ip_id', name=op.f('pk_campaign_source_ips')),
    )


def downgrade():
    op.drop_table('campaign_source_ips')
    op.drop_index(op.f('ix_campaigns_scheduled_at'), table_name='campaigns')
    for column in ('schedule_error', 'schedule_zone', 'scheduled_at'):
        op.drop_column('campaigns', column)
