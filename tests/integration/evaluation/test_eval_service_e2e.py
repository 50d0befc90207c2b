"""End to end through the real gRPC servers: a tiny model fine-tuned on a small task beats its base.

The fine-tune is a minimal full-parameter loop on assistant tokens (the engine's chat masking);
both models are base models by name in the shared models folder. The evaluation sets are uploaded
through the real dataset service as separate, unsplit versions (an empty split evaluates every
row of such a version), and the evaluation service resolves them through it.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import grpc
import pytest

torch = pytest.importorskip("torch")

from tuneforge.common.v1 import common_pb2  # noqa: E402
from tuneforge.datasets.app import DatasetSettings  # noqa: E402
from tuneforge.datasets.app import build_app as build_datasets  # noqa: E402
from tuneforge.datasets.v1 import datasets_pb2 as ds  # noqa: E402
from tuneforge.datasets.v1 import datasets_pb2_grpc as ds_grpc  # noqa: E402
from tuneforge.evaluation.app import build_app  # noqa: E402
from tuneforge.evaluation.settings import EvaluationSettings  # noqa: E402
from tuneforge.evaluation.v1 import evaluation_pb2 as pb  # noqa: E402
from tuneforge.evaluation.v1 import evaluation_pb2_grpc  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FACTS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow"}
TRAIN_TEMPLATES = ["What colour is the {x}?", "Name the colour of the {x}.", "The {x} has which colour?"]
TEST_TEMPLATES = ["Tell me the colour of the {x}."]


def _chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _records(templates: list[str]) -> list[dict]:
    return [{"messages": _chat(t.format(x=x), f"The {x} is {colour}.")} for x, colour in FACTS.items()
            for t in templates]


def _general_records() -> list[dict]:
    rng = random.Random(3)
    words = ["the", "river", "follows", "a", "map", "while", "our", "model", "counts", "small", "tokens", "before", "seven"]
    return [{"text": " ".join(rng.sample(words, 9)) + "."} for _ in range(6)]


def _upload(stub: ds_grpc.DatasetServiceStub, name: str, rows: list[dict]) -> str:
    """Upload rows as JSONL through the real dataset service; returns the version id."""
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    meta = ds.UploadDatasetRequest(metadata=ds.UploadMetadata(dataset_name=name, file_name=f"{name}.jsonl"))
    response = stub.UploadDataset(iter([meta, ds.UploadDatasetRequest(chunk=data)]), timeout=120)
    assert response.validation.rows_accepted == len(rows)
    return response.version.id


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
def models(tiny_model_dir, tmp_path_factory) -> Path:
    """A models folder with the base and its fine-tune, by name."""
    root = tmp_path_factory.mktemp("eval_models")
    base = Path(shutil.copytree(tiny_model_dir, root / "tiny-base"))
    _fine_tune(base, root / "tiny-tuned", _records(TRAIN_TEMPLATES))
    return root


@pytest.fixture
def service(make_service, models, tmp_path):
    """The real dataset and evaluation services on one object store; the handle has ``versions``."""
    shared = {"object_store_uri": (tmp_path / "objects").as_uri(), "models_dir": models}
    datasets = make_service(DatasetSettings, build_datasets, **shared)
    token = datasets.token
    handle = make_service(EvaluationSettings, build_app, datasets_address=datasets.address,
                          auth_tokens=f"acme:{token},acme2:{datasets.other_token}", **shared)
    handle.token, handle.other_token = token, datasets.other_token  # one set of tokens for both services
    stub = ds_grpc.DatasetServiceStub(datasets.channel())
    handle.versions = {"colours": _upload(stub, "colours", _records(TEST_TEMPLATES)),
                       "colours_train": _upload(stub, "colours-train", _records(TRAIN_TEMPLATES)),
                       "general": _upload(stub, "general", _general_records())}
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
    colours, general = service.versions["colours"], service.versions["general"]
    request = pb.CreateEvaluationRequest(
        model=pb.ModelRef(base_model="tiny-tuned"),
        baseline=pb.ModelRef(base_model="tiny-base"),
        datasets=[pb.EvalDataset(version_id=colours)],  # unsplit version: every row
        metrics=[pb.METRIC_PERPLEXITY, pb.METRIC_ROUGE, pb.METRIC_BLEU, pb.METRIC_EXACT_MATCH,
                 pb.METRIC_TOKEN_F1, pb.METRIC_SAFETY, pb.METRIC_FORGETTING],
        generation=pb.GenerationConfig(max_new_tokens=12, batch_size=4),
        forgetting_dataset=pb.EvalDataset(version_id=general),
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
    tuned, base = _metrics(e, "tiny-tuned", colours), _metrics(e, "tiny-base", colours)
    assert tuned["perplexity"] < base["perplexity"] / 2
    assert tuned["rouge1"] > base["rouge1"] + 0.3
    assert tuned["exact_match"] > base["exact_match"]
    assert tuned["unsafe_rate"] == 0.0
    assert e.report_uri.endswith(f"/evaluations/{created.id}/report.json")

    cmp = stub.CompareModels(pb.CompareModelsRequest(evaluation_id=created.id))
    by_name = {c.name: c for c in cmp.comparisons if c.dataset_version_id == colours}
    assert by_name["perplexity"].model_better and by_name["perplexity"].delta < 0
    assert by_name["rouge1"].model_better and by_name["exact_match"].model_better
    assert "model better on" in cmp.summary and "perplexity" in cmp.summary
    ratio = _metrics(e, "tiny-tuned", general)["forgetting_ratio"]
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
        datasets=[pb.EvalDataset(version_id=service.versions["colours_train"])],
        metrics=[pb.METRIC_ROUGE],
        generation=pb.GenerationConfig(max_new_tokens=400, batch_size=1),
    )).evaluation
    stub.CancelEvaluation(pb.CancelEvaluationRequest(evaluation_id=created.id))
    e = _wait(stub, created.id, timeout=60)
    assert e.state == common_pb2.OPERATION_STATE_CANCELLED


@pytest.mark.parametrize(("model", "version", "needle"), [
    ("tiny-base", "dsv_missing", "dsv_missing"),
    ("no-such-model", None, "no-such-model"),
])
def test_unknown_dataset_or_model_is_refused_at_create_naming_it(service, model, version, needle):
    stub = evaluation_pb2_grpc.EvaluationServiceStub(service.channel())
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateEvaluation(pb.CreateEvaluationRequest(
            model=pb.ModelRef(base_model=model), metrics=[pb.METRIC_PERPLEXITY],
            datasets=[pb.EvalDataset(version_id=version or service.versions["colours"])]))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert needle in info.value.details()
    assert not stub.ListEvaluations(pb.ListEvaluationsRequest()).evaluations


@pytest.mark.parametrize("size, token", [(-1, ""), (1001, ""), (10, "42"), (10, "²")])
def test_bad_list_pages_are_invalid_argument(service, size, token):
    stub = evaluation_pb2_grpc.EvaluationServiceStub(service.channel())
    with pytest.raises(grpc.RpcError) as info:
        stub.ListEvaluations(pb.ListEvaluationsRequest(page=common_pb2.PageRequest(page_size=size, page_token=token)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
