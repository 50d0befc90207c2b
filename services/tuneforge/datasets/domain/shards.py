"""Local Parquet shards: writing canonical records in batches, reading them back, hashing.

A version is built in a local staging folder first (``part-00000.parquet``, ...,
``rejected.parquet``) and uploaded only when complete, so a failed ingest or curation leaves
nothing in the object store.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tuneforge.datasets.domain.records import LATER_COLUMNS, RECORD_SCHEMA, conform, with_all_columns
from tuneforge.datasets.domain.rejects import REJECTS_SCHEMA, RejectedRow

ROWS_PER_SHARD = 250_000
_BATCH_ROWS = 8192
HASHED_COLUMNS = ("kind", "messages", "prompt", "chosen", "rejected", "text", "category", "split")
# Parquet dictionary encoding only where values repeat: on free text it hashes every string and
# then falls back to plain pages anyway (same file size, up to ~30% more CPU per write).
DICTIONARY_COLUMNS = ("kind", "messages.list.element.role", "prompt.list.element.role", "category",
                      "provenance.source", "split")


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
    """Appends records (dicts or Arrow tables) to Parquet shards, hashing their content in order.

    The content hash is sha256 over the Arrow IPC stream of the content columns (everything but
    provenance) of each 8192-row batch, in order. Batches are cut at the same rows however the
    records arrived (one by one or as tables) and copied into fresh buffers before hashing, so
    equal content in equal order gives an equal hash whatever the source file was called and
    whichever path (row or columnar) produced it (for a given Arrow IPC format version).
    """

    def __init__(self, folder: Path, *, rows_per_shard: int = ROWS_PER_SHARD) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._set = ShardSet(folder)
        self.rows = 0
        """Rows added so far (written or still buffered)."""
        self._rows_per_shard = rows_per_shard
        self._records: list[dict[str, Any]] = []
        self._tables: list[pa.Table] = []
        self._pending = 0
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0
        self._hash = hashlib.sha256()
        # One background thread hashes, compresses and writes finished batches in order while the
        # caller produces the next ones (Arrow releases the GIL); at most two batches wait.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-writer")
        self._inflight: deque[Future[None]] = deque()

    def add(self, record: dict[str, Any]) -> None:
        """Append one canonical record."""
        self._records.append(record)
        self._pending += 1
        self.rows += 1
        if self._pending >= _BATCH_ROWS:
            self._flush(final=False)

    def add_many(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records in order."""
        for record in records:
            self.add(record)

    def add_table(self, table: pa.Table) -> None:
        """Append a table of canonical records (``RECORD_SCHEMA``) in order."""
        if table.num_rows == 0:
            return
        self._seal_records()
        self._tables.append(table)
        self._pending += table.num_rows
        self.rows += table.num_rows
        if self._pending >= _BATCH_ROWS:
            self._flush(final=False)

    def _seal_records(self) -> None:
        if self._records:
            self._tables.append(pa.Table.from_pylist(self._records, schema=RECORD_SCHEMA))
            self._records = []

    def _flush(self, *, final: bool) -> None:
        """Write whole 8192-row batches (and, when ``final``, the remainder)."""
        self._seal_records()
        if not self._tables:
            return
        table = pa.concat_tables(self._tables)
        whole = table.num_rows if final else table.num_rows - table.num_rows % _BATCH_ROWS
        for offset in range(0, whole, _BATCH_ROWS):
            self._submit(table.slice(offset, min(_BATCH_ROWS, whole - offset)))
        rest = table.slice(whole)
        self._tables = [rest] if rest.num_rows else []
        self._pending = rest.num_rows

    def _submit(self, table: pa.Table) -> None:
        while len(self._inflight) >= 2:
            self._inflight.popleft().result()  # re-raises a failed write here
        self._inflight.append(self._pool.submit(self._write, table))

    def _write(self, table: pa.Table) -> None:
        if not table.schema.equals(RECORD_SCHEMA):  # e.g. Parquet's list item name ("element")
            table = with_all_columns(table).cast(RECORD_SCHEMA)
        table = table.combine_chunks()
        self._account(table)
        offset = 0
        while offset < table.num_rows:
            if self._writer is None:
                path = self._set.folder / f"part-{len(self._set.files):05d}.parquet"
                self._writer = pq.ParquetWriter(path, RECORD_SCHEMA, compression="zstd",
                                                use_dictionary=list(DICTIONARY_COLUMNS))
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
        # take() copies into fresh buffers: the bytes hashed depend on the values only, not on
        # how the arrays were built (offsets, slack in null slots, unused bitmap bits).
        # Columns added later are hashed only where they hold values, so content that does not use
        # them hashes as it did before they existed.
        later = [c for c in LATER_COLUMNS if table.column(c).null_count < table.num_rows]
        content = table.select([*HASHED_COLUMNS, *later]).take(pa.array(np.arange(table.num_rows)))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, content.schema) as stream:
            stream.write_table(content)
        self._hash.update(sink.getvalue())
        for column, counts in (("kind", self._set.kinds), ("split", self._set.split_counts)):
            for item in pc.value_counts(table.column(column)).to_pylist():
                if item["values"] is not None:
                    counts[item["values"]] = counts.get(item["values"], 0) + item["counts"]

    def discard(self) -> None:
        """Stop after a failure: wait for the batch being written, close the files, keep nothing
        running (the caller removes the staging folder)."""
        for future in self._inflight:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._inflight.clear()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> ShardSet:
        """Flush and close; returns the shards written and the content hash."""
        self._flush(final=True)
        try:
            while self._inflight:
                self._inflight.popleft().result()
        finally:
            self._pool.shutdown(wait=True)
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


def merge_rejects(paths: list[Path], dest: Path) -> Path | None:
    """One rejected-rows report from several, in order (None when there is none)."""
    if len(paths) <= 1:
        return paths[0] if paths else None
    with pq.ParquetWriter(dest, REJECTS_SCHEMA, compression="zstd") as writer:
        for path in paths:
            for batch in pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS):
                writer.write_batch(batch)
    return dest


def iter_records(files: Iterable[Path], *, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Read canonical records back from shards, batch by batch."""
    for path in files:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
            yield from batch.to_pylist()


def iter_batches(files: Iterable[Path], *, batch_rows: int = _BATCH_ROWS) -> Iterator[list[dict[str, Any]]]:
    """Read canonical records back as lists of up to ``batch_rows`` records."""
    for table in iter_tables(files, batch_rows=batch_rows):
        yield table.to_pylist()


def iter_tables(files: Iterable[Path], *, batch_rows: int = _BATCH_ROWS) -> Iterator[pa.Table]:
    """Read canonical records back as Arrow tables of up to ``batch_rows`` rows."""
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
            yield conform(pa.Table.from_batches([batch]))


def read_ahead(tables: Iterator[pa.Table]) -> Generator[pa.Table, None, None]:
    """``tables`` with the next one read in a background thread while the caller works on the
    current one (Parquet decoding releases the GIL). Closing the generator stops the thread."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-reader")
    done = object()
    try:
        pending = pool.submit(next, tables, done)
        while (table := pending.result()) is not done:
            pending = pool.submit(next, tables, done)
            yield table
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def stable_json(value: Any) -> bytes:
    """Deterministic JSON (sorted keys) for hashing configs and manifests."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
