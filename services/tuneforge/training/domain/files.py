"""Where a job's own files live in the platform's store: its metrics file and TensorBoard event files.

Both sit under the job's folder, ``tenants/<tenant>/jobs/<job_id>/``, beside nothing else of the job
(checkpoints keep their own area). The metrics file is JSON lines, one record per logged step or
evaluation: ``{"sequence", "time", ...}`` with the API's ``Metrics`` fields (the adapter writes the
lines), the same records as the job's METRICS events.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.storage import tenant_prefix
from tuneforge.training.domain.model import EventKind, JobEvent
from tuneforge.training.domain.ports import JobRepository

log = logging.getLogger(__name__)


def job_prefix(tenant: str, job_id: str) -> str:
    """The job's folder in the store."""
    return f"{tenant_prefix(tenant)}jobs/{job_id}/"


def metrics_key(tenant: str, job_id: str) -> str:
    """The job's metrics file (JSON lines)."""
    return job_prefix(tenant, job_id) + "metrics.jsonl"


def tensorboard_prefix(tenant: str, job_id: str) -> str:
    """The folder of the job's TensorBoard event files."""
    return job_prefix(tenant, job_id) + "tensorboard/"


class JobFiles(Protocol):
    """The job files' side of the platform's store."""

    def write(self, key: str, data: bytes) -> None:
        """Create or replace the object at ``key`` whole (readers see the old or the new content)."""
        ...

    def read(self, key: str) -> bytes | None:
        """The object's content, verified; None when there is none."""
        ...

    def metrics_line(self, event: JobEvent) -> str:
        """One METRICS event as a line of the metrics file (JSON, newline-terminated)."""
        ...


class MetricsRecorder:
    """Keeps a job's metrics file in step with its METRICS events.

    Seeded from the events already logged (a re-queued job's earlier steps stay in the file), then fed
    each new METRICS event; the file is rewritten at most every ``flush_every_s`` seconds, on every
    evaluation and when the run ends. A store failure is logged and retried at the next write: the
    file is a by-product, the job's event log stays the record.
    """

    def __init__(self, files: JobFiles, repository: JobRepository, tenant: str, job_id: str,
                 flush_every_s: float = 10.0) -> None:
        self._files, self._key, self._every = files, metrics_key(tenant, job_id), flush_every_s
        self._rows: list[str] = []
        self._last = 0.0
        after = 0
        while batch := repository.events_after(tenant, job_id, after):
            self._rows += [files.metrics_line(e) for e in batch if e.kind is EventKind.METRICS]
            after = batch[-1].sequence

    def add(self, event: JobEvent, *, now: bool = False) -> None:
        """Record a METRICS event; write the file when ``now`` or when the last write is old enough."""
        self._rows.append(self._files.metrics_line(event))
        if now or time.monotonic() - self._last >= self._every:
            self.flush()

    def flush(self) -> None:
        """Write the whole file now."""
        try:
            self._files.write(self._key, "".join(self._rows).encode())
            self._last = time.monotonic()
        except TuneforgeError as exc:
            log.warning("could not write the metrics file %s: %s", self._key, exc.message)
