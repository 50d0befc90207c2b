"""Datasets, versions and curation runs, and the ports the use cases depend on.

Leases (how the training service references versions): a job calls
``AcquireVersionLease(version_id, holder="job:<id>")`` before it reads a version and
``ReleaseVersionLease`` when it ends; deleting a leased version, or a dataset with a leased
version, fails with FAILED_PRECONDITION naming the holders.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


def new_id(prefix: str) -> str:
    """A server-assigned id such as ``ds_8f1c...``."""
    return f"{prefix}_{uuid.uuid4().hex}"


class RunState(enum.StrEnum):
    """States of a curation run."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass
class Dataset:
    """A named series of versions."""

    id: str
    tenant: str
    name: str
    description: str
    kind: str
    created_at: datetime
    labels: dict[str, str] = field(default_factory=dict)
    latest_version_id: str = ""


@dataclass
class Version:
    """An immutable version; ``document`` holds lineage, counts and stats."""

    id: str
    tenant: str
    dataset_id: str
    content_hash: str
    parent_version_id: str
    row_count: int
    kind: str
    prefix: str
    created_at: datetime
    request_id: str | None = None
    document: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    """A curation run; ``document`` holds the config, step counts and error."""

    id: str
    tenant: str
    input_version_id: str
    state: RunState
    created_at: datetime
    request_id: str | None = None
    document: dict[str, Any] = field(default_factory=dict)
    output_version_id: str = ""
    ended_at: datetime | None = None


@dataclass(frozen=True)
class RunEvent:
    """One progress event of a curation run; ``sequence`` counts from 1 per run."""

    sequence: int
    time: datetime
    state: RunState
    step: dict[str, Any] | None
    message: str


class Catalog(Protocol):
    """Metadata storage (SQL in production); every method is scoped by tenant."""

    def find_dataset(self, tenant: str, ref: str) -> Dataset | None:
        """By id or name."""
        ...

    def get_or_create_dataset(self, dataset: Dataset) -> Dataset:
        """Insert unless a dataset of that tenant and name exists; return the stored one."""
        ...

    def list_datasets(self, tenant: str, offset: int, limit: int) -> list[Dataset]:
        """Datasets by name."""
        ...

    def delete_dataset(self, tenant: str, dataset_id: str) -> None:
        """Delete the dataset row and its version rows."""
        ...

    def add_version(self, version: Version) -> None:
        """Insert a version (AlreadyExists on a duplicate request id)."""
        ...

    def get_version(self, tenant: str, version_id: str) -> Version | None:
        """One version."""
        ...

    def list_versions(self, tenant: str, dataset_id: str, offset: int, limit: int) -> list[Version]:
        """Newest first."""
        ...

    def delete_version(self, tenant: str, version_id: str) -> None:
        """Delete one version row."""
        ...

    def save_run(self, run: Run) -> None:
        """Insert or update a run."""
        ...

    def get_run(self, tenant: str, run_id: str) -> Run | None:
        """One run."""
        ...

    def add_run_event(self, tenant: str, run_id: str, event: RunEvent) -> None:
        """Persist one progress event (so a watch can resume from a cursor after a restart)."""
        ...

    def run_events(self, tenant: str, run_id: str, after: int) -> list[RunEvent]:
        """The run's persisted events with ``sequence > after``, in order."""
        ...

    def fail_unfinished_runs(self, message: str) -> list[Run]:
        """Mark queued/running runs failed (after a restart); returns those runs, updated."""
        ...

    def add_lease(self, tenant: str, version_id: str, holder: str) -> None:
        """Record that ``holder`` uses a version (idempotent)."""
        ...

    def remove_lease(self, tenant: str, version_id: str, holder: str) -> bool:
        """Forget a lease; False when there was none."""
        ...

    def leases(self, tenant: str, version_ids: list[str]) -> dict[str, list[str]]:
        """Holders per leased version among ``version_ids``."""
        ...
