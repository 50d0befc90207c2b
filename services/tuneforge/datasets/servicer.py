"""DatasetService over gRPC: thin shell, proto -> domain -> proto (errors mapped by the interceptor)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge.common.auth import current_identity
from tuneforge.common.errors import InvalidInput, ResourceExhausted
from tuneforge.common.idempotency import Idempotency, digest_of, proto_digest
from tuneforge.common.paging import next_page_token, page_bounds
from tuneforge.datasets import convert
from tuneforge.datasets.domain.model import RunState
from tuneforge.datasets.domain.runs import CurationRuns
from tuneforge.datasets.domain.service import MAX_PAGE, DatasetCatalogService
from tuneforge.datasets.v1 import datasets_pb2 as pb
from tuneforge.datasets.v1 import datasets_pb2_grpc as pb_grpc

SPOOL_PREFIX = "upload-"  # spool folders of uploads in flight (left ones are swept at start-up)


def _tenant() -> str:
    return current_identity().tenant


def _page(page: Any) -> tuple[int, int]:
    return page_bounds(page.page_size, page.page_token, max_size=MAX_PAGE)


def _next(offset: int, size: int, got: int) -> str:
    # A full page may have a successor; an empty next page ends the listing.
    return next_page_token(offset, size, offset + size + 1) if got == size else ""


class DatasetServicer(pb_grpc.DatasetServiceServicer):
    """Every RPC acts as the caller's tenant (from the bearer token)."""

    def __init__(self, service: DatasetCatalogService, runs: CurationRuns, max_upload_bytes: int,
                 idempotency: Idempotency) -> None:
        self._svc = service
        self._runs = runs
        self._max_upload = max_upload_bytes
        self._idem = idempotency

    def _version_pb(self, version: Any) -> pb.DatasetVersion:
        return convert.version_to_pb(version, self._svc.files.uri(version.prefix))

    def _spool(self, chunks: Iterator[pb.UploadDatasetRequest], dest: Path) -> str:
        """Write the chunks to ``dest``; returns their sha256 (part of the request's digest)."""
        total, sha = 0, hashlib.sha256()
        with dest.open("wb") as out:
            for message in chunks:
                if message.WhichOneof("payload") != "chunk":
                    raise InvalidInput.field_error("metadata", "sent twice: send metadata first, then only chunks")
                total += len(message.chunk)
                if total > self._max_upload:
                    raise ResourceExhausted(f"upload is larger than {self._max_upload} bytes: split the file",
                                            reason="FILE_SIZE")
                out.write(message.chunk)
                sha.update(message.chunk)
        return sha.hexdigest()

    def UploadDataset(self, request_iterator: Iterator[pb.UploadDatasetRequest], context: Any) -> pb.UploadDatasetResponse:
        """Spools the streamed bytes to disk, then validates (and curates, if asked) and stores a version."""
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "metadata":
            raise InvalidInput.field_error("metadata", "missing: the first message must carry the upload metadata")
        m = first.metadata
        options = convert.ingest_options(m.file_name, m.format, m.file_type, m.validation_policy,
                                         m.max_tokens_per_row, m.category_field)
        curation = convert.ingest_curation_from_pb(m, "curation")
        spool = self._svc.folders.make(SPOOL_PREFIX)
        tenant = _tenant()
        try:
            data_sha = self._spool(request_iterator, spool / "upload")
            # The body is the metadata and the bytes: concurrent identical retries wait for the first.
            version = self._idem.run(
                tenant, "UploadDataset", m.request_id, digest_of(proto_digest(m, "request_id"), data_sha),
                create=lambda: self._svc.ingest(tenant, m.dataset_name, m.description, spool / "upload",
                                                options, curation)[1].id,
                load=lambda vid: self._svc.get_version(tenant, vid))
        finally:
            self._svc.discard(spool)
        dataset = self._svc.get_dataset(tenant, version.dataset_id)
        return pb.UploadDatasetResponse(dataset=convert.dataset_to_pb(dataset), version=self._version_pb(version),
                                        validation=convert.validation_to_pb(version))

    def RegisterDataset(self, request: pb.RegisterDatasetRequest, context: Any) -> pb.RegisterDatasetResponse:
        """Ingests an object of the service's store (under the caller's tenant prefix)."""
        name = request.source_uri.rsplit("/", 1)[-1]
        options = convert.ingest_options(name, request.format, request.file_type, request.validation_policy,
                                         request.max_tokens_per_row, "")
        tenant, curation = _tenant(), convert.ingest_curation_from_pb(request, "curation")
        version = self._idem.run(
            tenant, "RegisterDataset", request.request_id, proto_digest(request, "request_id"),
            create=lambda: self._svc.register(tenant, request.dataset_name, request.source_uri, options,
                                              curation)[1].id,
            load=lambda vid: self._svc.get_version(tenant, vid))
        dataset = self._svc.get_dataset(tenant, version.dataset_id)
        return pb.RegisterDatasetResponse(dataset=convert.dataset_to_pb(dataset), version=self._version_pb(version),
                                          validation=convert.validation_to_pb(version))

    def CurateDataset(self, request: pb.CurateDatasetRequest, context: Any) -> pb.CurateDatasetResponse:
        """Starts a run in the background and returns it at once."""
        tenant, config = _tenant(), convert.pipeline_from_pb(request)
        run = self._idem.run(tenant, "CurateDataset", request.request_id, proto_digest(request, "request_id"),
                             create=lambda: self._runs.start(tenant, request.version_id, config).id,
                             load=lambda run_id: self._runs.get(tenant, run_id),
                             retry_if=lambda r: r.state is RunState.FAILED)  # a failed run is run again
        return pb.CurateDatasetResponse(run=convert.run_to_pb(run))

    def WatchCurationRun(self, request: pb.WatchCurationRunRequest, context: Any) -> Iterator[pb.CurationEvent]:
        """Streams progress events until the run ends."""
        for event in self._runs.watch(_tenant(), request.run_id, request.after_sequence, context.is_active):
            yield convert.event_to_pb(event)

    def GetCurationRun(self, request: pb.GetCurationRunRequest, context: Any) -> pb.GetCurationRunResponse:
        """Returns a run's state, steps and output."""
        return pb.GetCurationRunResponse(run=convert.run_to_pb(self._runs.get(_tenant(), request.run_id)))

    def GetDataset(self, request: pb.GetDatasetRequest, context: Any) -> pb.GetDatasetResponse:
        """Returns one dataset by id or name."""
        return pb.GetDatasetResponse(dataset=convert.dataset_to_pb(self._svc.get_dataset(_tenant(), request.dataset)))

    def ListDatasets(self, request: pb.ListDatasetsRequest, context: Any) -> pb.ListDatasetsResponse:
        """Lists the caller's datasets."""
        offset, size = _page(request.page)
        items = self._svc.list_datasets(_tenant(), offset, size)
        return pb.ListDatasetsResponse(datasets=[convert.dataset_to_pb(d) for d in items],
                                       next_page_token=_next(offset, size, len(items)))

    def DeleteDataset(self, request: pb.DeleteDatasetRequest, context: Any) -> pb.DeleteDatasetResponse:
        """Deletes a dataset unless a version is leased."""
        self._svc.delete_dataset(_tenant(), request.dataset)
        return pb.DeleteDatasetResponse()

    def GetDatasetVersion(self, request: pb.GetDatasetVersionRequest, context: Any) -> pb.GetDatasetVersionResponse:
        """Returns one version with lineage."""
        return pb.GetDatasetVersionResponse(version=self._version_pb(self._svc.get_version(_tenant(), request.version_id)))

    def ListDatasetVersions(self, request: pb.ListDatasetVersionsRequest, context: Any) -> pb.ListDatasetVersionsResponse:
        """Lists a dataset's versions, newest first."""
        offset, size = _page(request.page)
        items = self._svc.list_versions(_tenant(), request.dataset, offset, size)
        return pb.ListDatasetVersionsResponse(versions=[self._version_pb(v) for v in items],
                                              next_page_token=_next(offset, size, len(items)))

    def DeleteDatasetVersion(self, request: pb.DeleteDatasetVersionRequest, context: Any) -> pb.DeleteDatasetVersionResponse:
        """Deletes a version unless leased."""
        self._svc.delete_version(_tenant(), request.version_id)
        return pb.DeleteDatasetVersionResponse()

    def PreviewRows(self, request: pb.PreviewRowsRequest, context: Any) -> pb.PreviewRowsResponse:
        """Returns rows in canonical form."""
        rows = self._svc.preview(_tenant(), request.version_id, request.split, request.offset, request.limit)
        return pb.PreviewRowsResponse(rows=[convert.row_to_struct(r) for r in rows])

    def GetDatasetStats(self, request: pb.GetDatasetStatsRequest, context: Any) -> pb.GetDatasetStatsResponse:
        """Returns counts, token lengths, turns, categories, duplicates and PII."""
        s = self._svc.stats(_tenant(), request.version_id, request.tokenizer)
        return pb.GetDatasetStatsResponse(
            row_count=s.get("row_count", 0), split_counts=s.get("split_counts", {}),
            token_length_percentiles=s.get("token_length_percentiles", {}),
            token_length_histogram=[pb.HistogramBucket(**b) for b in s.get("token_length_histogram", [])],
            turns_percentiles=s.get("turns_percentiles", {}), category_counts=s.get("category_counts", {}),
            duplicates_removed=s.get("duplicates_removed", 0), pii_found=s.get("pii_found", {}),
            label_counts=s.get("label_counts", {}))

    def GetRejectedRows(self, request: pb.GetRejectedRowsRequest, context: Any) -> pb.GetRejectedRowsResponse:
        """Returns a page of the rejected-rows report."""
        offset, size = _page(request.page)
        rows, total = self._svc.rejected_rows(_tenant(), request.version_id, offset, size)
        return pb.GetRejectedRowsResponse(rows=[pb.RejectedRow(**r) for r in rows], total=total,
                                          next_page_token=next_page_token(offset, size, total))

    def CreateMixture(self, request: pb.CreateMixtureRequest, context: Any) -> pb.CreateMixtureResponse:
        """Samples several versions by weight into a new version."""
        tenant, components = _tenant(), [(c.version_id, c.weight, c.task) for c in request.components]
        version = self._idem.run(tenant, "CreateMixture", request.request_id, proto_digest(request, "request_id"),
                                 create=lambda: self._svc.create_mixture(tenant, request.dataset_name, components,
                                                                         request.total_rows, request.seed).id,
                                 load=lambda vid: self._svc.get_version(tenant, vid))
        return pb.CreateMixtureResponse(version=self._version_pb(version))

    def AcquireVersionLease(self, request: pb.AcquireVersionLeaseRequest, context: Any) -> pb.AcquireVersionLeaseResponse:
        """Records that a job uses a version."""
        version = self._svc.acquire_lease(_tenant(), request.version_id, request.holder[:200])
        return pb.AcquireVersionLeaseResponse(version=self._version_pb(version))

    def ReleaseVersionLease(self, request: pb.ReleaseVersionLeaseRequest, context: Any) -> pb.ReleaseVersionLeaseResponse:
        """Releases a job's lease."""
        return pb.ReleaseVersionLeaseResponse(released=self._svc.release_lease(_tenant(), request.version_id,
                                                                               request.holder[:200]))
