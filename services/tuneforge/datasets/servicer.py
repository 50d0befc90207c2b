"""DatasetService over gRPC: thin shell, proto -> domain -> proto (errors mapped by the interceptor)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuneforge.common.auth import current_identity
from tuneforge.common.errors import InvalidInput, ResourceExhausted
from tuneforge.common.paging import next_page_token, page_bounds
from tuneforge.datasets import convert
from tuneforge.datasets.domain.runs import CurationRuns
from tuneforge.datasets.domain.service import MAX_PAGE, DatasetCatalogService
from tuneforge.datasets.v1 import datasets_pb2 as pb
from tuneforge.datasets.v1 import datasets_pb2_grpc as pb_grpc


def _tenant() -> str:
    return current_identity().tenant


def _page(page: Any) -> tuple[int, int]:
    return page_bounds(page.page_size, page.page_token, max_size=MAX_PAGE)


def _next(offset: int, size: int, got: int) -> str:
    # A full page may have a successor; an empty next page ends the listing.
    return next_page_token(offset, size, offset + size + 1) if got == size else ""


class DatasetServicer(pb_grpc.DatasetServiceServicer):
    """Every RPC acts as the caller's tenant (from the bearer token)."""

    def __init__(self, service: DatasetCatalogService, runs: CurationRuns, spool_dir: Path, max_upload_bytes: int) -> None:
        self._svc = service
        self._runs = runs
        self._spool_dir = spool_dir
        self._max_upload = max_upload_bytes

    def _version_pb(self, version: Any) -> pb.DatasetVersion:
        return convert.version_to_pb(version, self._svc.files.uri(version.prefix))

    def _spool(self, chunks: Iterator[pb.UploadDatasetRequest], dest: Path) -> None:
        total = 0
        with dest.open("wb") as out:
            for message in chunks:
                if message.WhichOneof("payload") != "chunk":
                    raise InvalidInput.field_error("metadata", "sent twice: send metadata first, then only chunks")
                total += len(message.chunk)
                if total > self._max_upload:
                    raise ResourceExhausted(f"upload is larger than {self._max_upload} bytes: split the file",
                                            reason="FILE_SIZE")
                out.write(message.chunk)

    def UploadDataset(self, request_iterator: Iterator[pb.UploadDatasetRequest], context: Any) -> pb.UploadDatasetResponse:
        """Spools the streamed bytes to disk, then validates (and curates, if asked) and stores a version."""
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "metadata":
            raise InvalidInput.field_error("metadata", "missing: the first message must carry the upload metadata")
        m = first.metadata
        options = convert.ingest_options(m.file_name, m.format, m.file_type, m.validation_policy,
                                         m.max_tokens_per_row, m.category_field)
        curation = convert.ingest_curation_from_pb(m, "curation")
        spool = Path(tempfile.mkdtemp(prefix="upload-", dir=self._spool_dir))
        try:
            self._spool(request_iterator, spool / "upload")
            dataset, version = self._svc.ingest(_tenant(), m.dataset_name, m.description, spool / "upload",
                                                options, m.request_id, curation)
        finally:
            shutil.rmtree(spool, ignore_errors=True)
        return pb.UploadDatasetResponse(dataset=convert.dataset_to_pb(dataset), version=self._version_pb(version),
                                        validation=convert.validation_to_pb(version))

    def RegisterDataset(self, request: pb.RegisterDatasetRequest, context: Any) -> pb.RegisterDatasetResponse:
        """Ingests an object of the service's store (under the caller's tenant prefix)."""
        name = request.source_uri.rsplit("/", 1)[-1]
        options = convert.ingest_options(name, request.format, request.file_type, request.validation_policy,
                                         request.max_tokens_per_row, "")
        dataset, version = self._svc.register(_tenant(), request.dataset_name, request.source_uri, options,
                                              request.request_id, convert.ingest_curation_from_pb(request, "curation"))
        return pb.RegisterDatasetResponse(dataset=convert.dataset_to_pb(dataset), version=self._version_pb(version),
                                          validation=convert.validation_to_pb(version))

    def CurateDataset(self, request: pb.CurateDatasetRequest, context: Any) -> pb.CurateDatasetResponse:
        """Starts a run in the background and returns it at once."""
        run = self._runs.start(_tenant(), request.version_id, convert.pipeline_from_pb(request), request.request_id)
        return pb.CurateDatasetResponse(run=convert.run_to_pb(run))

    def WatchCurationRun(self, request: pb.WatchCurationRunRequest, context: Any) -> Iterator[pb.CurationEvent]:
        """Streams progress events until the run ends."""
        for event in self._runs.watch(_tenant(), request.run_id, request.after_sequence):
            if not context.is_active():
                return
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
            duplicates_removed=s.get("duplicates_removed", 0), pii_found=s.get("pii_found", {}))

    def GetRejectedRows(self, request: pb.GetRejectedRowsRequest, context: Any) -> pb.GetRejectedRowsResponse:
        """Returns a page of the rejected-rows report."""
        offset, size = _page(request.page)
        rows, total = self._svc.rejected_rows(_tenant(), request.version_id, offset, size)
        return pb.GetRejectedRowsResponse(rows=[pb.RejectedRow(**r) for r in rows], total=total,
                                          next_page_token=next_page_token(offset, size, total))

    def CreateMixture(self, request: pb.CreateMixtureRequest, context: Any) -> pb.CreateMixtureResponse:
        """Samples several versions by weight into a new version."""
        components = [(c.version_id, c.weight, c.task) for c in request.components]
        version = self._svc.create_mixture(_tenant(), request.dataset_name, components, request.total_rows,
                                           request.seed, request.request_id)
        return pb.CreateMixtureResponse(version=self._version_pb(version))

    def AcquireVersionLease(self, request: pb.AcquireVersionLeaseRequest, context: Any) -> pb.AcquireVersionLeaseResponse:
        """Records that a job uses a version."""
        version = self._svc.acquire_lease(_tenant(), request.version_id, request.holder[:200])
        return pb.AcquireVersionLeaseResponse(version=self._version_pb(version))

    def ReleaseVersionLease(self, request: pb.ReleaseVersionLeaseRequest, context: Any) -> pb.ReleaseVersionLeaseResponse:
        """Releases a job's lease."""
        return pb.ReleaseVersionLeaseResponse(released=self._svc.release_lease(_tenant(), request.version_id,
                                                                               request.holder[:200]))
