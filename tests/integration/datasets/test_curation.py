"""Curation over gRPC against the real server: step counts, guard, PII, splits, read-back, mixtures."""

from __future__ import annotations

import threading

import grpc
import pytest

from tests.integration.datasets.conftest import DatasetsService, jsonl
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.v1 import datasets_pb2 as pb

pytestmark = pytest.mark.integration

TOPICS = ["gardening", "astronomy", "cooking", "sailing", "chess", "painting", "cycling", "poetry", "baking", "hiking"]


def _rows() -> list[dict]:
    rows = []
    for i in range(60):
        topic = TOPICS[i % 10]
        rows.append({"instruction": f"Tell me something about {topic} number {i}",
                     "input": "", "output": f"{topic.title()} fact {i}: it is a rewarding hobby for many people {i}.",
                     "category": ["a", "b", "c"][i % 3]})
    rows += [dict(r) for r in rows[:6]]  # 6 exact duplicates
    near = dict(rows[10])
    near["output"] = rows[10]["output"] + " Indeed"  # a near duplicate of row 11
    rows.append(near)
    rows.append({"instruction": "Contact", "input": "", "output": "Mail jane.doe@example.com, key AKIAIOSFODNN7EXAMPLE",
                 "category": "a"})
    rows.append({"instruction": "  Spacing   test ", "input": "", "output": "Cafe\u0301   au   lait is tasty.", "category": "b"})
    return rows


def _curate(service: DatasetsService, version_id: str, steps: list[pb.CurationStep], **kw) -> pb.CurationRun:
    started = service.stub.CurateDataset(pb.CurateDatasetRequest(version_id=version_id, steps=steps, **kw)).run
    events = list(service.stub.WatchCurationRun(pb.WatchCurationRunRequest(run_id=started.id), timeout=120))
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].state in (common_pb2.OPERATION_STATE_SUCCEEDED, common_pb2.OPERATION_STATE_FAILED)
    return service.stub.GetCurationRun(pb.GetCurationRunRequest(run_id=started.id)).run


STEPS = [
    pb.CurationStep(normalize=pb.NormalizeStep(collapse_whitespace=True)),
    pb.CurationStep(exact_dedup=pb.ExactDedupStep()),
    pb.CurationStep(near_dedup=pb.NearDedupStep(threshold=0.7, ngram_size=3, num_perm=128)),
    pb.CurationStep(pii=pb.PiiStep(action=pb.PII_ACTION_REDACT)),
    pb.CurationStep(toxicity=pb.ToxicityStep(action=pb.SCREEN_ACTION_FLAG)),
    pb.CurationStep(quality_filter=pb.QualityFilterStep()),
    pb.CurationStep(length_filter=pb.LengthFilterStep(min_chars=10, max_chars=2000)),
]


def test_pipeline_counts_every_step_and_the_version_reads_back(service: DatasetsService) -> None:
    raw = service.upload(jsonl(_rows()), "hobbies.jsonl").version
    assert raw.row_count == 69
    run = _curate(service, raw.id, STEPS, split=pb.SplitConfig(validation_ratio=0.1, test_ratio=0.1, seed=7, stratify=True))
    assert run.state == common_pb2.OPERATION_STATE_SUCCEEDED, run.error
    counts = {s.step: (s.rows_in, s.rows_out, s.rows_modified) for s in run.steps}
    assert counts["normalize"][:2] == (69, 69) and counts["normalize"][2] >= 1
    assert counts["exact_dedup"] == (69, 63, 0)
    assert counts["near_dedup"] == (63, 62, 0)
    assert counts["pii"] == (62, 62, 1)
    near = next(s for s in run.steps if s.step == "near_dedup")
    assert near.details["clusters"] == 1
    version = service.stub.GetDatasetVersion(pb.GetDatasetVersionRequest(version_id=run.output_version_id)).version
    assert version.parent_version_id == raw.id
    assert version.row_count == 62
    assert sum(version.split_counts.values()) == 62 and version.split_counts["validation"] >= 5
    assert [s.step for s in version.steps][:2] == ["normalize", "exact_dedup"]
    rows = service.stub.PreviewRows(pb.PreviewRowsRequest(version_id=version.id, limit=500)).rows
    texts = [m["content"] for r in rows for m in r["messages"]]
    assert any("[EMAIL]" in t and "[SECRET]" in t for t in texts)
    assert "Spacing test" in texts and "Caf\u00e9 au lait is tasty." in texts
    stats = service.stub.GetDatasetStats(pb.GetDatasetStatsRequest(version_id=version.id))
    assert stats.duplicates_removed == 7
    assert stats.pii_found["email"] == 1 and stats.pii_found["secret"] == 1
    assert stats.token_length_percentiles["p50"] > 0 and len(stats.token_length_histogram) == 20
    removed = service.stub.GetRejectedRows(pb.GetRejectedRowsRequest(version_id=version.id))
    assert removed.total == 7
    assert {r.step for r in removed.rows} == {"exact_dedup", "near_dedup"}
    assert any(r.row == 69 - 2 and "near duplicate of row 11" in r.reason for r in removed.rows)
    validation = service.stub.PreviewRows(pb.PreviewRowsRequest(version_id=version.id, split="validation", limit=500)).rows
    assert len(validation) == version.split_counts["validation"]


