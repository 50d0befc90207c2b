"""API-edge bounds, driven by the descriptors: every string, float and integer field of every
request message of every service (a field added tomorrow is covered without touching this test)."""

from __future__ import annotations

import importlib
import math

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from tuneforge.common.errors import InvalidInput
from tuneforge.common.grpc.limits import MAX_INTEGER, UNBOUNDED_INTEGERS, check_request, string_limit

SERVICES = ("datasets", "training", "evaluation", "checkpoints")
_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64,
          FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64}


def request_types() -> list[Descriptor]:
    out = []
    for svc in SERVICES:
        module = importlib.import_module(f"tuneforge.{svc}.v1.{svc}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            out += [m.input_type for m in service.methods]
    return out


def leaf_paths(root: Descriptor, max_depth: int = 5) -> list[tuple[Descriptor, list[FieldDescriptor]]]:
    """Every scalar field reachable from ``root`` (through sub-messages, lists and maps)."""
    out: list[tuple[Descriptor, list[FieldDescriptor]]] = []

    def walk(d: Descriptor, path: list[FieldDescriptor], seen: frozenset[str]) -> None:
        for f in d.fields:
            if f.message_type is not None:
                if f.message_type.full_name in seen or len(path) >= max_depth:
                    continue
                if f.message_type.GetOptions().map_entry:
                    out.append((root, [*path, f]))  # the map itself: fuzzed through its value
                    continue
                walk(f.message_type, [*path, f], seen | {f.message_type.full_name})
            elif f.type != FieldDescriptor.TYPE_ENUM:
                out.append((root, [*path, f]))
    walk(root, [], frozenset({root.full_name}))
    return out


def set_leaf(message, path: list[FieldDescriptor], value) -> None:
    """Set the leaf of ``path`` to ``value``, creating the messages on the way."""
    field, rest = path[0], path[1:]
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        value_field = field.message_type.fields_by_name["value"]
        target = getattr(message, field.name)
        key = "k" if field.message_type.fields_by_name["key"].type == FieldDescriptor.TYPE_STRING else 1
        if value_field.message_type is not None:
            target[key]  # reading a missing key of a message map creates the entry
            return
        target[key] = value
        return
    if not rest:
        if field.is_repeated:
            getattr(message, field.name).append(value)
        else:
            setattr(message, field.name, value)
        return
    child = getattr(message, field.name).add() if field.is_repeated else getattr(message, field.name)
    set_leaf(child, rest, value)
    if not field.is_repeated:
        child.SetInParent()


def path_name(path: list[FieldDescriptor]) -> str:
    return ".".join(f.name for f in path)


CASES = [(root, path) for root in request_types() for root, path in leaf_paths(root)]


def _cls(descriptor: Descriptor):
    from google.protobuf import message_factory
    return message_factory.GetMessageClass(descriptor)


def _map_value(path):
    last = path[-1]
    if last.message_type is not None and last.message_type.GetOptions().map_entry:
        return last.message_type.fields_by_name["value"]
    return last


STRINGS = [(r, p) for r, p in CASES if _map_value(p).type == FieldDescriptor.TYPE_STRING]
FLOATS = [(r, p) for r, p in CASES if _map_value(p).type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE)]
INT64S = [(r, p) for r, p in CASES if _map_value(p).type in _INT64 and p[-1].name not in UNBOUNDED_INTEGERS]


def test_the_walk_covers_every_service():
    assert len(STRINGS) > 100 and len(FLOATS) > 20
    assert {r.full_name.split(".")[1] for r, _ in STRINGS} == set(SERVICES)


@pytest.mark.parametrize("root, path", STRINGS, ids=[f"{r.name}.{path_name(p)}" for r, p in STRINGS])
def test_every_string_field_is_bounded(root, path):
    message = _cls(root)()
    limit = string_limit(_map_value(path))
    set_leaf(message, path, "x" * limit)
    check_request(message)  # at the limit: accepted
    message = _cls(root)()
    set_leaf(message, path, "x" * (1 << 20))
    with pytest.raises(InvalidInput) as caught:
        check_request(message)
    assert path[-1].name in caught.value.violations[0].field
    assert "at most" in caught.value.violations[0].description


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("root, path", FLOATS, ids=[f"{r.name}.{path_name(p)}" for r, p in FLOATS])
def test_every_float_field_refuses_non_finite_numbers(root, path, value):
    message = _cls(root)()
    set_leaf(message, path, value)
    with pytest.raises(InvalidInput, match="finite"):
        check_request(message)


@pytest.mark.parametrize("root, path", INT64S, ids=[f"{r.name}.{path_name(p)}" for r, p in INT64S])
def test_every_wide_integer_field_refuses_numbers_past_2_53(root, path):
    message = _cls(root)()
    signed = _map_value(path).type not in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)
    set_leaf(message, path, MAX_INTEGER)
    check_request(message)
    for value in [2**62] + ([-(2**62)] if signed else []):
        message = _cls(root)()
        set_leaf(message, path, value)
        with pytest.raises(InvalidInput, match="outside"):
            check_request(message)
