"""The fast path of ingest: JSONL instruction and text files converted a block at a time.

A block is a few MiB of whole lines. It is parsed by Arrow's JSON reader (``pyarrow.json``) with
the format's fields declared as strings and every other field ignored, validated with
``pyarrow.compute`` and converted into canonical records as Arrow columns, never as Python dicts.

Row-precise error reporting is the row path's (``readers.jsonl_rows`` + ``formats.convert_row``),
never re-implemented here: any row the vectorized checks cannot prove valid ("odd": a null,
blank or mistyped field, a bad category) is handed to the row path alone, and any block Arrow
could read differently from the row path (a parse error, a line that is not one JSON object,
invalid UTF-8, NaN/Infinity literals, deep nesting, an oversized line) goes to the row path
whole. Tests compare both paths on the same files.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from tuneforge.datasets.domain.columnar import is_blank, py_strip
from tuneforge.datasets.domain.formats import DatasetFormat
from tuneforge.datasets.domain.records import MESSAGE_TYPE, RECORD_SCHEMA, RecordKind

BLOCK_BYTES = 4 << 20
_MAX_BRACKETS_PER_LINE = 900  # orjson refuses nesting deeper than 1024; Arrow does not
_FIELDS = {
    DatasetFormat.ALPACA: ("instruction", "input", "output"),
    DatasetFormat.DOLLY: ("instruction", "context", "response"),
    DatasetFormat.TEXT: ("text",),
}
FAST_FORMATS = frozenset(_FIELDS)
_OPEN, _CLOSE, _CR, _LF = ord("{"), ord("}"), ord("\r"), ord("\n")


@dataclass(frozen=True)
class Block:
    """Whole lines of a JSONL file; ``first_line`` is the 1-based number of the first."""

    data: bytes
    first_line: int


@dataclass(frozen=True)
class Rest:
    """The rest of the file for the row path (an oversized line came up): ``stream`` starts at
    line ``first_line``."""

    stream: BinaryIO
    first_line: int


class _Prefixed(io.RawIOBase):
    """``prefix`` then the rest of ``stream``, as one readable stream."""

    def __init__(self, prefix: bytes, stream: BinaryIO) -> None:
        self._prefix = memoryview(prefix)
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self._prefix:
            n = min(len(buffer), len(self._prefix))
            buffer[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def iter_blocks(stream: BinaryIO, max_row_bytes: int, block_bytes: int = 0) -> Iterator[Block | Rest]:
    """Cut a stream into blocks of whole lines; memory stays within a block plus one line."""
    block_bytes = block_bytes or BLOCK_BYTES
    carry = b""
    line = 1
    while True:
        chunk = stream.read(block_bytes)
        data = carry + chunk
        cut = data.rfind(b"\n") + 1 if chunk else len(data)
        if cut == 0 and len(data) > max_row_bytes:
            yield Rest(io.BufferedReader(_Prefixed(data, stream), buffer_size=1 << 20), line)  # type: ignore[arg-type]
            return
        if cut:
            yield Block(data[:cut], line)
            line += data.count(b"\n", 0, cut) + (0 if data[cut - 1] == _LF else 1)
        carry = data[cut:]
        if not chunk:
            return


@dataclass
class Converted:
    """A block as canonical records: ``table`` has one row per non-empty line (``line_numbers``);
    rows flagged in ``odd`` must be redone by the row path (their content in ``table`` is junk)."""

    table: pa.Table
    line_numbers: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    odd: np.ndarray


def _lines(data: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, end (exclusive, without the newline) and 0-based index of every non-empty line."""
    raw = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(raw == _LF)
    ends = newlines if data.endswith(b"\n") else np.append(newlines, len(data))
    starts = np.concatenate(([0], newlines[: len(ends) - 1] + 1))
    index = np.flatnonzero(ends > starts)
    return starts[index], ends[index], index


def _safe_for_arrow(data: bytes, starts: np.ndarray, ends: np.ndarray, max_row_bytes: int) -> bool:
    """Whether Arrow is sure to read this block as the row path would, one object per line."""
    if len(starts) == 0 or int((ends - starts).max()) > max_row_bytes:
        return False
    raw = np.frombuffer(data, dtype=np.uint8)
    last = ends - 1 - (raw[ends - 1] == _CR)
    if not (np.all(raw[starts] == _OPEN) and np.all(raw[np.maximum(last, starts)] == _CLOSE)):
        return False
    if has_nan_or_infinity(raw):  # Arrow accepts these literals, JSON does not
        return False
    # "{" is 0x7B and "[" is 0x5B: OR-ing in 0x20 maps exactly these two bytes to 0x7B.
    opening = (raw | 0x20) == _OPEN
    if int(np.count_nonzero(opening)) - len(starts) > _MAX_BRACKETS_PER_LINE:
        brackets = np.concatenate(([0], np.cumsum(opening)))
        if int((brackets[ends] - brackets[starts]).max()) > _MAX_BRACKETS_PER_LINE:
            return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def has_nan_or_infinity(raw: np.ndarray) -> bool:
    """Whether the bytes contain ``NaN`` or ``Infinity`` anywhere (same answer as ``in``).

    One vectorized pass finds the few bytes that can start either word ("I" 0x49 and "N" 0x4E
    both give 0x4F when OR-ed with 0x07, as do only "H" to "O"); the words are then compared at
    those places alone. ``bytes.__contains__`` is slower here: its skip loop skips little for
    needles this short.
    """
    candidates = np.flatnonzero((raw | 0x07) == 0x4F)
    for word in (b"NaN", b"Infinity"):
        places = candidates[candidates <= len(raw) - len(word)]
        for k, byte in enumerate(word):
            places = places[raw[places + k] == byte]
        if len(places):
            return True
    return False


