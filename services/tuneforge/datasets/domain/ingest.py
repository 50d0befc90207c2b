"""Ingestion: a local file (spooled upload or downloaded object) -> validated canonical shards.

Steps: archive expansion (guarded) -> container detection -> streaming row reader -> format
detection (first rows) -> conversion and validation per row -> policy -> local shards. JSONL
instruction and text files take a columnar fast path (``fastjsonl``) with the same results. Nothing is
written to the object store here: the caller publishes the staged shards only on success.
"""

from __future__ import annotations

import enum
import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.common.errors import FieldViolation, InvalidInput, ResourceExhausted
from tuneforge.common.public_text import echo
from tuneforge.datasets.domain import config as cfg
from tuneforge.datasets.domain.archives import (
    ArchiveLimits,
    extract_archive,
    iter_archive_names,
    open_decompressed,
)
from tuneforge.datasets.domain.encodings import utf8_stream
from tuneforge.datasets.domain.fastjsonl import (
    FAST_FORMATS,
    Block,
    Converted,
    Rest,
    convert_block,
    iter_blocks,
)
from tuneforge.datasets.domain.feed import CurationFeed
from tuneforge.datasets.domain.formats import (
    DEFAULT_CATEGORY_FIELDS,
    DatasetFormat,
    convert_row,
    detect_format,
    normalize_row,
)
from tuneforge.datasets.domain.pipeline import EvalRecords, PipelineResult
from tuneforge.datasets.domain.readers import FileType, detect_file_type, iter_rows, jsonl_rows
from tuneforge.datasets.domain.records import texts_of
from tuneforge.datasets.domain.rejects import RejectedRow, RowError
from tuneforge.datasets.domain.shards import RejectsWriter, ShardSet, ShardWriter, merge_rejects
from tuneforge.datasets.domain.steps_gen import GeneratorProvider
from tuneforge.datasets.domain.tokens import TokenCounter, WhitespaceCounter

MAX_REPORTED_VIOLATIONS = 50
DETECTION_ROWS = 100


class ValidationPolicy(enum.StrEnum):
    """What to do with rows that fail validation."""

    REJECT_UPLOAD = "reject_upload"
    SKIP_INVALID = "skip_invalid"


@dataclass(frozen=True)
class IngestLimits:
    """Caps on what one ingest accepts."""

    max_file_bytes: int = 10 << 30
    max_row_bytes: int = 1 << 20
    max_rows: int = 50_000_000
    archive: ArchiveLimits = field(default_factory=ArchiveLimits)
    max_mixture_rows: int = 10_000_000  # most rows one CreateMixture writes (total_rows)


@dataclass(frozen=True)
class IngestOptions:
    """What the caller declared about the file."""

    file_name: str
    format: DatasetFormat | None = None
    file_type: FileType | None = None
    policy: ValidationPolicy = ValidationPolicy.REJECT_UPLOAD
    max_tokens_per_row: int = 0
    category_field: str = ""


@dataclass
class IngestResult:
    """Staged shards, the rejected-rows report and the counts."""

    shards: ShardSet
    rejected_path: Path | None
    rows_read: int
    rows_rejected: int
    format: DatasetFormat
    sources: list[str]
    rows_accepted: int = 0
    curation: PipelineResult | None = None
    """The steps' counts when the upload was curated while ingesting (``shards`` are then the
    curated rows and ``rejected_path`` lists invalid rows first, then the rows steps removed)."""


