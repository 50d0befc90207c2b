"""A property test over the whole API, driven by the proto descriptors (new fields and RPCs are
covered the day they are added): every string field of every request at 1 MiB, every number at
NaN, infinity, -1 and 2^62 (2^31-1 for 32-bit fields), against the four real services.

Each call gets a generous deadline; what is asserted is the status code (a caller's error, never
INTERNAL/UNKNOWN, never a stalled call), bounded messages with no server path, and that every
service keeps answering health checks throughout.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.fixtures.protowalk import SERVICES, leaf_paths, map_value, message_class, path_name, set_leaf
from tuneforge.checkpoints.app import build_app as build_checkpoints
from tuneforge.checkpoints.settings import CheckpointSettings
from tuneforge.datasets.app import build_app as build_datasets
from tuneforge.datasets.settings import DatasetSettings
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.evaluation.app import build_app as build_evaluation
from tuneforge.evaluation.settings import EvaluationSettings
from tuneforge.training.app import build_app as build_training
from tuneforge.training.settings import TrainingSettings

pytestmark = pytest.mark.integration

# A caller's mistake, or success: anything else (INTERNAL, UNKNOWN, DEADLINE_EXCEEDED from a
# stalled handler, UNAVAILABLE from a dead server, RESOURCE_EXHAUSTED from an oversized trailer)
# is a defect.
CALLER_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE}
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
INT32 = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32}
UINT32 = {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32}
INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64}
UINT64 = {FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64}
FLOATS = {FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE}
DESTRUCTIVE = ("Delete", "Cancel", "Release", "Unpin", "ApplyRetention")
MIB = 1 << 20


def _methods() -> list[tuple[str, MethodDescriptor]]:
    out = []
    for svc in SERVICES:
        module = importlib.import_module(f"tuneforge.{svc}.v1.{svc}_pb2")
        for service in module.DESCRIPTOR.services_by_name.values():
            out += [(svc, m) for m in service.methods]
    return out


def _cases(method: MethodDescriptor) -> Iterator[tuple[str, list[FieldDescriptor], Any, set[grpc.StatusCode]]]:
    """(label, path, value, accepted codes) for every scalar field of the request."""
    for _, path in leaf_paths(method.input_type):
        leaf = map_value(path)
        name = path_name(path)
        if leaf.type == FieldDescriptor.TYPE_STRING:
            yield f"{name}=1MiB", path, "x" * MIB, REFUSED
        elif leaf.type in FLOATS:
            for value in (math.nan, math.inf, -math.inf):
                yield f"{name}={value}", path, value, REFUSED
            yield f"{name}=-1", path, -1.0, CALLER_CODES
        elif leaf.type in INT64 | UINT64 and leaf.name != "seed":
            yield f"{name}=2^62", path, 2**62, REFUSED
            if leaf.type in INT64:
                yield f"{name}=-1", path, -1, CALLER_CODES
        elif leaf.type in INT32:
            yield f"{name}=2^31-1", path, 2**31 - 1, CALLER_CODES
            yield f"{name}=-1", path, -1, CALLER_CODES
        elif leaf.type in UINT32:
            yield f"{name}=2^32-1", path, 2**32 - 1, CALLER_CODES


class Stack:
    """The four services, a real dataset version, and a generic caller per RPC."""

    def __init__(self, make_service: Callable[..., Any], tmp_path: Any) -> None:
        shared = {"models_dir": tmp_path / "models"}
        datasets = make_service(DatasetSettings, build_datasets, **shared)
        checkpoints = make_service(CheckpointSettings, build_checkpoints, hygiene_interval_s=0, **shared)
        peers = {"datasets_address": datasets.address, "checkpoints_address": checkpoints.address}
        evaluation = make_service(EvaluationSettings, build_evaluation, **peers, **shared)
        training = make_service(TrainingSettings, build_training, **peers, **shared)
        self.handles = {"datasets": datasets, "checkpoints": checkpoints, "evaluation": evaluation,
                        "training": training}
        self.channels = {name: h.channel() for name, h in self.handles.items()}
        self.paths = [str(tmp_path)]
        self.version_id = self._seed()

    def _seed(self) -> str:
        stub = self.channels["datasets"]
        upload = stub.stream_unary("/tuneforge.datasets.v1.DatasetService/UploadDataset",
                                   request_serializer=ds.UploadDatasetRequest.SerializeToString,
                                   response_deserializer=ds.UploadDatasetResponse.FromString)
        rows = b"".join(b'{"instruction": "q%d", "output": "a%d"}\n' % (i, i) for i in range(5))
        response = upload(iter([ds.UploadDatasetRequest(metadata=ds.UploadMetadata(dataset_name="ds",
                                                                                    file_name="d.jsonl")),
                                ds.UploadDatasetRequest(chunk=rows)]), timeout=60)
        return response.version.id

    def base(self, method: MethodDescriptor) -> Any:
        """A request with real ids where the request names a dataset version (deeper checks)."""
        request = message_class(method.input_type)()
        if not method.name.startswith(DESTRUCTIVE):
            for field in method.input_type.fields:
                if field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated and (
                        field.name in ("version_id", "dataset_version_id")):
                    setattr(request, field.name, self.version_id)
                elif field.name == "dataset" and field.type == FieldDescriptor.TYPE_STRING:
                    request.dataset = "ds"
        return request

    def call(self, svc: str, method: MethodDescriptor, request: Any) -> tuple[grpc.StatusCode, str]:
        full = f"/{method.containing_service.full_name}/{method.name}"
        out_cls = message_class(method.output_type)
        kwargs = {"request_serializer": type(request).SerializeToString, "response_deserializer": out_cls.FromString}
        channel = self.channels[svc]
        try:
            if method.client_streaming:
                channel.stream_unary(full, **kwargs)(iter([request]), timeout=60)
            elif method.server_streaming:
                list(channel.unary_stream(full, **kwargs)(request, timeout=60))
            else:
                channel.unary_unary(full, **kwargs)(request, timeout=60)
        except grpc.RpcError as err:
            return err.code(), err.details() or ""
        return grpc.StatusCode.OK, ""


@pytest.fixture
def stack(make_service, tmp_path) -> Stack:
    return Stack(make_service, tmp_path)


def test_every_field_of_every_request_is_answered_as_a_caller_error(stack: Stack) -> None:
    failures: list[str] = []
    health_failures: list[str] = []
    stop = threading.Event()

    def watch_health() -> None:
        stubs = {name: health_pb2_grpc.HealthStub(h.channel(None)) for name, h in stack.handles.items()}
        while not stop.is_set():
            for name, stub in stubs.items():
                try:
                    status = stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status
                    if status != health_pb2.HealthCheckResponse.SERVING:
                        health_failures.append(f"{name}: {status}")
                except grpc.RpcError as err:
                    health_failures.append(f"{name}: {err.code()}")
            stop.wait(0.2)

    prober = threading.Thread(target=watch_health, daemon=True)
    prober.start()
    calls = 0
    try:
        for svc, method in _methods():
            for label, path, value, accepted in _cases(method):
                request = stack.base(method)
                try:
                    set_leaf(request, path, value)
                except (ValueError, TypeError):  # a value the field's type cannot hold
                    continue
                code, details = stack.call(svc, method, request)
                calls += 1
                where = f"{method.containing_service.name}.{method.name}({label})"
                if code not in accepted:
                    failures.append(f"{where}: {code.name} {details[:200]}")
                elif len(details) > 2048 or any(p in details for p in stack.paths):
                    failures.append(f"{where}: message unbounded or with a server path: {details[:200]}")
    finally:
        stop.set()
        prober.join(30)
    assert failures == []
    assert health_failures == []
    assert calls > 400  # every RPC's every scalar field, several values each


def test_forged_page_tokens_are_invalid_argument_on_every_list_rpc(stack: Stack) -> None:
    import base64

    forged = [base64.urlsafe_b64encode(f"o:{n}".encode()).decode() for n in (2**62, 10**30, -5)] + ["!!", "x" * 200]
    failures = []
    listed = 0
    for svc, method in _methods():
        page = method.input_type.fields_by_name.get("page")
        if page is None:
            continue
        listed += 1
        for token in forged:
            request = stack.base(method)
            request.page.page_token = token
            code, details = stack.call(svc, method, request)
            if code != grpc.StatusCode.INVALID_ARGUMENT:
                failures.append(f"{method.name}({token[:20]}): {code.name} {details[:120]}")
    assert listed >= 5 and failures == []


ODD_STRINGS = ["../../etc/passwd", "/etc/passwd", "file:///etc/passwd", "s3://other-bucket/key", "a\x00b",
               "\U0001f600\u202e", "%s%n{0}", " ", "x" * 256, "tenants/acme2/datasets/x", "C:\\Windows\\win.ini"]


def test_odd_but_short_strings_in_every_field_are_never_internal(stack: Stack) -> None:
    """Paths, traversals, other tenants' keys, NULs, format strings and the longest accepted value in
    every string field: a caller's error or success, never INTERNAL, never a server path."""
    failures: list[str] = []
    for svc, method in _methods():
        for _, path in leaf_paths(method.input_type):
            if map_value(path).type != FieldDescriptor.TYPE_STRING:
                continue
            for value in ODD_STRINGS:
                request = stack.base(method)
                set_leaf(request, path, value)
                code, details = stack.call(svc, method, request)
                if code not in CALLER_CODES or any(p in details for p in stack.paths) or "site-packages" in details:
                    failures.append(f"{method.name}({path_name(path)}={value[:20]!r}): {code.name} {details[:160]}")
    assert failures == []
