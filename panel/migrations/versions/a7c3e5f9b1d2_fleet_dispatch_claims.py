"""fleet dispatch: letters belong to the campaign until a server takes them

campaigns.priority weighs a user's running campaigns on a server; dispatch_batches.token names a
batch on the agent (existing batches keep the name they were pushed under: "b<id>"); a partial
index on the letters queued on each server (the dispatch window) and one on a server's batches.
Letters not yet in any batch are released from the server and IP fixed at start: a server takes
them when it has room.

Revision ID: a7c3e5f9b1d2
Revises: e4b7d1a9c6f2
Create Date: 2026-12-04 10:20:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'a7c3e5f9b1d2'
down_revision = 'e4b7d1a9c6f2'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('campaigns', sa.Column('priority', sa.Integer(), server_default='5', nullable=False))
    # NOT NULL with a default in one step: a batch copy of this table on SQLite would drop the old
    # one with its cascades (deliveries.batch_id SET NULL). The panel always names a new batch itself.
    op.add_column('dispatch_batches', sa.Column('token', sa.String(length=40), server_default='', nullable=False))
    op.execute("UPDATE dispatch_batches SET token = 'b' || CAST(id AS VARCHAR(20))")
    op.create_index('ix_dispatch_batches_server_campaign', 'dispatch_batches', ['server_id', 'campaign_id'])
    op.create_index('ix_deliveries_server_queued', 'deliveries', ['server_id', 'campaign_id'],
                    postgresql_where=sa.text("status = 'queued'"), sqlite_where=sa.text("status = 'queued'"))
    op.execute("UPDATE deliveries SET server_id = NULL, source_ip = NULL "
               "WHERE status = 'pending' AND batch_id IS NULL AND server_id IS NOT NULL")


def downgrade():
    # Letters nobody took yet go back to the first IP of their campaign's first server (as a start
    # before this revision would have placed some of them); taken ones keep theirs.
    op.execute(
        "UPDATE deliveries SET "
        "server_id = (SELECT MIN(cs.server_id) FROM campaign_servers cs WHERE cs.campaign_id = deliveries.campaign_id), "
        "source_ip = (SELECT MIN(si.ip) FROM server_ips si WHERE si.server_id = "
        "(SELECT MIN(cs.server_id) FROM campaign_servers cs WHERE cs.campaign_id = deliveries.campaign_id)) "
        "WHERE status = 'pending' AND server_id IS NULL")
    op.drop_index('ix_deliveries_server_queued', table_name='deliveries')
    op.drop_index('ix_dispatch_batches_server_campaign', table_name='dispatch_batches')
    # Plain DROP COLUMN, not a batch copy (a copy on SQLite drops the table with its cascades).
    op.drop_column('dispatch_batches', 'token')
    op.drop_column('campaigns', 'priority')
