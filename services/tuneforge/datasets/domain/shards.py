"""Local Parquet shards: writing canonical records in batches, reading them back, hashing.

A version is built in a local staging folder first (``part-00000.parquet``, ...,
``rejected.parquet``) and uploaded only when complete, so a failed ingest or curation leaves
nothing in the object store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tuneforge.datasets.domain.records import RECORD_SCHEMA
from tuneforge.datasets.domain.rejects import REJECTS_SCHEMA, RejectedRow

ROWS_PER_SHARD = 250_000
_BATCH_ROWS = 8192
HASHED_COLUMNS = ("kind", "messages", "prompt", "chosen", "rejected", "text", "category", "split")


@dataclass
class ShardSet:
    """The shards of one version in a local folder."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    rows: int = 0
    content_hash: str = ""
    kinds: dict[str, int] = field(default_factory=dict)
    split_counts: dict[str, int] = field(default_factory=dict)


class ShardWriter:
    """Appends records to Parquet shards, hashing their content in order.

    The content hash is sha256 over the Arrow IPC stream of the content columns (everything but
    provenance) of each 8192-row batch, in order: equal content in equal order gives an equal
    hash whatever the source file was called (for a given Arrow IPC format version).
    """

    def __init__(self, folder: Path, *, rows_per_shard: int = ROWS_PER_SHARD) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._set = ShardSet(folder)
        self._rows_per_shard = rows_per_shard
        self._buffer: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0
        self._hash = hashlib.sha256()

    def add(self, record: dict[str, Any]) -> None:
        """Append one canonical record."""
        self._buffer.append(record)
        if len(self._buffer) >= _BATCH_ROWS:
            self._flush()

    def add_many(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records in order."""
        for record in records:
            self.add(record)

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pa.Table.from_pylist(self._buffer, schema=RECORD_SCHEMA)
        self._buffer = []
        self._account(table)
        offset = 0
        while offset < table.num_rows:
            if self._writer is None:
                path = self._set.folder / f"part-{len(self._set.files):05d}.parquet"
                self._writer = pq.ParquetWriter(path, RECORD_SCHEMA, compression="zstd")
                self._set.files.append(path)
                self._rows_in_shard = 0
            take = min(table.num_rows - offset, self._rows_per_shard - self._rows_in_shard)
            self._writer.write_table(table.slice(offset, take))
            offset += take
            self._rows_in_shard += take
            self._set.rows += take
            if self._rows_in_shard >= self._rows_per_shard:
                self._writer.close()
                self._writer = None

    def _account(self, table: pa.Table) -> None:
        """Hash the content columns and count kinds and splits, a whole batch at a time."""
        content = table.select(list(HASHED_COLUMNS)).combine_chunks()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, content.schema) as stream:
            stream.write_table(content)
        self._hash.update(sink.getvalue())
        for column, counts in (("kind", self._set.kinds), ("split", self._set.split_counts)):
            for item in pc.value_counts(table.column(column)).to_pylist():
                if item["values"] is not None:
                    counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]

    def close(self) -> ShardSet:
        """Flush and close; returns the shards written and the content hash."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._set.content_hash = "sha256:" + self._hash.hexdigest()
        return self._set


class RejectsWriter:
    """Collects rejected rows into ``rejected.parquet`` (streamed, batch by batch)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._buffer: list[dict[str, Any]] = []
        self._writer: pq.ParquetWriter | None = None

    def add(self, rejected: RejectedRow) -> None:
        """Record one rejected row."""
        self._buffer.append(rejected.as_dict())
        self.count += 1
        if len(self._buffer) >= _BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, REJECTS_SCHEMA, compression="zstd")
        self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=REJECTS_SCHEMA))
        self._buffer = []

    def close(self) -> Path | None:
        """Close; returns the report path, or None when nothing was rejected."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            return self.path
        return None


def iter_records(files: Iterable[Path], *, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Read canonical records back from shards, batch by batch."""
    for path in files:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
            yield from batch.to_pylist()


def iter_batches(files: Iterable[Path], *, batch_rows: int = _BATCH_ROWS) -> Iterator[list[dict[str, Any]]]:
    """Read canonical records back as lists of up to ``batch_rows`` records."""
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            yield batch.to_pylist()


def stable_json(value: Any) -> bytes:
    """Deterministic JSON (sorted keys) for hashing configs and manifests."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
