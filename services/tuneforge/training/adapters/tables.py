"""The training service's tables (its own ``MetaData``; migrations in ``training/migrations``)."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
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

metadata = new_metadata()

jobs = Table(
    "train_jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(63), nullable=False),
    Column("idempotency_key", String(128), nullable=True),
    Column("request_digest", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("method", String(16), nullable=False),
    # The job's resolved TrainingSpec (defaults filled in, inputs as references): what runs and resumes.
    Column("spec", JSON, nullable=False),
    # The job's description, {"suffix", "labels"} (the column keeps its first name: no migration needed).
    Column("resolved", JSON, nullable=False),
    Column("run_name", String(128), nullable=False),
    Column("created_at", TZDateTime(), nullable=False),
    Column("started_at", TZDateTime(), nullable=True),
    Column("finished_at", TZDateTime(), nullable=True),
    Column("trained_tokens", BigInteger, nullable=False, default=0),
    Column("current_step", BigInteger, nullable=False, default=0),
    Column("total_steps", BigInteger, nullable=False, default=0),
    Column("result_checkpoint_id", String(64), nullable=False, default=""),
    Column("error", JSON, nullable=True),
    Column("restarts", Integer, nullable=False, default=0),
    # Dispatch: the claim order (priority, size against the tenant's quota) and the lease of the replica
    # running the job (lease_epoch grows at every claim: writes fenced by owner and epoch fail once
    # another claim took the job). queue_reason: why a QUEUED job waits.
    Column("priority", Integer, nullable=False, default=0, server_default="0"),
    Column("workers", Integer, nullable=False, default=1, server_default="1"),
    Column("gpus", Integer, nullable=False, default=0, server_default="0"),
    Column("lease_owner", String(255), nullable=True),
    Column("lease_epoch", BigInteger, nullable=False, default=0, server_default="0"),
    Column("lease_expires_at", TZDateTime(), nullable=True),
    Column("queue_reason", Text, nullable=False, default="", server_default=""),
    UniqueConstraint("tenant", "idempotency_key"),
    Index("ix_train_jobs_tenant_created", "tenant", "created_at"),
    Index("ix_train_jobs_status", "status"),
)

# One row per label, so ListJobs can filter on labels in SQL (and page correctly).
labels = Table(
    "train_job_labels",
    metadata,
    Column("job_id", String(64), ForeignKey("train_jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(63), primary_key=True),
    Column("value", String(256), nullable=False),
)

events = Table(
    "train_events",
    metadata,
    Column("job_id", String(64), ForeignKey("train_jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("sequence", BigInteger, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("data", JSON, nullable=False),
    Column("time", TZDateTime(), nullable=False),
    # The replica and lease epoch an event was written under (NULL: written outside a run, e.g. CreateJob).
    Column("replica", String(255), nullable=True),
    Column("lease_epoch", BigInteger, nullable=True),
)

checkpoints = Table(
    "train_checkpoints",
    metadata,
    Column("checkpoint_id", String(64), primary_key=True),
    Column("job_id", String(64), ForeignKey("train_jobs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("tenant", String(63), nullable=False),
    Column("step", BigInteger, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("uri", Text, nullable=False),
    Column("created_at", TZDateTime(), nullable=False),
)
