"""Rendering for every command: ``--output table`` (Rich, for people), ``json`` and ``yaml`` (for
scripts; the stable shape is documented in CLI.md).

JSON/YAML is the API's own message in the proto3 JSON mapping with the proto field names
(snake_case), every field present (defaults included), enums by name, 64-bit integers as numbers
and timestamps as RFC 3339 strings. A list command prints a JSON array of those objects. Fields are
only ever added (the API is versioned: ``tuneforge.<service>.v1``). Progress and notices go to
stderr, so stdout holds exactly the document.
"""

from __future__ import annotations

import enum
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from tuneforge.client.errors import ApiError

out = Console(soft_wrap=True)
err = Console(stderr=True)
SPARKS = "▁▂▃▄▅▆▇█"


class Output(enum.StrEnum):
    """``--output`` formats."""

    table = "table"
    json = "json"
    yaml = "yaml"


def to_data(obj: Any) -> Any:
    """Proto messages (and lists/dicts of them) as plain JSON-ready data, in the stable shape."""
    if isinstance(obj, Message):
        data = json_format.MessageToDict(obj, always_print_fields_with_no_presence=True,
                                         preserving_proto_field_name=True, unquote_int64_if_possible=True)
        return _fill_unset(obj, data)
    if isinstance(obj, dict):
        return {k: to_data(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_data(v) for v in obj]
    return obj


def _fill_unset(msg: Message, data: Any) -> Any:
    """Unset message fields as null (MessageToDict drops them), so every field is always present."""
    if not isinstance(data, dict):
        return data  # a well-known type (Timestamp, Struct) rendered as a scalar or free-form object
    for f in msg.DESCRIPTOR.fields:
        if f.message_type is None or f.message_type.GetOptions().map_entry or f.containing_oneof:
            continue
        if f.is_repeated:
            for item, rendered in zip(getattr(msg, f.name), data.get(f.name, []), strict=False):
                _fill_unset(item, rendered)
        elif not msg.HasField(f.name):
            data[f.name] = None
        elif f.message_type.full_name.startswith("tuneforge."):
            _fill_unset(getattr(msg, f.name), data[f.name])
    return data


@dataclass(frozen=True)
class Column:
    """One table column: a header and how to get the cell from an item."""

    header: str
    get: Callable[[Any], Any]


def emit(fmt: Output, data: Any, columns: Sequence[Column] | None = None, *, title: str | None = None) -> None:
    """Print ``data`` (a message, a list of messages, or plain data) in the chosen format."""
    # Documents are written as they are (no Rich wrapping or colour), so they always parse.
    if fmt is Output.json:
        sys.stdout.write(json.dumps(to_data(data), indent=2, ensure_ascii=False) + "\n")
        return
    if fmt is Output.yaml:
        sys.stdout.write(yaml.safe_dump(to_data(data), sort_keys=False, allow_unicode=True))
        return
    items = data if isinstance(data, list) else [data]
    if columns is None:
        out.print(yaml.safe_dump(to_data(data), sort_keys=False, allow_unicode=True).rstrip(), markup=False,
                  highlight=False)
        return
    table = Table(title=title, header_style="bold")
    for c in columns:
        table.add_column(c.header, overflow="fold")
    for item in items:
        table.add_row(*(cell(c.get(item)) for c in columns))
    out.print(table)


def kv(fmt: Output, data: Any, pairs: Iterable[tuple[str, Any]], *, title: str | None = None) -> None:
    """One object as a two-column table (or the full document in json/yaml)."""
    if fmt is not Output.table:
        emit(fmt, data)
        return
    table = Table(title=title, show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in pairs:
        table.add_row(key, cell(value))
    out.print(table)


def cell(value: Any) -> str:
    """A short string for a table cell."""
    if isinstance(value, float):
        return "-" if value == 0 or math.isnan(value) else f"{value:.4g}"
    if value is None or value == "":
        return "-"
    return str(value)


def enum_name(value: str, prefix: str) -> str:
    """``JOB_STATUS_RUNNING`` -> ``running``."""
    return value[len(prefix):].lower() if value.startswith(prefix) else value.lower()


def when(ts: Any) -> str:
    """A protobuf Timestamp as ``YYYY-MM-DD HH:MM:SS`` (UTC), or ``-``."""
    if not ts or not ts.seconds:
        return "-"
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """The last ``width`` values as block characters (a loss curve in one line)."""
    vals = [v for v in values if math.isfinite(v)][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(SPARKS[min(int((v - lo) / span * (len(SPARKS) - 1) + 0.5), len(SPARKS) - 1)] for v in vals)


def render_error(exc: ApiError | Exception, fmt: Output) -> None:
    """An error for people (cause, then each bad field with its fix) or as JSON on stderr."""
    if fmt is not Output.table:
        body = exc.as_dict() if isinstance(exc, ApiError) else {"code": "CLIENT", "message": str(exc), "violations": []}
        sys.stderr.write(json.dumps({"error": body}) + "\n")
        return
    if isinstance(exc, ApiError):
        err.print(f"[bold red]error[/] [red]{exc.status_code.name}[/]: {exc.message}", highlight=False)
        if exc.violations:
            err.print("fix these fields:")
            for v in exc.violations:
                err.print(f"  • [bold]{v.field or '(request)'}[/]: {v.description}", highlight=False)
        hint = _HINTS.get(exc.status_code.name)
        if hint:
            err.print(f"[dim]{hint}[/]")
        return
    err.print(f"[bold red]error[/]: {exc}", highlight=False)


_HINTS = {
    "UNAUTHENTICATED": "set TUNEFORGE_TOKEN, or token_file in your profile (`tuneforge config show` says what is used)",
    "UNAVAILABLE": "is the service running and the address right? `tuneforge config show` lists the addresses",
    "NOT_FOUND": "ids are per tenant: list what you have with `ls`",
}
