"""Row-level problems: what a validator raises and what the rejected-rows report keeps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa


class RowError(Exception):
    """A row failed validation.

    Args:
        field: the offending field as a dotted path (``messages[2].content``), or "" for the row.
        reason: the cause and the fix, e.g. "is empty: give the assistant's answer".
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class RejectedRow:
    """One row rejected by validation or removed by a curation step."""

    row: int
    field: str
    reason: str
    step: str
    source: str

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict (Parquet row of the report)."""
        return {"row": self.row, "field": self.field, "reason": self.reason, "step": self.step, "source": self.source}

    def violation_field(self) -> str:
        """The row and field as one dotted path, e.g. ``rows[12].messages[1].content``."""
        return f"rows[{self.row}]" + (f".{self.field}" if self.field else "")


REJECTS_SCHEMA = pa.schema(
    [
        ("row", pa.int64()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("step", pa.string()),
        ("source", pa.string()),
    ]
)
"""The Arrow schema of a version's rejected-rows report (``rejected.parquet``)."""
