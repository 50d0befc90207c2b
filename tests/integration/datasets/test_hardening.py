"""Bad input at the gRPC edge of the dataset service: refused, never INTERNAL, no server path."""

from __future__ import annotations

import base64
import re

import grpc
import pytest

from tests.integration.datasets.conftest import DatasetsService, jsonl
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.v1 import datasets_pb2 as pb

pytestmark = pytest.mark.integration


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_tokenizers_are_model_names_never_server_paths(service: DatasetsService, tmp_path) -> None:
    raw = service.upload(jsonl([{"instruction": "hi", "output": "there"}] * 3), "t.jsonl").version
    answers = set()
    for spec in ("/etc", "/definitely/missing", str(tmp_path), "../../etc", "~root"):
        err = _error(lambda s=spec: service.stub.GetDatasetStats(
            pb.GetDatasetStatsRequest(version_id=raw.id, tokenizer=s), timeout=30))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert str(tmp_path) not in (err.details() or "")
        answers.add(re.sub(r"tokenizer .* is not a model", "tokenizer X is not a model", err.details() or ""))
    assert len(answers) == 1  # existing and missing folders answer alike


def test_forged_page_tokens_are_invalid_argument(service: DatasetsService) -> None:
    huge = base64.urlsafe_b64encode(f"o:{2**80}".encode()).decode()
    page = common_pb2.PageRequest(page_size=10, page_token=huge)
    for call in (lambda: service.stub.ListDatasets(pb.ListDatasetsRequest(page=page), timeout=30),
                 lambda: service.stub.ListDatasetVersions(pb.ListDatasetVersionsRequest(dataset="ds", page=page),
                                                          timeout=30)):
        assert _error(call).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_long_name_is_refused_naming_the_limit(service: DatasetsService) -> None:
    err = _error(lambda: service.upload(b'{"text": "x"}\n', "x.jsonl", dataset="d" * 30_000))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 256" in (err.details() or "") and len(err.details() or "") < 1024


NUMBERS = [
    ("total_rows=-1", dict(total_rows=-1), "total_rows"),
    ("total_rows=2^62", dict(total_rows=2**62), "total_rows"),
    ("total_rows over the setting", dict(total_rows=10_000_001), "total_rows"),
    ("weight NaN", dict(weight=float("nan")), "weight"),
    ("weight inf", dict(weight=float("inf")), "weight"),
    ("weight -1", dict(weight=-1.0), "weight"),
    ("weight 0", dict(weight=0.0), "weight"),
    ("weight 1e300", dict(weight=1e300), "weight"),
    ("seed -1", dict(seed=-1), "seed"),
]


@pytest.mark.parametrize("case, change, field", NUMBERS, ids=[n[0] for n in NUMBERS])
def test_mixture_numbers_have_documented_ranges(service: DatasetsService, case, change, field) -> None:
    raw = service.upload(jsonl([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]), "m.jsonl").version
    weight = change.pop("weight", 1.0)
    request = pb.CreateMixtureRequest(dataset_name="mix", components=[pb.MixtureComponent(version_id=raw.id,
                                                                                          weight=weight)], **change)
    err = _error(lambda: service.stub.CreateMixture(request, timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, case
    assert field in (err.details() or "")


def test_mixture_oversampling_counts_instead_of_listing_rows(service: DatasetsService) -> None:
    raw = service.upload(jsonl([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(3)]), "m.jsonl").version
    version = service.stub.CreateMixture(pb.CreateMixtureRequest(
        dataset_name="mix", total_rows=10, components=[pb.MixtureComponent(version_id=raw.id, weight=1)]),
        timeout=60).version
    assert version.row_count == 10


@pytest.mark.parametrize("request_, field", [
    (pb.PreviewRowsRequest(limit=-1), "limit"), (pb.PreviewRowsRequest(limit=2**31 - 1), "limit"),
    (pb.PreviewRowsRequest(offset=-1), "offset"),
], ids=["limit -1", "limit 2^31-1", "offset -1"])
def test_preview_numbers_are_bounded(service: DatasetsService, request_, field) -> None:
    raw = service.upload(jsonl([{"instruction": "q", "output": "a"}]), "p.jsonl").version
    request_.version_id = raw.id
    err = _error(lambda: service.stub.PreviewRows(request_, timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and field in (err.details() or "")


def test_negative_seeds_and_cursors_are_invalid_argument(service: DatasetsService) -> None:
    raw = service.upload(jsonl([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]), "s.jsonl").version
    steps = [pb.CurationStep(augment=pb.AugmentStep(instruction_variants=1, seed=-1)),
             pb.CurationStep(balance=pb.BalanceStep(cap_per_category=5, seed=-2))]
    err = _error(lambda: service.stub.CurateDataset(pb.CurateDatasetRequest(
        version_id=raw.id, steps=steps, split=pb.SplitConfig(validation_ratio=0.2, seed=-3)), timeout=30))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    for field in ("steps[0].augment.seed", "steps[1].balance.seed", "split.seed"):
        assert field in (err.details() or "")
    run = service.stub.CurateDataset(pb.CurateDatasetRequest(
        version_id=raw.id, steps=[pb.CurationStep(exact_dedup=pb.ExactDedupStep())]), timeout=30).run
    err = _error(lambda: list(service.stub.WatchCurationRun(
        pb.WatchCurationRunRequest(run_id=run.id, after_sequence=-1), timeout=30)))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watching_past_the_last_event_of_a_finished_run_ends_promptly(service: DatasetsService) -> None:
    raw = service.upload(jsonl([{"instruction": f"q{i}", "output": f"a{i}"} for i in range(5)]), "w.jsonl").version
    run = service.stub.CurateDataset(pb.CurateDatasetRequest(
        version_id=raw.id, steps=[pb.CurationStep(exact_dedup=pb.ExactDedupStep())]), timeout=30).run
    events = list(service.stub.WatchCurationRun(pb.WatchCurationRunRequest(run_id=run.id), timeout=120))
    last = events[-1].sequence
    # Before: it waited an hour for news. A generous deadline: a hang fails as DEADLINE_EXCEEDED.
    for after in (last, last + 1, 1000):
        assert list(service.stub.WatchCurationRun(
            pb.WatchCurationRunRequest(run_id=run.id, after_sequence=after), timeout=30)) == []
