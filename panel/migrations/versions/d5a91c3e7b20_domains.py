"""domains: sending and tracking domains, their DNS records and DKIM keys

Revision ID: d5a91c3e7b20
Revises: c4e8a2f1d9b3
Create Date: 2026-11-28 04:30:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'd5a91c3e7b20'
down_revision = 'c4e8a2f1d9b3'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('domains',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=253), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('zone', sa.String(length=253), nullable=False),
    sa.Column('dns_host', sa.String(length=255), nullable=False),
    sa.Column('dns_port', sa.Integer(), nullable=False),
    sa.Column('tsig_name', sa.String(length=255), nullable=False),
    sa.Column('tsig_algorithm', sa.String(length=20), nullable=False),
    sa.Column('tsig_secret', sa.Text(), nullable=False),
    sa.Column('dkim_selector', sa.String(length=63), nullable=True),
    sa.Column('dkim_private_key', sa.Text(), nullable=True),
    sa.Column('dkim_public_key', sa.Text(), nullable=True),
    sa.Column('dmarc_policy', sa.String(length=20), nullable=False),
    sa.Column('dmarc_rua', sa.String(length=320), nullable=True),
    sa.Column('published_digest', sa.String(length=64), nullable=True),
    sa.Column('dns_state', sa.String(length=20), nullable=False),
    sa.Column('dns_error', sa.Text(), nullable=True),
    sa.Column('dns_attempt_at', sa.DateTime(), nullable=True),
    sa.Column('published', sa.Text(), server_default='[]', nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_domains_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_domains')),
    sa.UniqueConstraint('user_id', 'name', name=op.f('uq_domains_user_id'))
    )
    with op.batch_alter_table('domains', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_domains_dns_state'), ['dns_state'], unique=False)
        batch_op.create_index(batch_op.f('ix_domains_user_id'), ['user_id'], unique=False)


def downgrade():
    with op.batch_alter_table('domains', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_domains_user_id'))
        batch_op.drop_index(batch_op.f('ix_domains_dns_state'))

    op.drop_table('domains')