def test_same_seed_gives_the_same_split_and_hash(service: DatasetsService) -> None:
    raw = service.upload(jsonl(_rows()[:60]), "h.jsonl").version
    split = pb.SplitConfig(validation_ratio=0.2, seed=3, stratify=True)
    first = _curate(service, raw.id, STEPS[:1], split=split)
    second = _curate(service, raw.id, STEPS[:1], split=split)
    hashes = [service.stub.GetDatasetVersion(pb.GetDatasetVersionRequest(version_id=r.output_version_id)).version.content_hash
              for r in (first, second)]
    assert hashes[0] == hashes[1]


def test_removal_guard_fails_the_run_with_numbers(service: DatasetsService) -> None:
    raw = service.upload(jsonl(_rows()), "hobbies.jsonl").version
    run = _curate(service, raw.id, [pb.CurationStep(length_filter=pb.LengthFilterStep(min_chars=100000))])
    assert run.state == common_pb2.OPERATION_STATE_FAILED
    assert run.error.code == "RESOURCE_EXHAUSTED"
    assert "would remove 69 of 69 rows" in run.error.message
    assert not run.output_version_id
    versions = service.stub.ListDatasetVersions(pb.ListDatasetVersionsRequest(dataset="ds")).versions
    assert [v.id for v in versions] == [raw.id]


def test_invalid_pipeline_is_rejected_with_every_field(service: DatasetsService) -> None:
    raw = service.upload(jsonl(_rows()[:5]), "h.jsonl").version
    steps = [pb.CurationStep(near_dedup=pb.NearDedupStep(threshold=1.5, num_perm=4)),
             pb.CurationStep(pii=pb.PiiStep(kinds=["passport"]))]
    with pytest.raises(grpc.RpcError) as caught:
        service.stub.CurateDataset(pb.CurateDatasetRequest(version_id=raw.id, steps=steps))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for field in ("steps[0].near_dedup.threshold", "steps[0].near_dedup.num_perm", "steps[1].pii.kinds"):
        assert field in caught.value.details()


def test_curate_is_idempotent_and_tenant_scoped(service: DatasetsService) -> None:
    raw = service.upload(jsonl(_rows()[:10]), "h.jsonl").version
    request = pb.CurateDatasetRequest(version_id=raw.id, steps=STEPS[:2], request_id="cur-1")
    first = service.stub.CurateDataset(request).run
    again = service.stub.CurateDataset(request).run
    assert first.id == again.id
    with pytest.raises(grpc.RpcError) as caught:
        service.other.GetCurationRun(pb.GetCurationRunRequest(run_id=first.id))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        service.other.CurateDataset(pb.CurateDatasetRequest(version_id=raw.id, steps=STEPS[:1]))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_balance_decontaminate_augment_and_mixture(service: DatasetsService) -> None:
    raw = service.upload(jsonl(_rows()[:60]), "h.jsonl").version
    evalset = service.upload(jsonl(_rows()[:3]), "eval.jsonl", dataset="evalset").version
    steps = [pb.CurationStep(decontaminate=pb.DecontaminateStep(eval_version_ids=[evalset.id], ngram_size=13)),
             pb.CurationStep(balance=pb.BalanceStep(cap_per_category=15, seed=1)),
             pb.CurationStep(augment=pb.AugmentStep(instruction_variants=1, seed=1))]
    run = _curate(service, raw.id, steps)
    assert run.state == common_pb2.OPERATION_STATE_SUCCEEDED, run.error
    counts = {s.step: (s.rows_in, s.rows_out) for s in run.steps}
    assert counts == {"decontaminate": (60, 57), "balance": (57, 45), "augment": (45, 90)}
    rows = service.stub.PreviewRows(pb.PreviewRowsRequest(version_id=run.output_version_id, limit=500)).rows
    assert sum(1 for r in rows if r["provenance"]["augmented"]) == 45
    mixture = service.stub.CreateMixture(pb.CreateMixtureRequest(
        dataset_name="mix", seed=1, total_rows=20,
        components=[pb.MixtureComponent(version_id=raw.id, weight=3, task="hobbies"),
                    pb.MixtureComponent(version_id=evalset.id, weight=1, task="eval")])).version
    assert mixture.row_count == 20
    stats = service.stub.GetDatasetStats(pb.GetDatasetStatsRequest(version_id=mixture.id))
    assert dict(stats.category_counts) == {"hobbies": 15, "eval": 5}


def test_stop_ends_background_runs_before_it_returns(service: DatasetsService) -> None:
    """Runs still going when the service stops end before ``stop`` returns: nothing writes to the
    bucket afterwards (the teardown that removes it got BucketNotEmpty when runs outlived the server)."""
    before = set(threading.enumerate())  # threads of other tests' objects are not this server's
    raw = service.upload(jsonl(_rows()), "h.jsonl").version
    runs = [service.stub.CurateDataset(pb.CurateDatasetRequest(version_id=raw.id, steps=STEPS)).run for _ in range(4)]
    service.server.stop(0.5)
    assert not [t.name for t in set(threading.enumerate()) - before if t.name.startswith(("curation", "datasets"))]
    before = sorted(service.objects())
    assert before == sorted(service.objects())  # idle: nothing left running that could still write
    assert len(runs) == 4
