"""Job leases and dispatch: priority, size, lease owner/epoch/expiry, queue reason; event lease columns.

Revision ID: c5e1a9d4b7f2
Revises: b3d9e2f7a1c4
Create Date: 2026-12-06 11:20:00.000000

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tuneforge.common.db import TZDateTime

# revision identifiers, used by Alembic.
revision: str = 'c5e1a9d4b7f2'
down_revision: str | Sequence[str] | None = 'b3d9e2f7a1c4'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('train_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('workers', sa.Integer(), server_default='1', nullable=False))
        batch_op.add_column(sa.Column('gpus', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('lease_epoch', sa.BigInteger(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('lease_expires_at', TZDateTime(), nullable=True))
        batch_op.add_column(sa.Column('queue_reason', sa.Text(), server_default='', nullable=False))
    with op.batch_alter_table('train_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('replica', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('lease_epoch', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('train_events', schema=None) as batch_op:
        batch_op.drop_column('lease_epoch')
        batch_op.drop_column('replica')
    with op.batch_alter_table('train_jobs', schema=None) as batch_op:
        for name in ('queue_reason', 'lease_expires_at', 'lease_epoch', 'lease_owner', 'gpus', 'workers', 'priority'):
            batch_op.drop_column(name)
