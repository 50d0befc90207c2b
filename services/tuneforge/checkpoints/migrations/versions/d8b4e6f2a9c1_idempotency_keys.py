"""Idempotency keys of ExportCheckpoint (concurrent identical exports get one export).

Revision ID: d8b4e6f2a9c1
Revises: c7e1a0f4b2d9
Create Date: 2026-12-06 09:00:00.000000

"""
from collections.abc import Sequence

from alembic import op

from tuneforge.common.db.idempotency import create_idempotency_table

# revision identifiers, used by Alembic.
revision: str = 'd8b4e6f2a9c1'
down_revision: str | Sequence[str] | None = 'c7e1a0f4b2d9'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    create_idempotency_table(op, 'ckpt_idempotency_keys')


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('ckpt_idempotency_keys')
