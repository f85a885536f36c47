"""per-letter tokens with 64 bits of MAC; the newest letter whose 40-bit token still works

VERP and unsubscribe tokens grow from `<delivery id>-<10 hex>` to `<delivery id>-<16 hex>` (the code
makes them; nothing stored changes). Letters already sent carry the short form in their unsubscribe
link and addresses, which must keep working: the newest delivery id existing now is recorded, and a
short token is accepted only up to it (services/tokens.py).

Revision ID: 6d1f0c3b8a27
Revises: c3f1a7e9d2b4
Create Date: 2026-12-04 05:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '6d1f0c3b8a27'
down_revision = 'c3f1a7e9d2b4'
branch_labels = None
depends_on = None


def upgrade():
    cutoffs = op.create_table('short_token_cutoffs',
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('max_id', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('kind', name=op.f('pk_short_token_cutoffs'))
    )
    newest = op.get_bind().execute(sa.text('SELECT COALESCE(MAX(id), 0) FROM deliveries')).scalar()
    op.bulk_insert(cutoffs, [{'kind': 'delivery', 'max_id': newest}])


def downgrade():
    op.drop_table('short_token_cutoffs')
