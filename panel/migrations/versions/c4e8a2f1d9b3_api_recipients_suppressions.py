"""API rate buckets, a recipient's unsubscribe mark, suppressions searchable by domain and prefix

Revision ID: c4e8a2f1d9b3
Revises: b7d3e1f04a62
Create Date: 2026-11-28 04:45:00

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'c4e8a2f1d9b3'
down_revision = 'b7d3e1f04a62'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('api_rate_buckets',
    sa.Column('token_id', sa.Integer(), nullable=False),
    sa.Column('tokens', sa.Float(), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['token_id'], ['api_tokens.id'], name=op.f('fk_api_rate_buckets_token_id_api_tokens'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('token_id', name=op.f('pk_api_rate_buckets'))
    )
    with op.batch_alter_table('recipients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unsubscribed_at', sa.DateTime(), nullable=True))
    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('domain', sa.String(length=255), nullable=True))
    if op.get_bind().dialect.name == 'postgresql':
        op.execute("UPDATE suppressions SET domain = split_part(email, '@', 2)")
    else:
        op.execute("UPDATE suppressions SET domain = substr(email, instr(email, '@') + 1)")
    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.alter_column('domain', existing_type=sa.String(length=255), nullable=False)
        batch_op.create_index('ix_suppressions_user_domain', ['user_id', 'domain', 'email'], unique=False)
        batch_op.create_index('ix_suppressions_user_email_pattern', ['user_id', 'email'], unique=False,
                              postgresql_ops={'email': 'text_pattern_ops'})


def downgrade():
    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.drop_index('ix_suppressions_user_email_pattern')
        batch_op.drop_index('ix_suppressions_user_domain')
        batch_op.drop_column('domain')
    with op.batch_alter_table('recipients', schema=None) as batch_op:
        batch_op.drop_column('unsubscribed_at')
    op.drop_table('api_rate_buckets')
