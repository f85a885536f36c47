"""clicks and opens: no foreign keys, no index of their own on delivery_id

A click is one INSERT answered at once (bench/clicks.py). Its campaign and letter come from a token
signed with the campaign's key, so they are right by construction; PostgreSQL still checked both
keys for each click (an index look-up each, and a row lock on the letter and on the campaign row
that every click of the campaign shares), about a third of a click's time. Letters and campaigns
are not deleted one by one (a recipient or a server deleted leaves its letters), so no reference
is lost. The delivery_id indexes served only those keys; the (campaign_id, link_idx, delivery_id)
and (campaign_id, delivery_id) indexes stay. campaign_links keeps its key.

Revision ID: b5e1d7c3a9f2
Revises: fd6e2f53dfd6
Create Date: 2026-11-28 07:00:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = 'b5e1d7c3a9f2'
down_revision = 'fd6e2f53dfd6'
branch_labels = None
depends_on = None

_TABLES = ('clicks', 'opens')


def upgrade():
    for table in _TABLES:
        op.drop_index(f'ix_{table}_delivery_id', table_name=table)
        # a copy of the table on SQLite (nothing refers to these tables, they have no triggers)
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_constraint(f'fk_{table}_delivery_id_deliveries', type_='foreignkey')
            batch_op.drop_constraint(f'fk_{table}_campaign_id_campaigns', type_='foreignkey')


def downgrade():
    for table in _TABLES:
        op.execute(f"DELETE FROM {table} WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.id = {table}.delivery_id) "
                   f"OR NOT EXISTS (SELECT 1 FROM campaigns c WHERE c.id = {table}.campaign_id)")
        with op.batch_alter_table(table) as batch_op:
            batch_op.create_foreign_key(f'fk_{table}_delivery_id_deliveries', 'deliveries', ['delivery_id'], ['id'],
                                        ondelete='CASCADE')
            batch_op.create_foreign_key(f'fk_{table}_campaign_id_campaigns', 'campaigns', ['campaign_id'], ['id'],
                                        ondelete='CASCADE')
        op.create_index(f'ix_{table}_delivery_id', table, ['delivery_id'], unique=False)
