"""Idempotency keys of CreateEvaluation.

Revision ID: f7c3d9e2a1b8
Revises: e4a1b2c3d5f6
Create Date: 2026-12-06 08:40:00.000000

"""
from collections.abc import Sequence

from alembic import op

from tuneforge.common.db.idempotency import create_idempotency_table

# revision identifiers, used by Alembic.
revision: str = 'f7c3d9e2a1b8'
down_revision: str | Sequence[str] | None = 'e4a1b2c3d5f6'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    create_idempotency_table(op, 'eval_idempotency_keys')


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('eval_idempotency_keys')
