"""Streaming row readers for JSONL, JSON arrays, CSV and Parquet (plain, gzip or zstd).

Each reader yields ``(row_number, row_or_error)``: a dict, or a ``RowError`` for a row that
cannot be decoded (invalid UTF-8, invalid JSON, over the row size limit). Problems that make
the rest of the file unreadable (a JSON array broken mid-way, a corrupt Parquet footer) raise
``InvalidInput`` naming the row where reading stopped. Nothing holds the whole file in memory:
JSON arrays are parsed incrementally (ijson), Parquet is read batch by batch.

Row numbers are 1-based: the line number for JSONL, the element index for a JSON array, the
record number after the header for CSV, and the row index for Parquet.
"""

from __future__ import annotations

import csv
import enum
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import ijson
import orjson
import pyarrow.parquet as pq

from tuneforge.common.errors import InvalidInput
from tuneforge.common.public_text import echo
from tuneforge.datasets.domain.archives import ArchiveLimits, open_decompressed, sniff
from tuneforge.datasets.domain.encodings import DELIMITERS, csv_delimiter, utf8_stream
from tuneforge.datasets.domain.rejects import RowError

PARQUET_MAGIC = b"PAR1"
_COMPRESSED_SUFFIXES = (".gz", ".gzip", ".zst", ".zstd")


class FileType(enum.StrEnum):
    """Containers the readers understand."""

    JSONL = "jsonl"
    JSON = "json"
    CSV = "csv"
    PARQUET = "parquet"


_BY_SUFFIX = {
    ".jsonl": FileType.JSONL,
    ".ndjson": FileType.JSONL,
    ".json": FileType.JSON,
    ".csv": FileType.CSV,
    ".parquet": FileType.PARQUET,
    ".pq": FileType.PARQUET,
}

Row = tuple[int, "dict[str, Any] | RowError"]


def detect_file_type(name: str, path: Path, limits: ArchiveLimits) -> FileType:
    """Detect the container from the name, then from the first bytes.

    Raises:
        InvalidInput: neither the name nor the content says what the file is.
    """
    lowered = name.lower()
    for suffix in _COMPRESSED_SUFFIXES:
        if lowered.endswith(suffix):
            lowered = lowered[: -len(suffix)]
    for suffix, file_type in _BY_SUFFIX.items():
        if lowered.endswith(suffix):
            return file_type
    if sniff(path).startswith(PARQUET_MAGIC):
        return FileType.PARQUET
    with open_decompressed(path, limits, name) as stream:
        head = stream.read(4096)
        if head.startswith(PARQUET_MAGIC):
            return FileType.PARQUET
    with open_decompressed(path, limits, name) as stream:
        head = utf8_stream(stream).read(4096)  # UTF-16 from Windows editors reads as UTF-8 here
    text = head.lstrip(b" \t\r\n")
    if text.startswith(b"["):
        return FileType.JSON
    if text.startswith(b"{"):
        return FileType.JSONL
    if any(d.encode() in head.split(b"\n", 1)[0] for d in DELIMITERS):
        return FileType.CSV
    raise InvalidInput.field_error(
        "file_type",
        f"cannot tell the file type of {echo(name)}: name it .jsonl, .json, .csv or .parquet "
        "(optionally .gz/.zst) or declare file_type",
    )


def iter_rows(path: Path, file_type: FileType, *, max_row_bytes: int, limits: ArchiveLimits, name: str) -> Iterator[Row]:
    """Yield the rows of a file, streaming; see the module docstring for row numbers."""
    if file_type is FileType.PARQUET:
        yield from _parquet_rows(path, limits, name)
        return
    with open_decompressed(path, limits, name) as raw:
        stream = utf8_stream(raw, legacy=file_type is FileType.CSV)  # BOMs dropped, UTF-16/32 (CSV: Windows-1252) transcoded
        if file_type is FileType.JSONL:
            yield from jsonl_rows(stream, max_row_bytes)
        elif file_type is FileType.JSON:
            yield from _json_array_rows(stream, max_row_bytes)
        else:
            yield from _csv_rows(stream, max_row_bytes)


def _decode_error(exc: UnicodeDecodeError) -> RowError:
    return RowError("", f"invalid UTF-8 at byte {exc.start} of the row: re-encode the file as UTF-8")


def jsonl_rows(stream: BinaryIO, max_row_bytes: int, first_line: int = 1) -> Iterator[Row]:
    """Yield the rows of a JSONL stream whose first line is line ``first_line`` of the file.

    This is the row path: each line is parsed on its own, so a bad line is one rejected row.
    """
    line_number = first_line - 1
    while True:
        line = stream.readline(max_row_bytes + 1)
        if not line:
            return
        line_number += 1
        if len(line) > max_row_bytes and not line.endswith(b"\n"):
            while line and not line.endswith(b"\n"):  # skip the rest of the oversized line
                line = stream.readline(1 << 20)
            yield line_number, RowError("", f"row is larger than {max_row_bytes} bytes: split or shorten it")
            continue
        if not line.strip():
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as uexc:
                yield line_number, _decode_error(uexc)
                continue
            yield line_number, RowError("", f"invalid JSON ({exc.msg} at column {exc.colno}): fix the syntax of this line")
            continue
        yield line_number, value if isinstance(value, dict) else RowError(
            "", f"must be a JSON object, got {type(value).__name__}: write one object per line"
        )


