"""The evaluation service's tables (its own ``MetaData``; migrations in ``evaluation/migrations``)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from tuneforge.common.db import TZDateTime, new_metadata
from tuneforge.common.db.idempotency import idempotency_table

metadata = new_metadata()

evaluations = Table(
    "eval_evaluations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(63), nullable=False),
    Column("request_id", String(128), nullable=True),
    Column("state", String(16), nullable=False),
    # The validated request (models, datasets, metrics, decoding): read as one unit.
    Column("spec", JSON, nullable=False),
    Column("results", JSON, nullable=False),
    Column("report_key", Text, nullable=False, default=""),
    Column("report_uri", Text, nullable=False, default=""),
    Column("error", JSON, nullable=True),
    Column("forgetting_flagged", Boolean, nullable=False, default=False),
    Column("placement", String(32), nullable=False, default=""),
    Column("created_at", TZDateTime(), nullable=False),
    Column("ended_at", TZDateTime(), nullable=True),
    UniqueConstraint("tenant", "request_id"),
    Index("ix_eval_evaluations_tenant_created", "tenant", "created_at"),
)

events = Table(
    "eval_events",
    metadata,
    Column("evaluation_id", String(64), ForeignKey("eval_evaluations.id", ondelete="CASCADE"), primary_key=True),
    Column("sequence", Integer, primary_key=True),
    Column("state", String(16), nullable=False),
    Column("done", Integer, nullable=False),
    Column("total", Integer, nullable=False),
    Column("message", Text, nullable=False),
    Column("time", TZDateTime(), nullable=False),
)

pairs = Table(
    "eval_pairs",
    metadata,
    Column("pair_id", String(64), primary_key=True),
    Column("evaluation_id", String(64), ForeignKey("eval_evaluations.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("tenant", String(63), nullable=False),
    Column("position", Integer, nullable=False),
    Column("prompt", Text, nullable=False),
    Column("left_text", Text, nullable=False),
    Column("right_text", Text, nullable=False),
    # Which side is the evaluated model: hidden from raters, used to unblind ratings.
    Column("left_is_model", Boolean, nullable=False),
)

ratings = Table(
    "eval_ratings",
    metadata,
    Column("pair_id", String(64), ForeignKey("eval_pairs.pair_id", ondelete="CASCADE"), primary_key=True),
    Column("rater", String(128), primary_key=True),
    Column("evaluation_id", String(64), nullable=False, index=True),
    Column("tenant", String(63), nullable=False),
    Column("preference", String(8), nullable=False),
    Column("created_at", TZDateTime(), nullable=False),
)

# Keys of the creating RPCs (``tuneforge.common.idempotency``).
idempotency_keys = idempotency_table(metadata, "eval_idempotency_keys")
