"""gRPC clients of the peer services: moved to ``tuneforge.common.peers.clients`` (shared with training).

Re-exported here so the evaluation adapters keep one import path.
"""

from tuneforge.common.peers.clients import (
    CheckpointFile,
    CheckpointInfo,
    GrpcCheckpoints,
    GrpcDatasetVersions,
    VersionInfo,
    peer_error,
)

__all__ = ["CheckpointFile", "CheckpointInfo", "GrpcCheckpoints", "GrpcDatasetVersions", "VersionInfo", "peer_error"]
