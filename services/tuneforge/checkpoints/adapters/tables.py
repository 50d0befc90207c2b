"""The checkpoint service's tables (its own ``MetaData``; migrations in ``checkpoints/migrations``)."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Index, Integer, String, Table, Text, UniqueConstraint

from tuneforge.common.db import TZDateTime, new_metadata
from tuneforge.common.db.idempotency import idempotency_table

metadata = new_metadata()

STATE_COMMITTED = "committed"
STATE_DELETING = "deleting"

checkpoints = Table(
    "ckpt_checkpoints",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(63), nullable=False),
    Column("job_id", String(128), nullable=False),
    Column("step", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("digest", String(64), nullable=False),
    Column("prefix", Text, nullable=False),
    # The whole manifest document (files, metrics, config, lineage): read as one unit.
    Column("manifest", JSON, nullable=False),
    Column("created_at", TZDateTime(), nullable=False),
    UniqueConstraint("tenant", "job_id", "step"),
    Index("ix_ckpt_checkpoints_tenant_job", "tenant", "job_id"),
)

aliases = Table(
    "ckpt_aliases",
    metadata,
    Column("tenant", String(63), primary_key=True),
    Column("job_id", String(128), primary_key=True),
    Column("name", String(63), primary_key=True),
    Column("checkpoint_id", String(64), nullable=False, index=True),
    Column("updated_at", TZDateTime(), nullable=False),
)

alias_history = Table(
    "ckpt_alias_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", String(63), nullable=False),
    Column("job_id", String(128), nullable=False),
    Column("name", String(63), nullable=False),
    Column("checkpoint_id", String(64), nullable=False),
    Column("set_at", TZDateTime(), nullable=False),
    Index("ix_ckpt_alias_history_alias", "tenant", "job_id", "name"),
)

policies = Table(
    "ckpt_retention_policies",
    metadata,
    Column("tenant", String(63), primary_key=True),
    Column("job_id", String(128), primary_key=True),
    Column("keep_best_n", Integer, nullable=False),
    Column("keep_latest_m", Integer, nullable=False),
    Column("metric", String(128), nullable=False),
    Column("greater_is_better", Boolean, nullable=False),
)

pins = Table(
    "ckpt_pins",
    metadata,
    Column("tenant", String(63), primary_key=True),
    Column("checkpoint_id", String(64), primary_key=True),
    Column("holder", String(128), primary_key=True),
    Column("created_at", TZDateTime(), nullable=False),
)

# Keys of ExportCheckpoint (``tuneforge.common.idempotency``): the destination is the key.
idempotency_keys = idempotency_table(metadata, "ckpt_idempotency_keys")
