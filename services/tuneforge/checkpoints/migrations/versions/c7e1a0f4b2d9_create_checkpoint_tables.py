"""Create the checkpoint tables: checkpoints, aliases, alias history, retention policies, pins.

Revision ID: c7e1a0f4b2d9
Revises:
"""

import sqlalchemy as sa
from alembic import op

from tuneforge.common.db import TZDateTime

revision = "c7e1a0f4b2d9"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ckpt_checkpoints",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("created_at", TZDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ckpt_checkpoints")),
        sa.UniqueConstraint("tenant", "job_id", "step", name=op.f("uq_ckpt_checkpoints_tenant_job_id_step")),
    )
    op.create_index("ix_ckpt_checkpoints_tenant_job", "ckpt_checkpoints", ["tenant", "job_id"])
    op.create_table(
        "ckpt_aliases",
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("checkpoint_id", sa.String(length=64), nullable=False),
        sa.Column("updated_at", TZDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "job_id", "name", name=op.f("pk_ckpt_aliases")),
    )
    op.create_index(op.f("ix_ckpt_aliases_checkpoint_id"), "ckpt_aliases", ["checkpoint_id"])
    op.create_table(
        "ckpt_alias_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("checkpoint_id", sa.String(length=64), nullable=False),
        sa.Column("set_at", TZDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ckpt_alias_history")),
    )
    op.create_index("ix_ckpt_alias_history_alias", "ckpt_alias_history", ["tenant", "job_id", "name"])
    op.create_table(
        "ckpt_retention_policies",
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("job_id", sa.String(length=128), nullable=False),
        sa.Column("keep_best_n", sa.Integer(), nullable=False),
        sa.Column("keep_latest_m", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=128), nullable=False),
        sa.Column("greater_is_better", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "job_id", name=op.f("pk_ckpt_retention_policies")),
    )
    op.create_table(
        "ckpt_pins",
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("checkpoint_id", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("created_at", TZDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "checkpoint_id", "holder", name=op.f("pk_ckpt_pins")),
    )


def downgrade() -> None:
    op.drop_table("ckpt_pins")
    op.drop_table("ckpt_retention_policies")
    op.drop_index("ix_ckpt_alias_history_alias", table_name="ckpt_alias_history")
    op.drop_table("ckpt_alias_history")
    op.drop_index(op.f("ix_ckpt_aliases_checkpoint_id"), table_name="ckpt_aliases")
    op.drop_table("ckpt_aliases")
    op.drop_index("ix_ckpt_checkpoints_tenant_job", table_name="ckpt_checkpoints")
    op.drop_table("ckpt_checkpoints")
