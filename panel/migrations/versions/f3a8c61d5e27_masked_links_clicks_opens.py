"""masked links: a campaign's tracking domains and switches, its link list, clicks and opens

Revision ID: f3a8c61d5e27
Revises: e7c4a2d9f1b6
Create Date: 2026-11-28 06:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'f3a8c61d5e27'
down_revision = 'e7c4a2d9f1b6'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('campaign_tracking_domains',
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('domain_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_campaign_tracking_domains_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['domain_id'], ['domains.id'], name=op.f('fk_campaign_tracking_domains_domain_id_domains'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('campaign_id', 'domain_id', name=op.f('pk_campaign_tracking_domains'))
    )
    op.create_table('campaign_links',
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('idx', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_campaign_links_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('campaign_id', 'idx', name=op.f('pk_campaign_links'))
    )
    op.create_table('clicks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=False),
    sa.Column('link_idx', sa.Integer(), nullable=True),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_clicks_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'], name=op.f('fk_clicks_delivery_id_deliveries'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_clicks'))
    )
    op.create_index('ix_clicks_campaign_link_delivery', 'clicks', ['campaign_id', 'link_idx', 'delivery_id'], unique=False)
    op.create_index(op.f('ix_clicks_delivery_id'), 'clicks', ['delivery_id'], unique=False)
    op.create_table('opens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_opens_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['delivery_id'], ['deliveries.id'], name=op.f('fk_opens_delivery_id_deliveries'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_opens'))
    )
    op.create_index('ix_opens_campaign_delivery', 'opens', ['campaign_id', 'delivery_id'], unique=False)
    op.create_index(op.f('ix_opens_delivery_id'), 'opens', ['delivery_id'], unique=False)
    # Plain ADD COLUMN on both backends (no batch copy of campaigns).
    op.add_column('campaigns', sa.Column('track_clicks', sa.Boolean(), server_default=sa.true(), nullable=False))
    op.add_column('campaigns', sa.Column('track_opens', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade():
    op.execute("ALTER TABLE campaigns DROP COLUMN track_opens")  # SQLite >= 3.35 and PostgreSQL
    op.execute("ALTER TABLE campaigns DROP COLUMN track_clicks")
    op.drop_index(op.f('ix_opens_delivery_id'), table_name='opens')
    op.drop_index('ix_opens_campaign_delivery', table_name='opens')
    op.drop_table('opens')
    op.drop_index(op.f('ix_clicks_delivery_id'), table_name='clicks')
    op.drop_index('ix_clicks_campaign_link_delivery', table_name='clicks')
    op.drop_table('clicks')
    op.drop_table('campaign_links')
    op.drop_table('campaign_tracking_domains')