def _json_array_rows(stream: BinaryIO, max_row_bytes: int) -> Iterator[Row]:
    index = 0
    try:
        for index, value in enumerate(ijson.items(stream, "item", use_float=True), start=1):
            if not isinstance(value, dict):
                yield index, RowError("", f"must be a JSON object, got {type(value).__name__}")
                continue
            if max_row_bytes and len(orjson.dumps(value)) > max_row_bytes:
                yield index, RowError("", f"row is larger than {max_row_bytes} bytes: split or shorten it")
                continue
            yield index, value
    except (ijson.JSONError, ijson.IncompleteJSONError, UnicodeDecodeError) as exc:
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InvalidInput.field_error(
            f"rows[{index + 1}]",
            f"the JSON array is malformed after element {index} ({detail}): fix the file's syntax "
            "(or upload JSONL, where one bad line does not stop the rest)",
        ) from None


def _decoded_lines(stream: BinaryIO, bad_lines: set[int], max_row_bytes: int) -> Iterator[str]:
    """Decode line by line so that one invalid byte spoils one record, not the file."""
    for number, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            bad_lines.add(number)
            yield raw.decode("utf-8", errors="replace")


def _csv_rows(stream: BinaryIO, max_row_bytes: int) -> Iterator[Row]:
    bad_lines: set[int] = set()
    csv.field_size_limit(max(max_row_bytes, 1 << 16))
    lines = _decoded_lines(stream, bad_lines, max_row_bytes)
    first = next(lines, None)
    if first is None:
        return
    # Excel writes ';' where the decimal separator is ',' (and tabs for "Unicode text").
    reader = csv.reader(itertools.chain([first], lines), delimiter=csv_delimiter(first))
    header = [h.strip() for h in next(reader)]
    if len(set(header)) != len(header):
        raise InvalidInput.field_error("file", f"CSV header has duplicate columns {header}: make the names unique")
    number = 0
    first_line = reader.line_num + 1
    try:
        for number, cells in enumerate(reader, start=1):
            last_line = reader.line_num
            if any(first_line <= n <= last_line for n in bad_lines):
                yield number, RowError("", "invalid UTF-8 in this record: re-encode the file as UTF-8")
            elif len(cells) != len(header):
                yield number, RowError("", f"has {len(cells)} columns, the header has {len(header)}: quote fields that contain commas")
            elif sum(len(c) for c in cells) > max_row_bytes:
                yield number, RowError("", f"row is larger than {max_row_bytes} bytes: split or shorten it")
            else:
                yield number, {k: (v if v != "" else None) for k, v in zip(header, cells, strict=True)}
            first_line = last_line + 1
    except csv.Error as exc:
        raise InvalidInput.field_error(f"rows[{number + 1}]", f"malformed CSV ({exc}): fix the quoting") from None


def _parquet_rows(path: Path, limits: ArchiveLimits, name: str) -> Iterator[Row]:
    source: Any = path
    if not sniff(path).startswith(PARQUET_MAGIC):  # compressed Parquet: Parquet needs a seekable file
        spooled = path.with_suffix(".decompressed.parquet")
        with open_decompressed(path, limits, name) as stream, spooled.open("wb") as out:
            while chunk := stream.read(1 << 20):
                out.write(chunk)
        source = spooled
    try:
        parquet = pq.ParquetFile(source)
        number = 0
        for batch in parquet.iter_batches(batch_size=4096):
            for value in batch.to_pylist():
                number += 1
                yield number, value
    except (OSError, ValueError) as exc:
        raise InvalidInput.field_error("file", f"unreadable Parquet file ({str(exc)[:200]}): re-export it") from None


def spool(stream: BinaryIO, dest: Path, *, max_bytes: int, chunk: int = 1 << 20) -> int:
    """Copy a stream to ``dest`` in chunks, refusing more than ``max_bytes``; returns the size."""
    from tuneforge.common.errors import ResourceExhausted

    total = 0
    with dest.open("wb") as out:
        while data := stream.read(chunk):
            total += len(data)
            if total > max_bytes:
                raise ResourceExhausted(f"file is larger than {max_bytes} bytes: split it", reason="FILE_SIZE")
            out.write(data)
    return total


__all__ = ["FileType", "detect_file_type", "iter_rows", "jsonl_rows", "spool"]
