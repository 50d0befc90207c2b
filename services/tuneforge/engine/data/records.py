"""The canonical record schema (shared with the datasets service) and its readers.

Public API:
    RecordKind: Enum chat | instruction | preference | text | labelled | prompt.
    Message(role, content): one chat turn; role is system, user, assistant or tool.
    Record: one canonical row::

        {"kind": "chat"|"instruction"|"preference"|"text",
         "messages": [{"role", "content"}] | None,    # chat, instruction (stored as user/assistant turns)
         "prompt": [...messages] | None,               # preference: the conversation so far
         "chosen": [...messages] | None,               # preference: the preferred completion turn(s)
         "rejected": [...messages] | None,             # preference: the dispreferred completion turn(s)
         "text": str | None,                           # text (continued pre-training)
         "completion": [...messages] | None,           # labelled (KTO): one answer to prompt
         "label": bool | None,                         # labelled: whether the completion is desirable
         "margin": float | None,                       # preference, optional: reward models' margin
         "answer": str | None,                         # prompt: reference answer (verifiable rewards)
         "task": str | None,                           # multi-task label
         "provenance": {...}}                          # free-form: source file, licence, curation step

        Compatible with the datasets service's Parquet shards (``tuneforge.datasets.domain.records``):
        there ``chosen``/``rejected`` are the answer strings (read as one assistant message),
        ``category`` is the task label (used when ``task`` is absent) and ``split`` names the split.

        ``Record.from_dict(d, where="train[3]")`` validates one row, ``record.to_dict()`` gives it back.
    read_records(path, *, source="train", split=None) -> list[Record]
        A ``.jsonl`` or ``.parquet`` file, or a folder of them (sorted by name); with ``split``, rows
        whose ``split`` column names another split are skipped. Every bad row is
        reported at once (up to 50) as ``errors.InvalidInput`` with fields like ``train[12].messages``.
    records_from_dicts(rows, *, source="train") -> list[Record]: the same validation for in-memory rows.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.common.errors import FieldViolation, InvalidInput, NotFound

MAX_REPORTED = 50
ROLES = frozenset({"system", "user", "assistant", "tool"})


class RecordKind(enum.Enum):
    """What a canonical record holds."""

    CHAT = "chat"
    INSTRUCTION = "instruction"
    PREFERENCE = "preference"
    TEXT = "text"
    LABELLED = "labelled"
    PROMPT = "prompt"


@dataclass(frozen=True)
class Message:
    """One chat turn."""

    role: str
    content: str

    def to_dict(self) -> dict[str, str]:
        """As the ``{"role", "content"}`` mapping chat templates expect."""
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class Record:
    """One canonical row; which fields are set depends on ``kind``."""

    kind: RecordKind
    messages: tuple[Message, ...] | None = None
    prompt: tuple[Message, ...] | None = None
    chosen: tuple[Message, ...] | None = None
    rejected: tuple[Message, ...] | None = None
    text: str | None = None
    task: str | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    completion: tuple[Message, ...] | None = None
    label: bool | None = None
    margin: float | None = None
    answer: str | None = None  # prompt: the reference answer verifiable rewards compare with

    @classmethod
    def from_dict(cls, row: Mapping[str, Any], where: str = "row") -> Record:
        """Validate one row; raises ``InvalidInput`` naming every bad field under ``where``."""
        problems: list[FieldViolation] = []
        record = _parse(row, where, problems)
        if problems or record is None:
            raise InvalidInput.of(problems, what="record")
        return record

    def to_dict(self) -> dict[str, Any]:
        """The canonical mapping (Enums as values, messages as dicts)."""
        out = asdict(self)
        out["kind"] = self.kind.value
        out["provenance"] = dict(self.provenance)
        return out


def _messages(
    value: Any, where: str, problems: list[FieldViolation], required: bool
) -> tuple[Message, ...] | None:
    if isinstance(value, str) and where.endswith(("chosen", "rejected", "completion")):
        return (Message("assistant", value),)  # the datasets service stores answers as strings
    if value is None:
        if required:
            problems.append(
                FieldViolation(where, "is required for this kind; give a list of {role, content}")
            )
        return None
    if not isinstance(value, Sequence) or isinstance(value, str) or (required and not value):
        problems.append(FieldViolation(where, "must be a non-empty list of {role, content} messages"))
        return None
    out = []
    for i, m in enumerate(value):
        role = m.get("role") if isinstance(m, Mapping) else None
        content = m.get("content") if isinstance(m, Mapping) else None
        if role not in ROLES:
            problems.append(
                FieldViolation(f"{where}[{i}].role", f"must be one of {sorted(ROLES)}, got {role!r}")
            )
        if not isinstance(content, str):
            problems.append(FieldViolation(f"{where}[{i}].content", "must be a string"))
        out.append(Message(str(role), content if isinstance(content, str) else ""))
    return tuple(out)


_REQUIRED = {
    RecordKind.CHAT: ("messages",),
    RecordKind.INSTRUCTION: ("messages",),
    RecordKind.PREFERENCE: ("prompt", "chosen", "rejected"),
    RecordKind.TEXT: (),
    RecordKind.LABELLED: ("prompt", "completion"),
    RecordKind.PROMPT: ("prompt",),
}


def _parse(row: Mapping[str, Any], where: str, problems: list[FieldViolation]) -> Record | None:
    if not isinstance(row, Mapping):
        problems.append(FieldViolation(where, "must be an object with a 'kind' field"))
        return None
    start = len(problems)
    try:
        kind = RecordKind(row.get("kind"))
    except ValueError:
        kinds = ", ".join(k.value for k in RecordKind)
        problems.append(FieldViolation(f"{where}.kind", f"must be one of {kinds}, got {row.get('kind')!r}"))
        return None
    msgs = {
        name: _messages(row.get(name), f"{where}.{name}", problems, name in _REQUIRED[kind])
        for name in ("messages", "prompt", "chosen", "rejected", "completion")
    }
    label = row.get("label")
    if kind is RecordKind.LABELLED and not isinstance(label, bool):
        problems.append(FieldViolation(f"{where}.label", "must be true (desirable completion) or false (undesirable) "
                                       "for kind 'labelled'"))
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float)
                               or not math.isfinite(margin) or margin < 0):
        problems.append(FieldViolation(f"{where}.margin", "must be a finite number >= 0, or null"))
    text = row.get("text")
    if kind is RecordKind.TEXT and (not isinstance(text, str) or not text):
        problems.append(FieldViolation(f"{where}.text", "must be a non-empty string for kind 'text'"))
    provenance = row.get("provenance") or {}
    if isinstance(provenance, str):  # parquet writers may store it as JSON text
        try:
            provenance = json.loads(provenance) if provenance.strip() else {}
        except json.JSONDecodeError:
            provenance = None
    if not isinstance(provenance, Mapping):
        problems.append(FieldViolation(f"{where}.provenance", "must be an object"))
    task = row.get("task") if row.get("task") is not None else row.get("category")
    if task is not None and not isinstance(task, str):
        problems.append(FieldViolation(f"{where}.task", "must be a string or null"))
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, str):
        problems.append(FieldViolation(f"{where}.answer", "must be a string (the reference answer) or null"))
    if len(problems) > start:
        return None
    return Record(
        answer=answer if isinstance(answer, str) else None,
        kind=kind,
        text=text if isinstance(text, str) else None,
        task=task,
        provenance=dict(provenance) if isinstance(provenance, Mapping) else {},
        label=label if kind is RecordKind.LABELLED else None,
        margin=float(margin) if kind is RecordKind.PREFERENCE and margin is not None else None,
        **msgs,
    )


def records_from_dicts(rows: Iterable[Mapping[str, Any]], *, source: str = "train") -> list[Record]:
    """Validate in-memory rows, reporting every bad row at once.

    Args:
        rows: canonical mappings.
        source: name used in field paths (``train[3].messages``).

    Raises:
        InvalidInput: one violation per bad field (the first ``MAX_REPORTED``).
    """
    problems: list[FieldViolation] = []
    out: list[Record] = []
    for i, row in enumerate(rows):
        record = _parse(row, f"{source}[{i}]", problems)
        if record is not None:
            out.append(record)
    if problems:
        err = InvalidInput.of(problems[:MAX_REPORTED], what=f"{source} records")
        if len(problems) > MAX_REPORTED:
            err.message += f" (showing {MAX_REPORTED} of {len(problems)})"
        raise err
    return out


def _read_file(path: Path) -> list[Mapping[str, Any]]:
    if path.suffix == ".jsonl":
        rows = []
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InvalidInput.field_error(
                        f"{path.name}:{n}", f"is not valid JSON ({exc.msg}); one JSON object per line"
                    ) from None
        return rows
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def read_records(path: Path, *, source: str = "train", split: str | None = None) -> list[Record]:
    """Read canonical records from a ``.jsonl``/``.parquet`` file or a folder of them.

    Args:
        path: file or folder (files sorted by name, so the order is stable).
        source: name used in field paths of errors.
        split: keep only rows whose ``split`` is this one or unset.

    Raises:
        NotFound: the path does not exist or the folder holds no .jsonl/.parquet file.
        InvalidInput: malformed rows, every one named.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".parquet"))
    elif path.is_file() and path.suffix in (".jsonl", ".parquet"):
        files = [path]
    else:
        files = []
    if not files:
        raise NotFound(f"no .jsonl or .parquet records at {path}; check data.{source}.path")
    rows: list[Mapping[str, Any]] = []
    for f in files:
        rows.extend(r for r in _read_file(f) if split is None or r.get("split") in (None, split))
    return records_from_dicts(rows, source=source)
