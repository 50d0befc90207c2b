"""The canonical record: one schema for every input format, stored as Parquet.

A record is a plain ``dict`` (fast to build row by row) with these keys; ``RECORD_SCHEMA`` is
the Arrow schema of the Parquet shards of every version:

- ``kind``: ``chat`` | ``instruction`` | ``preference`` | ``text`` | ``labelled`` | ``prompt``
  (Alpaca/Dolly rows are ``instruction`` records stored as a user/assistant conversation).
- ``messages``: list of ``{role, content}`` (chat and instruction), roles system/user/assistant/tool.
- ``prompt``: list of ``{role, content}``: the conversation before the compared answers (preference).
- ``chosen`` / ``rejected``: the preferred and the dispreferred assistant answer (preference).
- ``text``: raw text (continued pre-training).
- ``category``: the task/category label, or null.
- ``provenance``: ``{source, row, augmented, flags}``: source file name, 1-based row in it,
  whether augmentation created the record, and screening flags (``toxicity:0.84``, ``lang:fr``).
- ``split``: ``train`` | ``validation`` | ``test`` once a curation run has split the version, else null.
- ``completion`` / ``label``: an assistant answer to ``prompt`` and whether it is desirable (labelled
  records: KTO's unpaired data).
- ``margin``: how strongly chosen beats rejected (preference, optional; reward models' margin).

- ``answer``: ``prompt`` records (online RL): the reference answer verifiable rewards compare with, or null.

The last four columns came later: ``conform`` gives shards written before them null columns.

This module imports pyarrow only (no grpc, no torch): the training engine reads the same shards
(``tuneforge.engine.data.records``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa


class RecordKind(enum.StrEnum):
    """The kind of a canonical record."""

    CHAT = "chat"
    INSTRUCTION = "instruction"
    PREFERENCE = "preference"
    TEXT = "text"
    LABELLED = "labelled"
    PROMPT = "prompt"


class Split(enum.StrEnum):
    """Split names."""

    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string())])
PROVENANCE_TYPE = pa.struct(
    [
        ("source", pa.string()),
        ("row", pa.int64()),
        ("augmented", pa.bool_()),
        ("flags", pa.list_(pa.string())),
    ]
)
RECORD_SCHEMA = pa.schema(
    [
        ("kind", pa.string()),
        ("messages", pa.list_(MESSAGE_TYPE)),
        ("prompt", pa.list_(MESSAGE_TYPE)),
        ("chosen", pa.string()),
        ("rejected", pa.string()),
        ("text", pa.string()),
        ("category", pa.string()),
        ("provenance", PROVENANCE_TYPE),
        ("split", pa.string()),
        ("completion", pa.string()),
        ("label", pa.bool_()),
        ("margin", pa.float64()),
        ("answer", pa.string()),
    ]
)
"""The Arrow schema of every version's Parquet shards."""

FIELDS = tuple(RECORD_SCHEMA.names)
# Columns added after the first schema: shards without them read as nulls.
LATER_COLUMNS = ("completion", "label", "margin", "answer")


def conform(table: pa.Table) -> pa.Table:
    """``table`` as ``RECORD_SCHEMA``: columns of ``LATER_COLUMNS`` it lacks (older shards) added as nulls."""
    for name in LATER_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(RECORD_SCHEMA.field(name), pa.nulls(table.num_rows,
                                                                           RECORD_SCHEMA.field(name).type))
    return table.select(list(RECORD_SCHEMA.names)).cast(RECORD_SCHEMA)


def new_record(
    kind: RecordKind,
    *,
    source: str,
    row: int,
    messages: list[dict[str, str]] | None = None,
    prompt: list[dict[str, str]] | None = None,
    chosen: str | None = None,
    rejected: str | None = None,
    text: str | None = None,
    category: str | None = None,
    completion: str | None = None,
    label: bool | None = None,
    margin: float | None = None,
    answer: str | None = None,
) -> dict[str, Any]:
    """Build a canonical record dict with every key present."""
    return {
        "kind": kind.value,
        "messages": messages,
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "text": text,
        "category": category,
        "provenance": {"source": source, "row": row, "augmented": False, "flags": []},
        "split": None,
        "completion": completion,
        "label": label,
        "margin": margin,
        "answer": answer,
    }


def texts_of(record: dict[str, Any]) -> Iterator[str]:
    """Yield every text field of a record (message contents, prompt, answers, text)."""
    for key in ("messages", "prompt"):
        for message in record.get(key) or ():
            yield message["content"]
    for key in ("chosen", "rejected", "text", "completion", "answer"):
        value = record.get(key)
        if value:
            yield value


def content_key(record: dict[str, Any]) -> str:
    """The record's content as one string (roles included): what dedup and hashing compare."""
    parts: list[str] = []
    for key in ("messages", "prompt"):
        for message in record.get(key) or ():
            parts.append(message["role"])
            parts.append(message["content"])
    for key in ("chosen", "rejected", "text", "completion", "answer"):
        value = record.get(key)
        if value is not None:
            parts.append(key)
            parts.append(value)
    if record.get("label") is not None:  # the same answer labelled both ways is two records
        parts += ["label", str(bool(record["label"]))]
    return "\x1f".join(parts)


def map_texts(record: dict[str, Any], fn: Any) -> dict[str, Any]:
    """Return a copy of ``record`` with ``fn`` applied to every text field."""
    out = dict(record)
    for key in ("messages", "prompt"):
        if record.get(key):
            out[key] = [{"role": m["role"], "content": fn(m["content"])} for m in record[key]]
    for key in ("chosen", "rejected", "text", "completion", "answer"):
        if record.get(key) is not None:
            out[key] = fn(record[key])
    return out


def answer_text(record: dict[str, Any]) -> str:
    """The answer part of a record: last assistant turn, the chosen answer, or the text."""
    if record.get("messages"):
        for message in reversed(record["messages"]):
            if message["role"] == "assistant":
                return message["content"]
        return ""
    if record.get("chosen") is not None:
        return record["chosen"]
    if record.get("completion") is not None:
        return record["completion"]
    return record.get("text") or ""


def with_all_columns(table: pa.Table) -> pa.Table:
    """``table`` with the columns of ``RECORD_SCHEMA`` it lacks added as nulls (shards written before a
    column was added), ready to cast to ``RECORD_SCHEMA``."""
    for name in RECORD_SCHEMA.names:
        if name not in table.column_names:
            table = table.append_column(RECORD_SCHEMA.field(name), pa.nulls(table.num_rows, RECORD_SCHEMA.field(name).type))
    return table.select(RECORD_SCHEMA.names)


def to_table(records: Iterable[dict[str, Any]]) -> pa.Table:
    """Convert canonical record dicts to an Arrow table with ``RECORD_SCHEMA``."""
    return pa.Table.from_pylist(list(records), schema=RECORD_SCHEMA)
