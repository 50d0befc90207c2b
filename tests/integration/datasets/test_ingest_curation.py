"""Curation inside an upload (``UploadMetadata.curation``) over gRPC against the real server.

The one-pass path must give exactly what an upload followed by ``CurateDataset`` gives (same rows,
same content hash, same removals), store one version instead of two, and on any failure leave
nothing in the store or the database.
"""

from __future__ import annotations

import grpc
import pytest

from tests.integration.datasets.conftest import DatasetsService, jsonl
from tests.integration.datasets.test_curation import STEPS, _curate, _rows
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.v1 import datasets_pb2 as pb

pytestmark = pytest.mark.integration

SPLIT = pb.SplitConfig(validation_ratio=0.1, test_ratio=0.1, seed=7, stratify=True)


def _bad_rows() -> list[dict]:
    return [{"instruction": "", "input": "", "output": "no instruction"}, {"instruction": "No answer", "input": ""}]


def test_one_pass_equals_upload_then_curate(service: DatasetsService) -> None:
    data = jsonl(_rows() + _bad_rows())
    raw = service.upload(data, "hobbies.jsonl", validation_policy=pb.VALIDATION_POLICY_SKIP_INVALID).version
    run = _curate(service, raw.id, STEPS, split=SPLIT)
    assert run.state == common_pb2.OPERATION_STATE_SUCCEEDED, run.error
    two_pass = service.stub.GetDatasetVersion(pb.GetDatasetVersionRequest(version_id=run.output_version_id)).version

    one = service.upload(data, "hobbies.jsonl", dataset="one-pass", validation_policy=pb.VALIDATION_POLICY_SKIP_INVALID,
                         curation=pb.IngestCuration(steps=STEPS, split=SPLIT))
    version = one.version
    assert version.content_hash == two_pass.content_hash
    assert version.row_count == two_pass.row_count == 62
    assert dict(version.split_counts) == dict(two_pass.split_counts)
    assert not version.parent_version_id
    assert [s.step for s in version.steps] == ["validate", *(s.step for s in run.steps)]
    assert (version.steps[0].rows_in, version.steps[0].rows_out) == (71, 69)
    assert [(s.rows_in, s.rows_out, s.rows_modified) for s in version.steps[1:]] == \
        [(s.rows_in, s.rows_out, s.rows_modified) for s in run.steps]
    assert one.validation.rows_read == 71 and one.validation.rows_accepted == 69 and one.validation.rows_rejected == 2
    assert "curation" in version.pipeline and "ingest" in version.pipeline
    report = service.stub.GetRejectedRows(pb.GetRejectedRowsRequest(version_id=version.id, page=common_pb2.PageRequest(page_size=100)))
    assert report.total == 2 + 7
    assert [r.step for r in report.rows] == ["validate"] * 2 + ["exact_dedup"] * 6 + ["near_dedup"]
    assert [r.row for r in report.rows[:2]] == [70, 71]
    # One version stored: the curated one, not a raw version beside it.
    listed = service.stub.ListDatasetVersions(pb.ListDatasetVersionsRequest(dataset="one-pass")).versions
    assert [v.id for v in listed] == [version.id]
    rows = service.stub.PreviewRows(pb.PreviewRowsRequest(version_id=version.id, limit=500)).rows
    assert len(rows) == 62 and any("[EMAIL]" in m["content"] for r in rows for m in r["messages"])


def test_removal_guard_fails_the_upload_and_leaves_nothing(service: DatasetsService) -> None:
    before = service.objects()
    curation = pb.IngestCuration(steps=[pb.CurationStep(length_filter=pb.LengthFilterStep(min_chars=100000))])
    with pytest.raises(grpc.RpcError) as caught:
        service.upload(jsonl(_rows()), "hobbies.jsonl", curation=curation)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "would remove 69 of 69 rows" in caught.value.details()
    assert service.objects() == before
    assert not service.stub.ListDatasets(pb.ListDatasetsRequest()).datasets


def test_invalid_rows_under_reject_upload_stop_the_curation_too(service: DatasetsService) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        service.upload(jsonl(_rows() + _bad_rows()), "hobbies.jsonl", curation=pb.IngestCuration(steps=STEPS[:2]))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rows[70].instruction" in caught.value.details()
    assert service.objects() == []
    assert not service.stub.ListDatasets(pb.ListDatasetsRequest()).datasets


@pytest.mark.parametrize(("curation", "field"), [
    (pb.IngestCuration(), "curation.steps"),
    (pb.IngestCuration(steps=[pb.CurationStep(near_dedup=pb.NearDedupStep(threshold=1.5))]),
     "curation.steps[0].near_dedup.threshold"),
    (pb.IngestCuration(steps=STEPS[:1], max_removal_fraction=2.0), "curation.max_removal_fraction"),
])
def test_bad_curation_is_invalid_argument_naming_the_field(service: DatasetsService, curation: pb.IngestCuration,
                                                           field: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        service.upload(jsonl(_rows()[:5]), "h.jsonl", curation=curation)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()
    assert service.objects() == []
