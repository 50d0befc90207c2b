"""Persist curation run events, so WatchCurationRun resumes from a cursor after a restart.

Revision ID: a81f3c6d2e57
Revises: d4a7c1e9b3f2
Create Date: 2026-11-29 12:20:00.000000

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from tuneforge.common.db import TZDateTime

# revision identifiers, used by Alembic.
revision: str = 'a81f3c6d2e57'
down_revision: str | Sequence[str] | None = 'd4a7c1e9b3f2'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('ds_curation_run_events',
    sa.Column('tenant', sa.String(length=63), nullable=False),
    sa.Column('run_id', sa.String(length=64), nullable=False),
    sa.Column('sequence', sa.Integer(), nullable=False),
    sa.Column('time', TZDateTime(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('step', sa.JSON(), nullable=True),
    sa.Column('message', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('tenant', 'run_id', 'sequence')
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('ds_curation_run_events')
