"""Bounds every request is checked against at the API edge, driven by the request descriptors.

The interceptor calls ``check_request`` on every request message of every RPC of every service
(client-streamed messages one by one), before any handler runs, so a new field is covered the
day it is added. What is refused (INVALID_ARGUMENT, one violation per bad field, at most
``MAX_VIOLATIONS``):

* a string longer than its limit: ``MAX_STRING_CHARS`` (256) for ids, names, keys, splits,
  tokens and labels; the longer limits of ``LONG_STRINGS`` (by field name) for descriptions,
  URIs, object paths and free-form config values;
* a float or double that is NaN or infinite (no field of the API means "infinity");
* an integer beyond +/-``MAX_INTEGER`` (2^53): no count, size, step, sequence or duration of the
  API is that large, and such numbers only ever allocate or overflow further in. Seeds are exempt.

Field-specific ranges (a weight in [0, 1], a page size up to 1000, a total row count up to a
setting) stay with each service's validation; this is the floor every field gets.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from tuneforge.common.errors import FieldViolation, InvalidInput

MAX_STRING_CHARS = 256
LONG_STRINGS: dict[str, int] = {
    "description": 4096,
    "source_uri": 2048,
    "destination": 1024,
    "prefix": 1024,
    "path": 1024,
    "string_value": 65_536,  # google.protobuf.Value inside configs and metrics
}
MAX_INTEGER = 2**53
UNBOUNDED_INTEGERS = frozenset({"seed"})
MAX_VIOLATIONS = 20

_FLOATS = (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)
_INTS = (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
         FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
         FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
         FieldDescriptor.TYPE_SFIXED64)


def string_limit(field: FieldDescriptor) -> int:
    """The most characters a string field accepts."""
    return LONG_STRINGS.get(field.name, MAX_STRING_CHARS)


def check_request(message: Message) -> None:
    """Refuse a request with an over-long string, a non-finite float or an out-of-range integer.

    Raises:
        InvalidInput: one violation per bad field (dotted path, e.g. ``components[2].weight``).
    """
    violations: list[FieldViolation] = []
    for violation in _walk(message, ""):
        violations.append(violation)
        if len(violations) >= MAX_VIOLATIONS:
            break
    if violations:
        raise InvalidInput.of(violations)


def _walk(message: Message, prefix: str) -> Iterator[FieldViolation]:
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_field, value_field = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            for key, item in value.items():
                where = f"{path}[{_short(key)}]"
                yield from _scalar(key_field, key, f"{path} key")
                yield from _one(value_field, item, where)
        elif field.is_repeated:
            for i, item in enumerate(value):
                yield from _one(field, item, f"{path}[{i}]")
        else:
            yield from _one(field, value, path)


def _one(field: FieldDescriptor, value: Any, path: str) -> Iterator[FieldViolation]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        yield from _walk(value, path + ".")
    else:
        yield from _scalar(field, value, path)


def _scalar(field: FieldDescriptor, value: Any, path: str) -> Iterator[FieldViolation]:
    if field.type == FieldDescriptor.TYPE_STRING:
        limit = string_limit(field)
        if len(value) > limit:
            yield FieldViolation(path, f"is {len(value)} characters long: at most {limit} are accepted")
    elif field.type in _FLOATS:
        if not math.isfinite(value):
            yield FieldViolation(path, f"is {value}: give a finite number")
    elif field.type in _INTS and field.name not in UNBOUNDED_INTEGERS and abs(value) > MAX_INTEGER:
        yield FieldViolation(path, f"is {value}: outside -2^53..2^53, the largest range any number of this API has")


def _short(key: Any) -> str:
    text = str(key)
    return text if len(text) <= 40 else text[:40] + "..."
