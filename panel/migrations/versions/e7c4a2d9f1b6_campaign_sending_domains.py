"""campaign sending domains: the domains a campaign's letters rotate through, and each letter's own

Revision ID: e7c4a2d9f1b6
Revises: c9f3b5d2e8a1
Create Date: 2026-11-28 04:50:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e7c4a2d9f1b6'
down_revision = 'c9f3b5d2e8a1'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('campaign_domains',
    sa.Column('campaign_id', sa.Integer(), nullable=False),
    sa.Column('domain_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_campaign_domains_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['domain_id'], ['domains.id'], name=op.f('fk_campaign_domains_domain_id_domains'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('campaign_id', 'domain_id', name=op.f('pk_campaign_domains'))
    )
    # Plain ALTER TABLE on both backends: a batch copy of deliveries would drop its count triggers on SQLite.
    op.add_column('deliveries', sa.Column('sending_domain', sa.String(length=253), nullable=True))


def downgrade():
    op.execute("ALTER TABLE deliveries DROP COLUMN sending_domain")  # SQLite >= 3.35 and PostgreSQL

    op.drop_table('campaign_domains')