class _Ingest:
    def __init__(self, options: IngestOptions, limits: IngestLimits, counter: TokenCounter, staging: Path,
                 fast_path: bool, writer: ShardWriter | CurationFeed) -> None:
        self.options = options
        self.limits = limits
        self.counter = counter
        self.writer = writer
        self.rejects = RejectsWriter(staging / "rejected.parquet")
        self.violations: list[FieldViolation] = []
        self.format = options.format
        self.rows_read = 0
        self.fast_path = fast_path
        fields = (options.category_field,) if options.category_field else DEFAULT_CATEGORY_FIELDS
        self.category_fields = tuple(fields)

    def reject(self, source: str, number: int, error: RowError) -> None:
        rejected = RejectedRow(number, error.field, error.reason, "validate", source)
        self.rejects.add(rejected)
        if self.options.policy is ValidationPolicy.REJECT_UPLOAD and len(self.violations) < MAX_REPORTED_VIOLATIONS:
            where = rejected.violation_field()
            self.violations.append(FieldViolation(where if source == self.options.file_name else f"{source}:{where}", error.reason))

    def check_tokens(self, record: dict[str, Any]) -> None:
        limit = self.options.max_tokens_per_row
        if limit:
            tokens = sum(self.counter.count(list(texts_of(record))))
            if tokens > limit:
                raise RowError("", f"has {tokens} tokens, over the limit of {limit}: shorten the row or raise max_tokens_per_row")

    def count_rows(self, n: int) -> None:
        self.rows_read += n
        if self.rows_read > self.limits.max_rows:
            raise ResourceExhausted(
                f"more than {self.limits.max_rows} rows: split the file into several uploads", reason="ROW_COUNT"
            )

    def run_file(self, source: str, path: Path) -> None:
        file_type = self.options.file_type or detect_file_type(source, path, self.limits.archive)
        if file_type is FileType.JSONL and self.fast_path and self._fast_format(source, path):
            self._run_fast(source, path)
            return
        rows = iter_rows(path, file_type, max_row_bytes=self.limits.max_row_bytes, limits=self.limits.archive, name=source)
        pending: list[tuple[int, Any]] = []
        for number, row in rows:
            self.count_rows(1)
            if self.format is None:
                pending.append((number, row))
                if sum(isinstance(r, dict) for _, r in pending) >= DETECTION_ROWS:
                    self._flush_pending(source, pending)
                continue
            self.handle(source, number, row)
        self._flush_pending(source, pending)

    def _fast_format(self, source: str, path: Path) -> bool:
        """Whether the columnar path can take this file; detects the format as the row path would
        (majority of the first 100 object rows) when none is known yet."""
        if self.options.max_tokens_per_row:
            return False
        if self.format is None:
            rows: list[dict[str, Any]] = []
            with open_decompressed(path, self.limits.archive, source) as raw:
                for _, row in jsonl_rows(utf8_stream(raw), self.limits.max_row_bytes):
                    if isinstance(row, dict):
                        rows.append(row)
                        if len(rows) >= DETECTION_ROWS:
                            break
            try:
                detected = vote_format(rows)
            except InvalidInput:
                return False  # the row path raises the same error at the same point
            if detected not in FAST_FORMATS or any(normalize_row(r) is not r for r in rows):
                return False  # renamed or aliased columns (prompt/completion ...) take the row path
            self.format = detected
        return self.format in FAST_FORMATS

    def _run_fast(self, source: str, path: Path) -> None:
        """Block by block through Arrow; blocks or rows it cannot vouch for take the row path."""
        assert self.format is not None
        max_row_bytes = self.limits.max_row_bytes
        with open_decompressed(path, self.limits.archive, source) as raw:
            for item in iter_blocks(utf8_stream(raw), max_row_bytes):
                if isinstance(item, Rest):
                    self._run_rows(source, jsonl_rows(item.stream, max_row_bytes, item.first_line))
                    continue
                converted = convert_block(item, self.format, self.category_fields, source, max_row_bytes)
                if converted is None:
                    self._run_rows(source, jsonl_rows(io.BytesIO(item.data), max_row_bytes, item.first_line))
                    continue
                self.count_rows(len(converted.line_numbers))
                self._add_converted(source, item, converted)

    def _run_rows(self, source: str, rows: Iterable[tuple[int, Any]], *, counted: bool = False) -> None:
        for number, row in rows:
            if not counted:
                self.count_rows(1)
            self.handle(source, number, row)

    def _add_converted(self, source: str, block: Block, converted: Converted) -> None:
        """The block's good rows as table slices, each odd row through the row path, in order."""
        previous = 0
        for i in np.flatnonzero(converted.odd).tolist():
            self.writer.add_table(converted.table.slice(previous, i - previous))
            line = block.data[converted.starts[i] : converted.ends[i]]
            rows = jsonl_rows(io.BytesIO(line), self.limits.max_row_bytes, int(converted.line_numbers[i]))
            self._run_rows(source, rows, counted=True)
            previous = i + 1
        self.writer.add_table(converted.table.slice(previous))

    def _flush_pending(self, source: str, pending: list[tuple[int, Any]]) -> None:
        """Detect the format by majority over the buffered rows, then process them."""
        if self.format is None and pending:
            self.format = vote_format([r for _, r in pending if isinstance(r, dict)])
        for number, row in pending:
            self.handle(source, number, row)
        pending.clear()

    def handle(self, source: str, number: int, row: Any) -> None:
        if isinstance(row, RowError):
            self.reject(source, number, row)
            return
        assert self.format is not None
        try:
            record = convert_row(row, self.format, source=source, row_number=number, category_fields=self.category_fields)
            self.check_tokens(record)
        except RowError as error:
            self.reject(source, number, error)
            return
        self.writer.add(record)