def convert_block(block: Block, fmt: DatasetFormat, category_fields: tuple[str, ...], source: str,
                  max_row_bytes: int) -> Converted | None:
    """Convert a block column-wise, or None when the whole block must take the row path."""
    starts, ends, index = _lines(block.data)
    if not _safe_for_arrow(block.data, starts, ends, max_row_bytes):
        return None
    names = dict.fromkeys((*_FIELDS[fmt], *category_fields))
    schema = pa.schema([(name, pa.string()) for name in names])
    try:
        parsed = pj.read_json(
            io.BytesIO(block.data),
            read_options=pj.ReadOptions(block_size=max(len(block.data), 1 << 20)),
            parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    if parsed.num_rows != len(starts):  # two objects on a line, or a top-level non-object
        return None
    line_numbers = block.first_line + index
    columns = {name: parsed.column(name).combine_chunks() for name in names}
    category, odd = _category(columns, category_fields)
    fields, bad = _fields(fmt, columns)
    table = _records(fmt, fields, category, source, line_numbers)
    return Converted(table, line_numbers, starts, ends, odd | bad)


def _category(columns: dict[str, pa.Array], fields: tuple[str, ...]) -> tuple[pa.Array, np.ndarray]:
    """The first non-empty category field, stripped (``formats._category``); no row is odd here
    since the columns are strings."""
    chosen = pa.nulls(len(next(iter(columns.values()))), pa.string())
    for name in reversed(fields):
        values = columns[name]
        present = pc.fill_null(pc.not_equal(values, ""), False)
        chosen = pc.if_else(present, values, chosen)
    stripped = py_strip(chosen)
    category = pc.if_else(pc.equal(stripped, ""), pa.scalar(None, pa.string()), stripped)
    return category, np.zeros(len(chosen), dtype=bool)


def _required(values: pa.Array) -> np.ndarray:
    """Rows where a required string is null or blank (the row path names the error)."""
    return np.asarray(pc.fill_null(is_blank(values), True).to_numpy(zero_copy_only=False), dtype=bool)


def _fields(fmt: DatasetFormat, columns: dict[str, pa.Array]) -> tuple[dict[str, pa.Array], np.ndarray]:
    if fmt is DatasetFormat.TEXT:
        return {"text": columns["text"]}, _required(columns["text"])
    instruction_name, extra_name, answer_name = _FIELDS[fmt]
    instruction, extra, answer = columns[instruction_name], columns[extra_name], columns[answer_name]
    bad = _required(instruction) | _required(answer)
    has_extra = pc.invert(pc.fill_null(is_blank(extra), True))
    prompt = pc.if_else(has_extra, pc.binary_join_element_wise(instruction, extra, "\n\n"), instruction)
    return {"prompt": prompt, "answer": answer}, bad


def _messages(prompt: pa.Array, answer: pa.Array) -> pa.Array:
    n = len(prompt)
    contents = pc.take(pa.concat_arrays([prompt, answer]), np.arange(2 * n).reshape(2, n).T.ravel())
    roles = pa.DictionaryArray.from_arrays(np.tile(np.array([0, 1], dtype=np.int8), n),
                                           pa.array(["user", "assistant"])).cast(pa.string())
    messages = pa.StructArray.from_arrays([roles, contents], fields=list(MESSAGE_TYPE))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)), messages)


def _records(fmt: DatasetFormat, fields: dict[str, pa.Array], category: pa.Array, source: str,
             line_numbers: np.ndarray) -> pa.Table:
    n = len(line_numbers)
    kind = RecordKind.TEXT if fmt is DatasetFormat.TEXT else RecordKind.INSTRUCTION
    provenance = pa.StructArray.from_arrays(
        [pa.DictionaryArray.from_arrays(np.zeros(n, np.int8), pa.array([source])).cast(pa.string()),
         pa.array(line_numbers, pa.int64()), pa.array(np.zeros(n, dtype=bool)),
         pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, dtype=np.int32)), pa.array([], pa.string()))],
        fields=list(RECORD_SCHEMA.field("provenance").type),
    )
    columns = {name: pa.nulls(n, RECORD_SCHEMA.field(name).type) for name in RECORD_SCHEMA.names}
    columns["kind"] = pa.DictionaryArray.from_arrays(np.zeros(n, np.int8), pa.array([kind.value])).cast(pa.string())
    if fmt is DatasetFormat.TEXT:
        columns["text"] = fields["text"]
    else:
        columns["messages"] = _messages(fields["prompt"], fields["answer"])
    columns["category"] = category
    columns["provenance"] = provenance
    return pa.Table.from_arrays(list(columns.values()), schema=RECORD_SCHEMA)
