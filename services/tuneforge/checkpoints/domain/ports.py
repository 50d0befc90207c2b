"""What the checkpoint domain needs from the outside world; adapters implement these Protocols.

Every method takes the tenant explicitly: a resource of another tenant is simply absent.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from tuneforge.checkpoints.domain.model import (
    Alias,
    ExportFormat,
    FileEntry,
    Manifest,
    Pin,
    RetentionPolicy,
)


@dataclass(frozen=True)
class StoredFile:
    """What the object store recorded for one file when it was written."""

    size: int
    sha256: str


@dataclass(frozen=True)
class ExportResult:
    """Where an export was written and what it holds."""

    uri: str
    files: tuple[FileEntry, ...]


class CheckpointRepository(Protocol):
    """Committed checkpoints, aliases (with history), retention policies and pins."""

    def insert_or_get(self, manifest: Manifest) -> Manifest:
        """Insert ``manifest``; when (tenant, job, step) exists already return that one instead."""
        ...

    def get(self, tenant: str, checkpoint_id: str) -> Manifest | None:
        """A committed checkpoint with its current aliases, or None."""
        ...

    def list_job(self, tenant: str, job_id: str) -> list[Manifest]:
        """Every committed checkpoint of a job, by step, with aliases."""
        ...

    def begin_delete(self, tenant: str, checkpoint_id: str, *, force: bool = False) -> list[str]:
        """Hide a checkpoint from readers; returns the references that refused it (empty: hidden).

        Without ``force``, refused (nothing changes) while any alias or pin points at it, checked
        in the same transaction as the hiding; with ``force``, those aliases and pins are dropped.
        ``NotFound`` when no committed checkpoint has the id.
        """
        ...

    def finish_delete(self, tenant: str, checkpoint_id: str) -> None:
        """Forget a checkpoint whose files are gone."""
        ...

    def move_alias(self, tenant: str, job_id: str, name: str, checkpoint_id: str, when: datetime) -> Alias:
        """Point an alias at a checkpoint and append the move to its history, atomically."""
        ...

    def get_alias(self, tenant: str, job_id: str, name: str) -> Alias | None:
        """One alias with its history, or None."""
        ...

    def list_aliases(self, tenant: str, job_id: str) -> list[Alias]:
        """The aliases of a job, by name, with their history."""
        ...

    def get_policy(self, tenant: str, job_id: str) -> RetentionPolicy | None:
        """The job's retention policy, or None (keep everything)."""
        ...

    def set_policy(self, tenant: str, job_id: str, policy: RetentionPolicy) -> None:
        """Store the job's retention policy."""
        ...

    def add_pin(self, tenant: str, pin: Pin) -> None:
        """Record that ``pin.holder`` uses a checkpoint (idempotent)."""
        ...

    def remove_pin(self, tenant: str, checkpoint_id: str, holder: str) -> bool:
        """Forget a pin; returns whether it existed."""
        ...

    def list_pins(self, tenant: str, checkpoint_ids: Sequence[str]) -> list[Pin]:
        """Pins held on any of ``checkpoint_ids``."""
        ...


class CheckpointFiles(Protocol):
    """The object-store side of checkpoints, confined to ``tenants/<tenant>/checkpoints/``."""

    def stat(self, tenant: str, prefix: str, path: str) -> StoredFile | None:
        """What the store recorded for a file, or None when it is not there (or not committed)."""
        ...

    def write_manifest(self, tenant: str, manifest: Manifest) -> None:
        """Write the manifest object into the checkpoint folder (after every file is checked)."""
        ...

    def delete_folder(self, tenant: str, prefix: str) -> int:
        """Delete the checkpoint folder (manifest first); returns how many objects went."""
        ...

    def read(self, tenant: str, manifest: Manifest, entry: FileEntry, offset: int,
             chunk_size: int) -> Iterator[bytes]:
        """Stream a file from ``offset``, verified against ``entry.sha256``.

        The last chunk is only yielded after the whole file's sha256 matched; a mismatch raises
        ``IntegrityError`` naming the checkpoint and the file.
        """
        ...

    def presign(self, tenant: str, manifest: Manifest, entry: FileEntry, expires: timedelta) -> str:
        """A URL reading the file without credentials until ``expires`` has passed."""
        ...


class Exporter(Protocol):
    """Turns a checkpoint into a deployable folder in the tenant's export area."""

    def export(self, tenant: str, manifest: Manifest, fmt: ExportFormat, destination: str) -> ExportResult:
        """Export ``manifest`` as ``fmt`` under ``destination`` (relative to the export area)."""
        ...
