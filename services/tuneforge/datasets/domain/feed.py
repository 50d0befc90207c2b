"""Curation while ingesting: the validated rows of an upload go through the pipeline in one pass.

``CurationFeed`` stands in for the ingest's ``ShardWriter``: instead of writing the validated rows
as a raw version, it hands them to ``pipeline.curate_batches`` running in a thread of its own, so
one version is written (the curated one) and parsing the next block overlaps the steps on this
one (Arrow's JSON parser, its compute kernels and Parquet compression all release the GIL).
Memory stays bounded: at most ``_QUEUE_BATCHES`` batches wait between the two threads.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Generator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pyarrow as pa

from tuneforge.datasets.domain import config as cfg
from tuneforge.datasets.domain.pipeline import Batch, EvalRecords, PipelineResult, curate_batches
from tuneforge.datasets.domain.steps import Record
from tuneforge.datasets.domain.steps_gen import GeneratorProvider

_QUEUE_BATCHES = 4
_RECORD_BATCH = 8192
_POLL_S = 0.1


class _Stop:
    """Queue marker: the producer ended (``abort`` False) or gave up (``abort`` True)."""

    def __init__(self, abort: bool) -> None:
        self.abort = abort


class IngestAborted(Exception):
    """The ingest side failed; the pipeline thread stops without publishing anything."""


class CurationFeed:
    """A ``ShardWriter``-shaped sink that curates what it is given (see the module docstring).

    Args:
        config: the steps, split and removal guard.
        staging: an empty folder for the curated shards and the steps' rejected-rows report.
        eval_records: evaluation rows for decontamination, by version ids.
        generators: the models of ``generative_augment`` steps.
    """

    def __init__(self, config: cfg.PipelineConfig, staging: Path, eval_records: EvalRecords,
                 generators: GeneratorProvider | None = None) -> None:
        self.rows = 0
        self._queue: queue.Queue[Batch | _Stop] = queue.Queue(maxsize=_QUEUE_BATCHES)
        self._records: list[Record] = []
        self._result: Future[PipelineResult] = Future()
        self._thread = threading.Thread(target=self._run, args=(config, staging, eval_records, generators),
                                        name="ingest-curation", daemon=True)
        self._thread.start()

    def _run(self, config: cfg.PipelineConfig, staging: Path, eval_records: EvalRecords,
             generators: GeneratorProvider | None) -> None:
        try:
            self._result.set_result(curate_batches(self._source(), config, staging, eval_records=eval_records,
                                                   generators=generators))
        except BaseException as exc:  # noqa: BLE001 - handed to the ingest thread by ``_put`` / ``close``
            self._result.set_exception(exc)

    def _source(self) -> Generator[Batch, None, None]:
        while True:
            item = self._queue.get()
            if isinstance(item, _Stop):
                if item.abort:
                    raise IngestAborted("the ingest failed")
                return
            yield item

    def _put(self, item: Batch | _Stop) -> None:
        """Queue an item; raises the pipeline's error as soon as it has failed."""
        while True:
            if self._result.done():
                self._result.result()  # raises the pipeline's error in the ingest thread
                raise RuntimeError("the curation pipeline ended before its input did")
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                continue

    def add(self, record: dict[str, Any]) -> None:
        """Send one validated record (batched)."""
        self._records.append(record)
        self.rows += 1
        if len(self._records) >= _RECORD_BATCH:
            self._flush_records()

    def add_table(self, table: pa.Table) -> None:
        """Send a table of validated records, after the records sent before it."""
        if table.num_rows == 0:
            return
        self._flush_records()
        self.rows += table.num_rows
        self._put(table)

    def _flush_records(self) -> None:
        if self._records:
            batch, self._records = self._records, []
            self._put(batch)

    def close(self) -> PipelineResult:
        """End the input and wait for the pipeline; returns its result (or raises its error)."""
        self._flush_records()
        self._put(_Stop(abort=False))
        self._thread.join()
        return self._result.result()

    def discard(self) -> None:
        """Stop after a failure on the ingest side; nothing is kept (the caller removes staging)."""
        self._records = []
        while self._thread.is_alive():
            try:
                self._queue.put(_Stop(abort=True), timeout=_POLL_S)
                break
            except queue.Full:
                self._drain_one()
        self._thread.join()

    def _drain_one(self) -> None:
        with contextlib.suppress(queue.Empty):
            self._queue.get_nowait()
