"""Checkpoint metrics, taken at the ports (no change to the domain): ``ObservedRepository`` counts
registered checkpoints and their bytes, ``ObservedFiles`` the bytes served, ``ObservedExporter``
export durations and bytes. Each wrapper delegates everything else to the adapter it wraps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from tuneforge.checkpoints.domain.model import ExportFormat, FileEntry, Manifest
from tuneforge.checkpoints.domain.ports import CheckpointFiles, CheckpointRepository, Exporter, ExportResult
from tuneforge.common.metrics import ServiceMetrics

EXPORT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class ObservedRepository:
    """Counts committed checkpoints and their bytes (by tenant) as they are inserted."""

    def __init__(self, inner: CheckpointRepository, metrics: ServiceMetrics) -> None:
        self._inner = inner
        self._count = metrics.counter("tuneforge_checkpoints_registered_total", "Checkpoints registered.",
                                      ("tenant",))
        self._bytes = metrics.counter("tuneforge_checkpoints_registered_bytes_total", "Bytes of the files of "
                                      "registered checkpoints.", ("tenant",))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def insert_or_get(self, manifest: Manifest) -> Manifest:
        """Insert through the wrapped repository; count it when this call inserted it."""
        stored = self._inner.insert_or_get(manifest)
        if stored.checkpoint_id == manifest.checkpoint_id:
            self._count.labels(manifest.tenant).inc()
            self._bytes.labels(manifest.tenant).inc(sum(f.size for f in manifest.draft.files))
        return stored


class ObservedFiles:
    """Counts the checkpoint bytes streamed to clients (DownloadCheckpointFile)."""

    def __init__(self, inner: CheckpointFiles, metrics: ServiceMetrics) -> None:
        self._inner = inner
        self._read = metrics.counter("tuneforge_checkpoints_read_bytes_total", "Checkpoint bytes streamed to "
                                     "clients.", ("tenant",))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def read(self, tenant: str, manifest: Manifest, entry: FileEntry, offset: int,
             chunk_size: int) -> Iterator[bytes]:
        """Stream through the wrapped store, counting each chunk."""
        counter = self._read.labels(tenant)
        for chunk in self._inner.read(tenant, manifest, entry, offset, chunk_size):
            counter.inc(len(chunk))
            yield chunk


class ObservedExporter:
    """Times exports and counts their bytes, by format and outcome."""

    def __init__(self, inner: Exporter, metrics: ServiceMetrics) -> None:
        self._inner = inner
        self._seconds = metrics.histogram("tuneforge_checkpoints_export_seconds", "Duration of checkpoint "
                                          "exports.", ("format", "outcome"), buckets=EXPORT_BUCKETS)
        self._bytes = metrics.counter("tuneforge_checkpoints_export_bytes_total", "Bytes written by exports.",
                                      ("tenant", "format"))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def export(self, tenant: str, manifest: Manifest, fmt: ExportFormat, destination: str) -> ExportResult:
        """Export through the wrapped exporter, timing it."""
        start, outcome = time.monotonic(), "error"
        try:
            result = self._inner.export(tenant, manifest, fmt, destination)
            outcome = "ok"
        finally:
            self._seconds.labels(fmt.name, outcome).observe(time.monotonic() - start)
        self._bytes.labels(tenant, fmt.name).inc(sum(f.size for f in result.files))
        return result
