"""Idempotency keys of the creating RPCs (uploads, registrations, curation runs, mixtures).

Revision ID: b5e2d8f1c4a3
Revises: a81f3c6d2e57
Create Date: 2026-12-06 08:40:00.000000

"""
from collections.abc import Sequence

from alembic import op

from tuneforge.common.db.idempotency import create_idempotency_table

# revision identifiers, used by Alembic.
revision: str = 'b5e2d8f1c4a3'
down_revision: str | Sequence[str] | None = 'a81f3c6d2e57'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    create_idempotency_table(op, 'ds_idempotency_keys')


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('ds_idempotency_keys')
