"""gRPC clients of the peer services, called on behalf of the caller.

Every call carries the *caller's own* bearer token (``Identity.token``, captured when the
evaluation was created), so the peer applies its own tenancy: a tenant reaches exactly the dataset
versions and checkpoints it could reach itself, and another tenant's are NOT_FOUND. Each call has
a deadline. Peer errors come back as the same ``tuneforge.common.errors`` family, naming the peer.
Tokens are sent as call metadata and never logged (``Identity`` hides them from ``repr``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from tuneforge.common import errors
from tuneforge.common.auth import Identity
from tuneforge.common.grpc.client import channel

T = TypeVar("T")

_ERROR_BY_CODE: dict[str, type[errors.TuneforgeError]] = {
    cls.family.value: cls for cls in errors.TuneforgeError.__subclasses__()
}


@dataclass(frozen=True)
class VersionInfo:
    """What evaluation needs of a dataset version (``GetDatasetVersion``)."""

    version_id: str
    manifest_uri: str
    split_counts: Mapping[str, int]


@dataclass(frozen=True)
class CheckpointFile:
    """One file of a checkpoint as its manifest records it."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class CheckpointInfo:
    """What evaluation needs of a checkpoint manifest (``GetManifest``)."""

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
        try:
            return getattr(stub, method)(request, timeout=self.timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            raise peer_error(self.name, self.address, exc) from None


class GrpcDatasetVersions:
    """``DatasetService.GetDatasetVersion`` (implements the reader's ``VersionLookup``)."""

    def __init__(self, address: str, timeout_s: float = 30.0) -> None:
        from tuneforge.datasets.v1 import datasets_pb2_grpc

        self._peer = _Peer("datasets", address, datasets_pb2_grpc.DatasetServiceStub, timeout_s)
        self.close = self._peer.close

    def get(self, caller: Identity, version_id: str) -> VersionInfo:
        """The version's manifest URI and split sizes; ``NotFound`` for unknown or foreign ids."""
        from tuneforge.datasets.v1 import datasets_pb2

        v = self._peer.call(caller, "GetDatasetVersion", datasets_pb2.GetDatasetVersionRequest(version_id=version_id)).version
        return VersionInfo(v.id, v.uri, dict(v.split_counts))


class GrpcCheckpoints:
    """``CheckpointService.GetManifest`` (lookup) and ``SetAlias`` (the ``best`` alias)."""

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
