"""gRPC clients of the peer services (datasets, checkpoints), called on behalf of the caller.

Used by the evaluation and training services. Every call carries the *caller's own* bearer token
(``Identity.token``, captured when the evaluation or job was created), so the peer applies its own tenancy: a tenant reaches exactly the dataset
versions and checkpoints it could reach itself, and another tenant's are NOT_FOUND. Each call has
a deadline. Peer errors come back as the same ``tuneforge.common.errors`` family, naming the peer.
Tokens are sent as call metadata and never logged (``Identity`` hides them from ``repr``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tuneforge.common import errors
from tuneforge.common.auth import Identity
from tuneforge.common.grpc import overload
from tuneforge.common.grpc.client import channel

T = TypeVar("T")

_ERROR_BY_CODE: dict[str, type[errors.TuneforgeError]] = {
    cls.family.value: cls for cls in errors.TuneforgeError.__subclasses__()
}


@dataclass(frozen=True)
class VersionInfo:
    """What a consumer needs of a dataset version (``GetDatasetVersion``, ``AcquireVersionLease``).

    ``kind`` is the record kind's name without prefix (``CHAT``, ``PREFERENCE``, ``TEXT``; ``""``
    when the peer did not say).
    """

    version_id: str
    manifest_uri: str
    split_counts: Mapping[str, int]
    kind: str = ""
    content_hash: str = ""


@dataclass(frozen=True)
class CheckpointDraft:
    """A committed checkpoint folder to register: where it is, its files, metrics and lineage.

    ``prefix`` is relative to the tenant's checkpoint area (``tenants/<t>/checkpoints/``); ``kind``
    is ``FULL``, ``LORA`` or ``PREFIX``.
    """

    job_id: str
    step: int
    kind: str
    prefix: str
    files: tuple[CheckpointFile, ...]
    metrics: Mapping[str, float]
    config: Mapping[str, Any]
    dataset_version_id: str = ""
    base_model: str = ""
    parent_checkpoint_id: str = ""


@dataclass(frozen=True)
class RegisteredCheckpoint:
    """What the checkpoint service answered to ``RegisterCheckpoint``."""

    checkpoint_id: str
    step: int
    metrics: Mapping[str, float]
    create_time: datetime | None


@dataclass(frozen=True)
class CheckpointFile:
    """One file of a checkpoint as its manifest records it."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class CheckpointInfo:
    """What a consumer needs of a checkpoint manifest (``GetManifest``)."""

    checkpoint_id: str
    job_id: str
    folder_uri: str
    is_adapter: bool
    base_model: str
    files: tuple[CheckpointFile, ...]


