"""End to end through the real gRPC server: a tiny model fine-tuned on a small task beats its base.

The fine-tune is a minimal full-parameter loop on assistant tokens (the engine's chat masking);
the dataset version is a real artifact (MANIFEST.json + Parquet shards in the datasets service's
canonical schema) in the service's object store.
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

import grpc
import pytest

torch = pytest.importorskip("torch")

from tuneforge.common.storage import open_object_store  # noqa: E402
from tuneforge.common.storage.artifacts import ArtifactWriter  # noqa: E402
from tuneforge.common.v1 import common_pb2  # noqa: E402
from tuneforge.datasets.domain.records import RecordKind, new_record, to_table  # noqa: E402
from tuneforge.evaluation.app import EvaluationSettings, build_app  # noqa: E402
from tuneforge.evaluation.v1 import evaluation_pb2 as pb  # noqa: E402
from tuneforge.evaluation.v1 import evaluation_pb2_grpc  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FACTS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow"}
TRAIN_TEMPLATES = ["What colour is the {x}?", "Name the colour of the {x}.", "The {x} has which colour?"]
TEST_TEMPLATES = ["Tell me the colour of the {x}."]


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _records(split: str, templates: list[str]) -> list[dict]:
    out = []
    for i, (x, colour) in enumerate(FACTS.items()):
        for t in templates:
            r = new_record(RecordKind.CHAT, source="colours.jsonl", row=i + 1,
                           messages=_chat(t.format(x=x), f"The {x} is {colour}."))
            r["split"] = split
            out.append(r)
    return out


def _general_records() -> list[dict]:
    rng = random.Random(3)
    words = ["the", "river", "follows", "a", "map", "while", "our", "model", "counts", "small", "tokens", "before", "seven"]
    recs = []
    for i in range(6):
        r = new_record(RecordKind.TEXT, source="general.txt", row=i + 1, text=" ".join(rng.sample(words, 9)) + ".")
        r["split"] = "test"
        recs.append(r)
    return recs


def _write_version(store, tenant: str, version_id: str, records: list[dict], tmp: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp / f"{version_id}.parquet"
    pq.write_table(to_table(records), path)
    writer = ArtifactWriter(store, f"tenants/{tenant}/datasets/versions/{version_id}/")
    writer.add_file("part-00000.parquet", path)
    writer.commit({"version_id": version_id})


def _fine_tune(base: Path, out: Path, records: list[dict]) -> Path:
    """Full fine-tune on assistant tokens until the task is learnt (tiny model: seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.engine.evaluate.chat import encode_chat

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    encoded = [encode_chat(tok, r["messages"]) for r in records]
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), tok.pad_token_id)
    labels = torch.full((len(encoded), width), -100)
    attn = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (t, m) in enumerate(encoded):
        ids[i, : len(t)] = torch.tensor(t)
        attn[i, : len(t)] = 1
        labels[i, : len(t)] = torch.tensor([x if keep else -100 for x, keep in zip(t, m, strict=True)])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    torch.manual_seed(0)
    model.train()
    losses = []
    for _ in range(80):
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 4, losses[::25]
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval_models")
    base = Path(shutil.copytree(tiny_model_dir, root / "base"))
    tuned = _fine_tune(base, root / "tuned", _records("train", TRAIN_TEMPLATES))
    return base, tuned


@pytest.fixture
def service(make_service, models, tmp_path):
    import json

    base, tuned = models
    handle = make_service(EvaluationSettings, build_app,
                          eval_model_registry=json.dumps({"tiny-base": str(base), "tiny-tuned": str(tuned)}))
    store = open_object_store(handle.settings.resolved_object_store_uri())
    _write_version(store, "acme", "dsv_colours", _records("test", TEST_TEMPLATES) + _records("train", TRAIN_TEMPLATES), tmp_path)
    _write_version(store, "acme", "dsv_general", _general_records(), tmp_path)
    return handle


def _wait(stub, evaluation_id: str, timeout: float = 240) -> pb.Evaluation:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        e = stub.GetEvaluation(pb.GetEvaluationRequest(evaluation_id=evaluation_id)).evaluation
        if e.state in (common_pb2.OPERATION_STATE_SUCCEEDED, common_pb2.OPERATION_STATE_FAILED,
                       common_pb2.OPERATION_STATE_CANCELLED):
            return e
        time.sleep(0.2)
    raise AssertionError("evaluation did not finish")


def _metrics(evaluation: pb.Evaluation, model_name: str, version: str) -> dict[str, float]:
    for r in evaluation.results:
        if r.model.base_model == model_name and r.dataset_version_id == version:
            return {m.name: m.value for m in r.metrics}
    raise AssertionError(f"no results for {model_name} on {version}")


