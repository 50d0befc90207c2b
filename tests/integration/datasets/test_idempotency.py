"""Request ids through the real dataset service: one mechanism for uploads, curation and mixtures."""

from __future__ import annotations

import threading

import grpc
import pytest

from tests.integration.datasets.conftest import DatasetsService, jsonl
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.v1 import datasets_pb2 as pb

pytestmark = pytest.mark.integration
ROWS = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(8)]


def test_ten_concurrent_identical_uploads_all_get_the_one_version(service: DatasetsService) -> None:
    answers: list[object] = []

    def upload() -> None:
        try:
            answers.append(service.upload(jsonl(ROWS), "a.jsonl", request_id="req-1").version.id)
        except grpc.RpcError as err:
            answers.append(err.code())
    threads = [threading.Thread(target=upload) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(answers) == 10 and len(set(answers)) == 1 and str(answers[0]).startswith("dsv")
    versions = service.stub.ListDatasetVersions(pb.ListDatasetVersionsRequest(dataset="ds"), timeout=30).versions
    assert len(versions) == 1


def test_another_body_under_a_request_id_is_already_exists_naming_it(service: DatasetsService) -> None:
    service.upload(jsonl(ROWS), "a.jsonl", request_id="req-2")
    for change in (dict(dataset="other"), dict(data=jsonl(ROWS[:3]))):
        with pytest.raises(grpc.RpcError) as caught:
            service.upload(change.get("data", jsonl(ROWS)), "a.jsonl", dataset=change.get("dataset", "ds"),
                           request_id="req-2")
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "req-2" in (caught.value.details() or "")


def test_keys_are_per_rpc_a_mixture_never_returns_an_upload(service: DatasetsService) -> None:
    raw = service.upload(jsonl(ROWS), "a.jsonl", request_id="shared").version
    mix = service.stub.CreateMixture(pb.CreateMixtureRequest(
        dataset_name="mix", request_id="shared", components=[pb.MixtureComponent(version_id=raw.id, weight=1)]),
        timeout=60).version
    assert mix.id != raw.id and mix.row_count == len(ROWS)
    again = service.stub.CreateMixture(pb.CreateMixtureRequest(
        dataset_name="mix", request_id="shared", components=[pb.MixtureComponent(version_id=raw.id, weight=1)]),
        timeout=60).version
    assert again.id == mix.id
    with pytest.raises(grpc.RpcError) as caught:
        service.stub.CreateMixture(pb.CreateMixtureRequest(
            dataset_name="mix", request_id="shared", total_rows=3,
            components=[pb.MixtureComponent(version_id=raw.id, weight=1)]), timeout=60)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


def _finished(service: DatasetsService, run_id: str) -> pb.CurationRun:
    list(service.stub.WatchCurationRun(pb.WatchCurationRunRequest(run_id=run_id), timeout=120))
    return service.stub.GetCurationRun(pb.GetCurationRunRequest(run_id=run_id), timeout=30).run


def test_a_curation_retry_after_a_failed_run_runs_again(service: DatasetsService) -> None:
    raw = service.upload(jsonl(ROWS), "a.jsonl").version
    failing = pb.CurateDatasetRequest(version_id=raw.id, request_id="cur-9",
                                      steps=[pb.CurationStep(length_filter=pb.LengthFilterStep(min_chars=100000))])
    first = _finished(service, service.stub.CurateDataset(failing, timeout=30).run.id)
    assert first.state == common_pb2.OPERATION_STATE_FAILED
    retry = service.stub.CurateDataset(failing, timeout=30).run
    assert retry.id != first.id  # the failed run is retried, not returned
    assert _finished(service, retry.id).state == common_pb2.OPERATION_STATE_FAILED
    with pytest.raises(grpc.RpcError) as caught:
        service.stub.CurateDataset(pb.CurateDatasetRequest(version_id=raw.id, request_id="cur-9",
                                                           steps=[pb.CurationStep(exact_dedup=pb.ExactDedupStep())]),
                                   timeout=30)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS and "cur-9" in (caught.value.details() or "")
