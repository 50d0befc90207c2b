"""API-edge bounds, driven by the descriptors: every string, float and integer field of every
request message of every service (a field added tomorrow is covered without touching this test)."""

from __future__ import annotations

import math

import pytest
from google.protobuf.descriptor import FieldDescriptor

from tests.fixtures.protowalk import (
    SERVICES,
    leaf_paths,
    map_value,
    message_class,
    path_name,
    request_types,
    set_leaf,
)
from tuneforge.common.errors import InvalidInput
from tuneforge.common.grpc.limits import MAX_INTEGER, UNBOUNDED_INTEGERS, check_request, string_limit

_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64,
          FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64}


CASES = [(root, path) for root in request_types() for root, path in leaf_paths(root)]


STRINGS = [(r, p) for r, p in CASES if map_value(p).type == FieldDescriptor.TYPE_STRING]
FLOATS = [(r, p) for r, p in CASES if map_value(p).type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)]
INT64S = [(r, p) for r, p in CASES if map_value(p).type in _INT64 and p[-1].name not in UNBOUNDED_INTEGERS]


def test_the_walk_covers_every_service():
    assert len(STRINGS) > 100 and len(FLOATS) > 20
    assert {r.full_name.split(".")[1] for r, _ in STRINGS} == set(SERVICES)


@pytest.mark.parametrize("root, path", STRINGS, ids=[f"{r.name}.{path_name(p)}" for r, p in STRINGS])
def test_every_string_field_is_bounded(root, path):
    message = message_class(root)()
    limit = string_limit(map_value(path))
    set_leaf(message, path, "x" * limit)
    check_request(message)  # at the limit: accepted
    message = message_class(root)()
    set_leaf(message, path, "x" * (1 << 20))
    with pytest.raises(InvalidInput) as caught:
        check_request(message)
    assert path[-1].name in caught.value.violations[0].field
    assert "at most" in caught.value.violations[0].description


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("root, path", FLOATS, ids=[f"{r.name}.{path_name(p)}" for r, p in FLOATS])
def test_every_float_field_refuses_non_finite_numbers(root, path, value):
    message = message_class(root)()
    set_leaf(message, path, value)
    with pytest.raises(InvalidInput, match="finite"):
        check_request(message)


@pytest.mark.parametrize("root, path", INT64S, ids=[f"{r.name}.{path_name(p)}" for r, p in INT64S])
def test_every_wide_integer_field_refuses_numbers_past_2_53(root, path):
    message = message_class(root)()
    signed = map_value(path).type not in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)
    set_leaf(message, path, MAX_INTEGER)
    check_request(message)
    for value in [2**62] + ([-(2**62)] if signed else []):
        message = message_class(root)()
        set_leaf(message, path, value)
        with pytest.raises(InvalidInput, match="outside"):
            check_request(message)
