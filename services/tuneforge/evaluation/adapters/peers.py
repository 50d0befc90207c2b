"""The evaluation service's view of its peers, built on ``tuneforge.common.peers``.

- the gRPC clients of the dataset and checkpoint services, re-exported so the evaluation adapters
  keep one import path;
- ``PeerDatasetLeases``: leases on the dataset versions an evaluation reads (implements the
  domain's ``DatasetLeases``) through the dataset service, on the caller's behalf.
"""

from __future__ import annotations

from tuneforge.common.auth import Identity
from tuneforge.common.errors import NotFound
from tuneforge.common.peers.clients import (
    CheckpointFile,
    CheckpointInfo,
    GrpcCheckpoints,
    GrpcDatasetVersions,
    VersionInfo,
    peer_error,
)

__all__ = ["CheckpointFile", "CheckpointInfo", "GrpcCheckpoints", "GrpcDatasetVersions", "PeerDatasetLeases",
           "VersionInfo", "peer_error"]


class PeerDatasetLeases:
    """Implements ``DatasetLeases`` with ``AcquireVersionLease`` / ``ReleaseVersionLease``."""

    def __init__(self, versions: GrpcDatasetVersions) -> None:
        self._versions = versions

    def acquire(self, caller: Identity, version_id: str, holder: str) -> None:
        """Lease the version for ``holder`` (idempotent); peer errors keep their family (``NotFound``, ...)."""
        self._versions.acquire_lease(caller, version_id, holder)

    def release(self, caller: Identity, version_id: str, holder: str) -> None:
        """Release ``holder``'s lease; a version deleted meanwhile is not an error."""
        try:
            self._versions.release_lease(caller, version_id, holder)
        except NotFound:
            return