def peer_error(peer: str, address: str, exc: grpc.RpcError) -> errors.TuneforgeError:
    """Map a peer's status to our taxonomy, keeping its message (which names the resource)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or code.name
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return errors.FailedPrecondition(
            f"the {peer} service at {address} refused the caller's token ({details}): every service must "
            "accept the same tokens (TUNEFORGE_AUTH_TOKENS)")
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return errors.Unavailable(f"the {peer} service at {address} did not answer ({details}): retry later")
    cls = _ERROR_BY_CODE.get(code.name, errors.Internal)
    return cls(f"{peer} service: {details}")


# A peer past its capacity (its tuneforge-gate, or its own admission) refuses a call before any
# handler runs (tuneforge.common.grpc.overload): every method may be sent again, up to
# PEER_OVERLOAD_ATTEMPTS in all, within the call's own timeout.
PEER_OVERLOAD_ATTEMPTS = overload.OVERLOAD_ATTEMPTS


def overload_retry_after(exc: grpc.RpcError) -> float | None:
    """For an OVERLOADED refusal, the server's RetryInfo delay in seconds (0.0 when it sent none);
    None for any other error (a quota's RESOURCE_EXHAUSTED included)."""
    if not hasattr(exc, "code") or exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    try:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    except ValueError:  # details that contradict the call's code or message
        return None
    overloaded, delay = False, 0.0
    for detail in status.details if status else ():
        info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            overloaded = overloaded or info.reason == "OVERLOADED"
        elif detail.Unpack(retry):
            delay = retry.retry_delay.ToTimedelta().total_seconds()
    return delay if overloaded else None


class _Peer:
    """One channel per peer, shared by every caller; the caller's token goes in each call's metadata."""

    def __init__(self, name: str, address: str, stub_factory: Callable[[grpc.Channel], Any], timeout_s: float) -> None:
        self.name, self.address, self._factory, self.timeout_s = name, address, stub_factory, timeout_s
        self._stub: Any = None
        self._channel: grpc.Channel | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the channel (on service stop); a later call opens a new one."""
        with self._lock:
            if self._channel is not None:
                self._channel.close()
            self._channel, self._stub = None, None

    def call(self, caller: Identity, method: str, request: Any) -> Any:
        """``stub.<method>(request)`` as ``caller``; peer errors become ``TuneforgeError``s."""
        if not self.address:
            raise errors.FailedPrecondition(
                f"no {self.name} service is configured: set TUNEFORGE_{self.name.upper()}_ADDRESS")
        with self._lock:
            if self._stub is None:
                self._channel = channel(self.address, None, default_timeout=self.timeout_s)
                self._stub = self._factory(self._channel)
            stub = self._stub
        metadata = [("authorization", f"Bearer {caller.token}")] if caller.token else []
        deadline = time.monotonic() + self.timeout_s
        for attempt in range(PEER_OVERLOAD_ATTEMPTS):
            try:
                return getattr(stub, method)(request, timeout=max(0.001, deadline - time.monotonic()),
                                             metadata=metadata)
            except grpc.RpcError as exc:
                pause = overload.overload_pause(overload_retry_after(exc), attempt, deadline, PEER_OVERLOAD_ATTEMPTS)
                if pause is None:
                    raise peer_error(self.name, self.address, exc) from None
            time.sleep(pause)
        raise AssertionError("unreachable: the last attempt raises")


class GrpcDatasetVersions:
    """``DatasetService`` version lookups and leases (implements the reader's ``VersionLookup``)."""

    def __init__(self, address: str, timeout_s: float = 30.0) -> None:
        from tuneforge.datasets.v1 import datasets_pb2_grpc

        self._peer = _Peer("datasets", address, datasets_pb2_grpc.DatasetServiceStub, timeout_s)
        self.close = self._peer.close

    def get(self, caller: Identity, version_id: str) -> VersionInfo:
        """The version's manifest URI and split sizes; ``NotFound`` for unknown or foreign ids."""
        from tuneforge.datasets.v1 import datasets_pb2

        v = self._peer.call(caller, "GetDatasetVersion", datasets_pb2.GetDatasetVersionRequest(version_id=version_id)).version
        return _version_info(v)

    def acquire_lease(self, caller: Identity, version_id: str, holder: str) -> VersionInfo:
        """Lease ``version_id`` for ``holder`` (idempotent) so it cannot be deleted; returns the version."""
        from tuneforge.datasets.v1 import datasets_pb2

        req = datasets_pb2.AcquireVersionLeaseRequest(version_id=version_id, holder=holder)
        return _version_info(self._peer.call(caller, "AcquireVersionLease", req).version)

    def release_lease(self, caller: Identity, version_id: str, holder: str) -> bool:
        """Release ``holder``'s lease; returns whether one was held."""
        from tuneforge.datasets.v1 import datasets_pb2

        req = datasets_pb2.ReleaseVersionLeaseRequest(version_id=version_id, holder=holder)
        return bool(self._peer.call(caller, "ReleaseVersionLease", req).released)


def _version_info(v: Any) -> VersionInfo:
    from tuneforge.datasets.v1 import datasets_pb2

    kind = datasets_pb2.RecordKind.Name(v.kind).removeprefix("RECORD_KIND_") if v.kind else ""
    return VersionInfo(v.id, v.uri, dict(v.split_counts), kind, v.content_hash)


class GrpcCheckpoints:
    """``CheckpointService``: ``GetManifest`` (lookup), ``SetAlias``, ``RegisterCheckpoint``."""

    def __init__(self, address: str, timeout_s: float = 30.0) -> None:
        from tuneforge.checkpoints.v1 import checkpoints_pb2_grpc

        self._peer = _Peer("checkpoints", address, checkpoints_pb2_grpc.CheckpointServiceStub, timeout_s)
        self.close = self._peer.close

    def lookup(self, caller: Identity, checkpoint: str) -> CheckpointInfo:
        """A checkpoint by id or ``<job_id>@<alias>``; ``NotFound`` for unknown or foreign ones."""
        from tuneforge.checkpoints.v1 import checkpoints_pb2 as pb

        m = self._peer.call(caller, "GetManifest", pb.GetManifestRequest(checkpoint=checkpoint)).manifest
        files = tuple(CheckpointFile(f.path, f.size, f.sha256) for f in m.files)
        return CheckpointInfo(m.checkpoint_id, m.lineage.job_id, m.uri, m.kind != pb.CHECKPOINT_KIND_FULL,
                              m.lineage.base_model, files)

    def set_alias(self, caller: Identity, job_id: str, alias: str, checkpoint_id: str) -> None:
        """Point ``alias`` of ``job_id`` at ``checkpoint_id`` (``SetAlias``)."""
        from tuneforge.checkpoints.v1 import checkpoints_pb2 as pb

        self._peer.call(caller, "SetAlias", pb.SetAliasRequest(job_id=job_id, alias=alias, checkpoint_id=checkpoint_id))

    def register(self, caller: Identity, draft: CheckpointDraft) -> RegisteredCheckpoint:
        """Register a committed checkpoint (idempotent on job and step with the same content)."""
        from google.protobuf import struct_pb2

        from tuneforge.checkpoints.v1 import checkpoints_pb2 as pb

        config = struct_pb2.Struct()
        config.update(dict(draft.config))
        req = pb.RegisterCheckpointRequest(
            job_id=draft.job_id, step=draft.step, kind=pb.CheckpointKind.Value(f"CHECKPOINT_KIND_{draft.kind}"),
            prefix=draft.prefix, files=[pb.FileEntry(path=f.path, size=f.size, sha256=f.sha256) for f in draft.files],
            metrics=dict(draft.metrics), config=config,
            lineage=pb.Lineage(job_id=draft.job_id, dataset_version_id=draft.dataset_version_id,
                               base_model=draft.base_model, parent_checkpoint_id=draft.parent_checkpoint_id))
        m = self._peer.call(caller, "RegisterCheckpoint", req).manifest
        created = m.create_time.ToDatetime(tzinfo=UTC) if m.HasField("create_time") else None
        return RegisteredCheckpoint(m.checkpoint_id, m.step, dict(m.metrics), created)
