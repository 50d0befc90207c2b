"""Store hygiene for checkpoints: orphans, interrupted deletions, stale multipart uploads.

- *Orphans*: objects under a tenant's checkpoint root that belong to no registered checkpoint
  (a worker crashed before RegisterCheckpoint) and are older than a grace period, chosen longer
  than the slowest upload so that a writer still at work is never collected.
- *Interrupted deletions*: rows hidden by a deletion whose objects were not all removed.
- *Incomplete multipart uploads*: parts of uploads that never finished use disk invisibly until
  aborted (S3 only; a bucket lifecycle rule does the same where the server supports one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tuneforge.checkpoints.adapters.objects import StoreCheckpointFiles, checkpoints_root, folder_key
from tuneforge.checkpoints.adapters.sql import SqlCheckpointRepository
from tuneforge.common.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HygieneReport:
    """What one maintenance pass did."""

    orphans_deleted: tuple[str, ...]
    deletions_finished: tuple[str, ...]
    uploads_aborted: int


class CheckpointJanitor:
    """Runs maintenance passes over every tenant's checkpoint area.

    Args:
        store: the object store.
        repo: the checkpoint repository (to tell registered folders from orphans).
        orphan_grace: objects younger than this are never collected.
        upload_timeout: incomplete multipart uploads older than this are aborted.
    """

    def __init__(
        self,
        store: ObjectStore,
        repo: SqlCheckpointRepository,
        *,
        orphan_grace: timedelta = timedelta(hours=6),
        upload_timeout: timedelta = timedelta(hours=24),
    ) -> None:
        self._store = store
        self._files = StoreCheckpointFiles(store)
        self._repo = repo
        self._orphan_grace = orphan_grace
        self._upload_timeout = upload_timeout

    def run_once(self, now: datetime | None = None) -> HygieneReport:
        """One pass: finish deletions, collect orphans, abort stale uploads."""
        finished: list[str] = []
        orphans: list[str] = []
        for tenant in self.tenants():
            finished += self.finish_deletions(tenant)
            orphans += self.collect_orphans(tenant, now=now)
        aborted = self.abort_stale_uploads()
        report = HygieneReport(tuple(orphans), tuple(finished), aborted)
        if orphans or finished or aborted:
            log.info("checkpoint hygiene: %d orphan object(s) deleted, %d deletion(s) finished, "
                     "%d incomplete upload(s) aborted", len(orphans), len(finished), aborted)
        return report

    def tenants(self) -> list[str]:
        """Tenants having anything in the store."""
        return [p[len("tenants/"):-1] for p in self._store.list_prefixes("tenants/")]

    def finish_deletions(self, tenant: str) -> list[str]:
        """Delete the objects of hidden rows, then the rows; returns their ids."""
        done = []
        for manifest in self._repo.list_deleting(tenant):
            self._files.delete_folder(tenant, manifest.draft.prefix)
            self._repo.finish_delete(tenant, manifest.checkpoint_id)
            done.append(manifest.checkpoint_id)
        return done

    def collect_orphans(self, tenant: str, *, now: datetime | None = None) -> list[str]:
        """Delete stale objects of ``tenant`` that belong to no registered checkpoint."""
        cutoff = (now or datetime.now(UTC)) - self._orphan_grace
        owned = tuple(folder_key(tenant, prefix) for prefix, _ in self._repo.list_prefixes(tenant))
        deleted = []
        for info in self._store.list(checkpoints_root(tenant)):
            if info.key.startswith(owned) or info.modified is None or info.modified >= cutoff:
                continue
            self._store.delete(info.key)
            deleted.append(info.key)
        if deleted:
            log.info("gc: deleted %d orphan checkpoint object(s) of tenant %s", len(deleted), tenant)
        return deleted

    def abort_stale_uploads(self) -> int:
        """Abort incomplete multipart uploads older than the timeout (0 on stores without them)."""
        abort = getattr(self._store, "abort_incomplete_uploads", None)
        return int(abort(self._upload_timeout)) if abort else 0

    def install_lifecycle_rule(self) -> bool:
        """Ask the bucket to abort incomplete uploads itself; False where unsupported."""
        ensure = getattr(self._store, "ensure_abort_incomplete_lifecycle", None)
        if ensure is None:
            return False
        days = max(1, round(self._upload_timeout / timedelta(days=1)))
        return bool(ensure(days))
