"""The datasets service's tables (own ``MetaData``; migrations in ``datasets/migrations``).

Every table has a ``tenant`` column and every query filters on it. JSON columns hold documents
read as one unit (lineage, step counts, stats). ``ds_curation_run_events`` keeps every progress
event of a run, so WatchCurationRun resumes from a cursor after a restart. ``ds_version_leases`` records which jobs use a
version: a version (or dataset) with a lease cannot be deleted.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Index, Integer, String, Table, Text, UniqueConstraint

from tuneforge.common.db import TZDateTime, new_metadata
from tuneforge.common.db.idempotency import idempotency_table

metadata = new_metadata()

datasets = Table(
    "ds_datasets",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(63), nullable=False),
    Column("name", String(200), nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("kind", String(16), nullable=False),
    Column("labels", JSON, nullable=False),
    Column("created_at", TZDateTime(), nullable=False),
    UniqueConstraint("tenant", "name"),
)

versions = Table(
    "ds_versions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(63), nullable=False),
    Column("dataset_id", String(64), nullable=False),
    Column("content_hash", String(80), nullable=False),
    Column("parent_version_id", String(64), nullable=False, default=""),
    Column("row_count", BigInteger, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("prefix", Text, nullable=False),
    Column("request_id", String(128), nullable=True),
    # lineage: pipeline config, step counts, split counts, stats, validation summary, files
    Column("document", JSON, nullable=False),
    Column("created_at", TZDateTime(), nullable=False),
    UniqueConstraint("tenant", "request_id"),
    Index("ix_ds_versions_tenant_dataset", "tenant", "dataset_id"),
)

runs = Table(
    "ds_curation_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant", String(63), nullable=False),
    Column("input_version_id", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("request_id", String(128), nullable=True),
    Column("document", JSON, nullable=False),  # config, step counts, error
    Column("output_version_id", String(64), nullable=False, default=""),
    Column("created_at", TZDateTime(), nullable=False),
    Column("ended_at", TZDateTime(), nullable=True),
    UniqueConstraint("tenant", "request_id"),
)

run_events = Table(
    "ds_curation_run_events",
    metadata,
    Column("tenant", String(63), primary_key=True),
    Column("run_id", String(64), primary_key=True),
    Column("sequence", Integer, primary_key=True),
    Column("time", TZDateTime(), nullable=False),
    Column("state", String(16), nullable=False),
    Column("step", JSON, nullable=True),  # the step's counts, for step events
    Column("message", Text, nullable=False),
)

leases = Table(
    "ds_version_leases",
    metadata,
    Column("tenant", String(63), primary_key=True),
    Column("version_id", String(64), primary_key=True),
    Column("holder", String(200), primary_key=True),
    Column("created_at", TZDateTime(), nullable=False),
)

# Keys of the creating RPCs (``tuneforge.common.idempotency``).
idempotency_keys = idempotency_table(metadata, "ds_idempotency_keys")