def test_fine_tuned_model_beats_its_base_and_the_report_says_so(service):
    stub = evaluation_pb2_grpc.EvaluationServiceStub(service.channel())
    request = pb.CreateEvaluationRequest(
        model=pb.ModelRef(base_model="tiny-tuned"),
        baseline=pb.ModelRef(base_model="tiny-base"),
        datasets=[pb.EvalDataset(version_id="dsv_colours", split="test")],
        metrics=[pb.METRIC_PERPLEXITY, pb.METRIC_ROUGE, pb.METRIC_BLEU, pb.METRIC_EXACT_MATCH,
                 pb.METRIC_TOKEN_F1, pb.METRIC_SAFETY, pb.METRIC_FORGETTING],
        generation=pb.GenerationConfig(max_new_tokens=12, batch_size=4),
        forgetting_dataset=pb.EvalDataset(version_id="dsv_general", split="test"),
        request_id="req-1",
    )
    created = stub.CreateEvaluation(request).evaluation
    again = stub.CreateEvaluation(request).evaluation
    assert again.id == created.id  # idempotent on request_id

    events = list(stub.StreamEvaluationProgress(pb.StreamEvaluationProgressRequest(evaluation_id=created.id), timeout=300))
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    assert events[0].state == common_pb2.OPERATION_STATE_QUEUED
    assert any(e.state == common_pb2.OPERATION_STATE_RUNNING and e.done > 0 for e in events)
    assert events[-1].state == common_pb2.OPERATION_STATE_SUCCEEDED, events[-1].message

    e = _wait(stub, created.id)
    tuned, base = _metrics(e, "tiny-tuned", "dsv_colours"), _metrics(e, "tiny-base", "dsv_colours")
    assert tuned["perplexity"] < base["perplexity"] / 2
    assert tuned["rouge1"] > base["rouge1"] + 0.3
    assert tuned["exact_match"] > base["exact_match"]
    assert tuned["unsafe_rate"] == 0.0
    assert e.report_uri.endswith(f"/evaluations/{created.id}/report.json")

    cmp = stub.CompareModels(pb.CompareModelsRequest(evaluation_id=created.id))
    by_name = {c.name: c for c in cmp.comparisons if c.dataset_version_id == "dsv_colours"}
    assert by_name["perplexity"].model_better and by_name["perplexity"].delta < 0
    assert by_name["rouge1"].model_better and by_name["exact_match"].model_better
    assert "model better on" in cmp.summary and "perplexity" in cmp.summary
    ratio = _metrics(e, "tiny-tuned", "dsv_general")["forgetting_ratio"]
    assert cmp.forgetting_flagged == (ratio > 1.1)

    # Human A/B: blind pairs, ratings that always prefer the tuned side, win rate with a CI.
    pairs = stub.ExportPairs(pb.ExportPairsRequest(evaluation_id=created.id, seed=1)).pairs
    assert len(pairs) == 6
    tuned_texts = {g for g in (p.left for p in pairs)} | {p.right for p in pairs}
    assert any("is" in t for t in tuned_texts)
    ratings = [pb.Rating(pair_id=p.pair_id, rater="ann",
                         preference=pb.PREFERENCE_LEFT if p.left.startswith("The") else pb.PREFERENCE_RIGHT)
               for p in pairs]
    assert stub.RecordRatings(pb.RecordRatingsRequest(evaluation_id=created.id, ratings=ratings)).recorded == 6
    wr = stub.GetWinRates(pb.GetWinRatesRequest(evaluation_id=created.id))
    assert wr.ratings == 6
    assert wr.model_win_rate.value > 0.5
    assert wr.model_win_rate.ci_low < wr.model_win_rate.value <= wr.model_win_rate.ci_high

    listed = stub.ListEvaluations(pb.ListEvaluationsRequest()).evaluations
    assert [x.id for x in listed] == [created.id]
    other = evaluation_pb2_grpc.EvaluationServiceStub(service.channel("other"))
    with pytest.raises(grpc.RpcError) as info:
        other.GetEvaluation(pb.GetEvaluationRequest(evaluation_id=created.id))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_invalid_request_names_every_field(service):
    stub = evaluation_pb2_grpc.EvaluationServiceStub(service.channel())
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateEvaluation(pb.CreateEvaluationRequest(model=pb.ModelRef(), metrics=[pb.METRIC_FORGETTING]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = info.value.details()
    for field in ("model", "baseline", "forgetting_dataset"):
        assert field in details


def test_cancel_stops_a_running_evaluation(service):
    stub = evaluation_pb2_grpc.EvaluationServiceStub(service.channel())
    created = stub.CreateEvaluation(pb.CreateEvaluationRequest(
        model=pb.ModelRef(base_model="tiny-base"),
        datasets=[pb.EvalDataset(version_id="dsv_colours", split="train")],
        metrics=[pb.METRIC_ROUGE],
        generation=pb.GenerationConfig(max_new_tokens=400, batch_size=1),
    )).evaluation
    stub.CancelEvaluation(pb.CancelEvaluationRequest(evaluation_id=created.id))
    e = _wait(stub, created.id, timeout=60)
    assert e.state == common_pb2.OPERATION_STATE_CANCELLED


def test_unknown_dataset_fails_the_evaluation_with_a_named_error(service):
    stub = evaluation_pb2_grpc.EvaluationServiceStub(service.channel())
    created = stub.CreateEvaluation(pb.CreateEvaluationRequest(
        model=pb.ModelRef(base_model="tiny-base"),
        datasets=[pb.EvalDataset(version_id="dsv_missing")], metrics=[pb.METRIC_PERPLEXITY],
    )).evaluation
    e = _wait(stub, created.id, timeout=60)
    assert e.state == common_pb2.OPERATION_STATE_FAILED
    assert e.error.code == "NOT_FOUND" and "dsv_missing" in e.error.message
