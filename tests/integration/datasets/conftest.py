"""A real dataset service (gRPC on 127.0.0.1) on a real S3 server and SQLite."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from tuneforge.common.storage.s3 import S3ObjectStore
from tuneforge.datasets.app import DatasetSettings, build_app
from tuneforge.datasets.v1 import datasets_pb2 as pb
from tuneforge.datasets.v1 import datasets_pb2_grpc as pb_grpc


@dataclass
class DatasetsService:
    """The running service, a stub per tenant and a test-side store on the same bucket."""

    stub: pb_grpc.DatasetServiceStub
    other: pb_grpc.DatasetServiceStub
    anonymous: pb_grpc.DatasetServiceStub
    store: S3ObjectStore
    store_uri: str
    server: Any = None  # the RunningServer, for tests of the shutdown

    def upload(self, data: bytes, file_name: str, *, dataset: str = "ds", chunk: int = 64 << 10,
               stub: Any = None, **meta: Any) -> pb.UploadDatasetResponse:
        """Upload ``data`` in chunks through the client stream."""
        def requests() -> Iterator[pb.UploadDatasetRequest]:
            yield pb.UploadDatasetRequest(metadata=pb.UploadMetadata(dataset_name=dataset, file_name=file_name, **meta))
            for i in range(0, len(data), chunk):
                yield pb.UploadDatasetRequest(chunk=data[i : i + chunk])
        return (stub or self.stub).UploadDataset(requests(), timeout=120)

    def objects(self) -> list[str]:
        """Every key in the bucket."""
        return [o.key for o in self.store.list("")]


def jsonl(rows: Iterable[Any]) -> bytes:
    """Rows as JSONL bytes."""
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def gz(data: bytes) -> bytes:
    """gzip-compressed bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as f:
        f.write(data)
    return buf.getvalue()


@pytest.fixture
def service(make_service: Callable[..., Any], s3_server: Any, s3_store: S3ObjectStore) -> Iterator[DatasetsService]:
    """Start the service on a fresh bucket."""
    uri = s3_server.uri(s3_store.bucket)
    handle = make_service(DatasetSettings, build_app, object_store_uri=uri, s3_access_key=s3_server.access_key,
                          s3_secret_key=s3_server.secret_key, max_archive_entries=20, max_expansion_ratio=50.0)
    stubs = [pb_grpc.DatasetServiceStub(handle.channel(t)) for t in ("default", "other", None)]
    yield DatasetsService(*stubs, s3_store, f"s3://{s3_store.bucket}", handle.server)


def code_of(exc: grpc.RpcError) -> grpc.StatusCode:
    """The status code of an RPC error."""
    return exc.code()