def vote_format(rows: list[dict[str, Any]]) -> DatasetFormat | None:
    """The format most of ``rows`` look like (None when there are no rows).

    Raises:
        InvalidInput: no row has a recognizable shape (the first row's columns are named).
    """
    votes: Counter[DatasetFormat] = Counter()
    first_error: InvalidInput | None = None
    for row in rows:
        try:
            votes[detect_format(row)] += 1
        except InvalidInput as exc:
            first_error = first_error or exc
    if votes:
        return votes.most_common(1)[0][0]
    if first_error is not None:
        raise first_error
    return None


def ingest_file(
    path: Path,
    options: IngestOptions,
    staging: Path,
    *,
    limits: IngestLimits | None = None,
    counter: TokenCounter | None = None,
    fast_path: bool = True,
    curation: cfg.PipelineConfig | None = None,
    eval_records: EvalRecords = lambda ids: (),
    generators: GeneratorProvider | None = None,
) -> IngestResult:
    """Validate a local file into staged canonical shards.

    Args:
        path: the file (possibly compressed or an archive).
        options: declared format, type, policy, token limit, category field.
        staging: an empty local folder for shards and the rejected-rows report.
        limits: caps (file size, row size, row count, archive guards).
        counter: token counter for ``max_tokens_per_row`` (whitespace by default).
        fast_path: convert JSONL instruction/text files column-wise (``fastjsonl``); False forces
            the row path everywhere (same result, slower; tests compare the two).
        curation: curate the validated rows in the same pass (``feed.CurationFeed``): the shards
            returned are the curated ones. The config must be checked (``config.check_pipeline``).
        eval_records: evaluation rows for a decontamination step, by version ids.
        generators: the models of ``generative_augment`` steps.

    Raises:
        InvalidInput: bad rows under REJECT_UPLOAD (every violation listed, up to 50), an
            unreadable file, or an undetectable format.
        ResourceExhausted: a size, row or archive limit was passed, or a curation step tripped
            the removal guard.
    """
    limits = limits or IngestLimits()
    size = path.stat().st_size
    if size > limits.max_file_bytes:
        raise ResourceExhausted(f"file is {size} bytes, over the limit of {limits.max_file_bytes}: split it", reason="FILE_SIZE")
    (staging / "archive").mkdir(parents=True, exist_ok=True)
    members = extract_archive(path, staging / "archive", limits.archive)
    sources = [(f"{options.file_name}/{name}", p) for name, p in iter_archive_names(members)] or [(options.file_name, path)]
    writer = (CurationFeed(curation, staging / "curation", eval_records, generators) if curation
              else ShardWriter(staging / "data"))
    job = _Ingest(options, limits, counter or WhitespaceCounter(), staging, fast_path, writer)
    try:
        for source, file_path in sources:
            job.run_file(source, file_path)
        _refuse_invalid(job, options)
    except BaseException:
        job.writer.discard()
        raise
    closed = job.writer.close()
    rejected = job.rejects.close()
    names = [s for s, _ in sources]
    fmt = job.format or DatasetFormat.TEXT
    if isinstance(closed, ShardSet):
        return IngestResult(closed, rejected, job.rows_read, job.rejects.count, fmt, names, closed.rows)
    report = merge_rejects([p for p in (rejected, closed.rejected_path) if p], staging / "rejected-all.parquet")
    return IngestResult(closed.shards, report, job.rows_read, job.rejects.count, fmt, names, job.writer.rows, closed)


def _refuse_invalid(job: _Ingest, options: IngestOptions) -> None:
    """Raise when the policy rejects the upload or nothing valid was read."""
    if job.violations:
        raise InvalidInput(
            f"{job.rejects.count} of {job.rows_read} rows are invalid and the policy is reject_upload: "
            "fix them, or upload with validation_policy=SKIP_INVALID to store the good rows",
            violations=job.violations,
            reason="INVALID_ROWS",
        )
    if job.writer.rows == 0:
        raise InvalidInput.field_error("file", f"no valid rows in {echo(options.file_name)} ({job.rows_read} read): check the format")

