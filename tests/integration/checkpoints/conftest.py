"""Fixtures for checkpoint integration tests: the real service on the real S3 server (versitygw)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tuneforge.checkpoints.app import CheckpointSettings, build_app
from tuneforge.checkpoints.v1 import checkpoints_pb2 as pb
from tuneforge.checkpoints.v1 import checkpoints_pb2_grpc as pb_grpc
from tuneforge.common.storage.s3 import S3ObjectStore


@dataclass
class CheckpointService:
    """The running service, a stub per tenant, and a test-side store on the same bucket."""

    handle: Any
    acme: pb_grpc.CheckpointServiceStub
    acme2: pb_grpc.CheckpointServiceStub
    store: S3ObjectStore


@pytest.fixture
def service(make_service: Callable[..., Any], s3_server: Any, s3_store: S3ObjectStore,
            tmp_path: Path) -> CheckpointService:
    handle = make_service(
        CheckpointSettings, build_app,
        object_store_uri=s3_server.uri(s3_store.bucket),
        s3_access_key=s3_server.access_key, s3_secret_key=s3_server.secret_key,
        hygiene_interval_s=0, models_dir=tmp_path / "models",
    )
    return CheckpointService(handle, pb_grpc.CheckpointServiceStub(handle.channel()),
                             pb_grpc.CheckpointServiceStub(handle.channel("other")), s3_store)


def register_request(job: str, step: int, prefix: str, files: Any, loss: float | None = None,
                     kind: int = pb.CHECKPOINT_KIND_LORA, base_model: str = "") -> pb.RegisterCheckpointRequest:
    """A RegisterCheckpoint request for files written by CheckpointWriter."""
    return pb.RegisterCheckpointRequest(
        job_id=job, step=step, kind=kind, prefix=prefix,
        files=[pb.FileEntry(path=f.path, size=f.size, sha256=f.sha256) for f in files],
        metrics={} if loss is None else {"eval_loss": loss},
        lineage=pb.Lineage(job_id=job, base_model=base_model, tuneforge_version="0.1.0"),
    )


def download(stub: pb_grpc.CheckpointServiceStub, checkpoint_id: str, path: str, offset: int = 0) -> bytes:
    """Concatenate a DownloadFile stream."""
    req = pb.DownloadFileRequest(checkpoint_id=checkpoint_id, path=path, offset=offset)
    return b"".join(r.data for r in stub.DownloadFile(req, timeout=60))
