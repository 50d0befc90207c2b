"""Evaluation with the REAL dataset and checkpoint services, as users run it.

Three real gRPC servers in-process (datasets, checkpoints, evaluation) share one object store and
one models folder, and accept the same tenant tokens (the evaluation calls its peers with the
caller's own token). The flow: upload an Alpaca file through DatasetService.UploadDataset, curate
it with a train/test split, fine-tune a LoRA adapter on the train split of the tiny model, write it
into the tenant's checkpoint area with CheckpointWriter and register it, then evaluate the
checkpoint against its base by name on the test split and let it move the ``best`` alias.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from tuneforge.checkpoints.app import build_app as build_checkpoints  # noqa: E402
from tuneforge.checkpoints.settings import CheckpointSettings  # noqa: E402
from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck  # noqa: E402
from tuneforge.checkpoints.v1 import checkpoints_pb2_grpc as ck_grpc  # noqa: E402
from tuneforge.common.grpc.client import channel  # noqa: E402
from tuneforge.common.storage import open_object_store  # noqa: E402
from tuneforge.common.storage.checkpoint_writer import CheckpointWriter  # noqa: E402
from tuneforge.common.v1 import common_pb2  # noqa: E402
from tuneforge.datasets.app import DatasetSettings  # noqa: E402
from tuneforge.datasets.app import build_app as build_datasets  # noqa: E402
from tuneforge.datasets.v1 import datasets_pb2 as ds  # noqa: E402
from tuneforge.datasets.v1 import datasets_pb2_grpc as ds_grpc  # noqa: E402
from tuneforge.evaluation.app import build_app as build_evaluation  # noqa: E402
from tuneforge.evaluation.settings import EvaluationSettings  # noqa: E402
from tuneforge.evaluation.v1 import evaluation_pb2 as ev  # noqa: E402
from tuneforge.evaluation.v1 import evaluation_pb2_grpc as ev_grpc  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = "tiny-base"
JOB = "colours-lora"
FACTS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow",
         "milk": "white", "night": "black"}
TEMPLATES = ["What colour is the {x}?", "Name the colour of the {x}.", "Tell me the colour of the {x}."]
TERMINAL = (common_pb2.OPERATION_STATE_SUCCEEDED, common_pb2.OPERATION_STATE_FAILED,
            common_pb2.OPERATION_STATE_CANCELLED)


class Stack:
    """Stubs of the three services for one tenant's token."""

    def __init__(self, addresses: dict[str, str], token: str) -> None:
        self.datasets = ds_grpc.DatasetServiceStub(channel(addresses["datasets"], token, default_timeout=120))
        self.checkpoints = ck_grpc.CheckpointServiceStub(channel(addresses["checkpoints"], token, default_timeout=60))
        self.evaluation = ev_grpc.EvaluationServiceStub(channel(addresses["evaluation"], token, default_timeout=60))


@pytest.fixture
def services(make_service, tiny_model_dir, tmp_path):
    """The three services on one file:// store and one models folder; stubs for acme and acme2."""
    tokens = {"acme": secrets.token_urlsafe(24), "acme2": secrets.token_urlsafe(24)}
    models = tmp_path / "models"
    shutil.copytree(tiny_model_dir, models / BASE)
    shared = {"object_store_uri": (tmp_path / "objects").as_uri(), "models_dir": models,
              "auth_tokens": ",".join(f"{t}:{tok}" for t, tok in tokens.items())}
    datasets = make_service(DatasetSettings, build_datasets, **shared)
    checkpoints = make_service(CheckpointSettings, build_checkpoints, hygiene_interval_s=0, **shared)
    evaluation = make_service(EvaluationSettings, build_evaluation, datasets_address=datasets.address,
                              checkpoints_address=checkpoints.address, **shared)
    addresses = {"datasets": datasets.address, "checkpoints": checkpoints.address, "evaluation": evaluation.address}
    return {tenant: Stack(addresses, tok) for tenant, tok in tokens.items()}, evaluation.settings


def _upload_and_split(stack: Stack) -> str:
    """Upload Alpaca JSONL through the client stream, curate with a split; returns the split version."""
    rows = [{"instruction": t.format(x=x), "input": "", "output": f"The {x} is {c}."}
            for x, c in FACTS.items() for t in TEMPLATES]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()

    def requests():
        yield ds.UploadDatasetRequest(metadata=ds.UploadMetadata(dataset_name="colours", file_name="colours.jsonl"))
        for i in range(0, len(data), 1024):  # several chunks, as the SDK streams
            yield ds.UploadDatasetRequest(chunk=data[i : i + 1024])

    uploaded = stack.datasets.UploadDataset(requests())
    assert uploaded.validation.rows_accepted == len(rows)
    run = stack.datasets.CurateDataset(ds.CurateDatasetRequest(
        version_id=uploaded.version.id, steps=[ds.CurationStep(exact_dedup=ds.ExactDedupStep())],
        split=ds.SplitConfig(test_ratio=0.25, seed=3))).run
    deadline = time.monotonic() + 120
    while run.state not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.2)
        run = stack.datasets.GetCurationRun(ds.GetCurationRunRequest(run_id=run.id)).run
    assert run.state == common_pb2.OPERATION_STATE_SUCCEEDED, run.error.message
    version = stack.datasets.GetDatasetVersion(ds.GetDatasetVersionRequest(version_id=run.output_version_id)).version
    assert version.split_counts["test"] > 0 and version.split_counts["train"] > 0
    return version.id


def _train_rows(stack: Stack, version_id: str) -> list[dict]:
    rows = stack.datasets.PreviewRows(ds.PreviewRowsRequest(version_id=version_id, split="train", limit=500)).rows
    return [json_format.MessageToDict(r) for r in rows]


def _lora_checkpoints(base: Path, rows: list[dict], out: Path) -> tuple[Path, Path]:
    """An untrained LoRA (step 1, equal to the base) and one trained on ``rows`` (step 2).

    Both in the engine's layout: the adapter in ``model/``, trainer state beside it.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.engine.evaluate.chat import encode_chat

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base)
    # The tiny base is randomly initialised: LoRA alone moves its frozen random head too slowly, so the
    # head is trained as well (peft's modules_to_save: stored in the adapter's safetensors).
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, modules_to_save=["lm_head"],
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "gate_proj"]))
    steps = {1: out / "step-1", 2: out / "step-2"}
    model.save_pretrained(steps[1] / "model")
    encoded = [encode_chat(tok, r["messages"]) for r in rows]
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.full((len(encoded), width), tok.pad_token_id)
    labels, attn = torch.full_like(ids, -100), torch.zeros_like(ids)
    for i, (t, mask) in enumerate(encoded):
        ids[i, : len(t)], attn[i, : len(t)] = torch.tensor(t), 1
        labels[i, : len(t)] = torch.tensor([x if keep else -100 for x, keep in zip(t, mask, strict=True)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(25):
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2, losses[::5]
    model.save_pretrained(steps[2] / "model")
    for step, folder in steps.items():
        (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    return steps[1], steps[2]


def _register(stack: Stack, settings, tenant: str, local: Path, step: int, loss: float, version_id: str) -> str:
    store = open_object_store(settings.resolved_object_store_uri())
    written = CheckpointWriter(store).write(local, f"tenants/{tenant}/checkpoints/{JOB}/step-{step}/")
    manifest = stack.checkpoints.RegisterCheckpoint(ck.RegisterCheckpointRequest(
        job_id=JOB, step=step, kind=ck.CHECKPOINT_KIND_LORA, prefix=f"{JOB}/step-{step}",
        files=[ck.FileEntry(path=f.path, size=f.size, sha256=f.sha256) for f in written.files],
        metrics={"eval_loss": loss},
        lineage=ck.Lineage(job_id=JOB, dataset_version_id=version_id, base_model=BASE))).manifest
    return manifest.checkpoint_id


def _wait(stub: ev_grpc.EvaluationServiceStub, evaluation_id: str) -> ev.Evaluation:
    req = ev.StreamEvaluationProgressRequest(evaluation_id=evaluation_id)
    for event in stub.StreamEvaluationProgress(req, timeout=300):
        if event.state in TERMINAL:
            break
    return stub.GetEvaluation(ev.GetEvaluationRequest(evaluation_id=evaluation_id)).evaluation


def _aliases(stack: Stack) -> dict[str, ck.Alias]:
    return {a.name: a for a in stack.checkpoints.ListAliases(ck.ListAliasesRequest(job_id=JOB)).aliases}


def _request(checkpoint: str, version_id: str, **kw) -> ev.CreateEvaluationRequest:
    return ev.CreateEvaluationRequest(
        model=ev.ModelRef(checkpoint_id=checkpoint), baseline=ev.ModelRef(base_model=BASE),
        datasets=[ev.EvalDataset(version_id=version_id, split="test")],
        metrics=[ev.METRIC_PERPLEXITY, ev.METRIC_ROUGE],
        generation=ev.GenerationConfig(max_new_tokens=12, batch_size=8), **kw)


def test_checkpoint_beats_its_base_on_the_test_split_and_becomes_best(services, tmp_path):
    stacks, settings = services
    acme = stacks["acme"]
    version_id = _upload_and_split(acme)
    untrained, trained = _lora_checkpoints(settings.models_dir / BASE, _train_rows(acme, version_id), tmp_path / "ckpt")
    # The training metric ranks the untrained adapter best: only the evaluation knows better.
    first = _register(acme, settings, "acme", untrained, 1, 0.1, version_id)
    tuned = _register(acme, settings, "acme", trained, 2, 0.5, version_id)
    assert _aliases(acme)["best"].checkpoint_id == first

    created = acme.evaluation.CreateEvaluation(_request(tuned, version_id, mark_best_by="perplexity")).evaluation
    e = _wait(acme.evaluation, created.id)
    assert e.state == common_pb2.OPERATION_STATE_SUCCEEDED, f"{e.error.code}: {e.error.message}"
    by_model = {(r.model.checkpoint_id or r.model.base_model): {m.name: m.value for m in r.metrics} for r in e.results}
    test_rows = acme.datasets.GetDatasetVersion(ds.GetDatasetVersionRequest(version_id=version_id)).version
    assert {m.name: m.count for r in e.results for m in r.metrics}["rouge1"] == test_rows.split_counts["test"]
    assert by_model[tuned]["perplexity"] < by_model[BASE]["perplexity"] / 2
    assert by_model[tuned]["rouge1"] > by_model[BASE]["rouge1"]

    cmp = acme.evaluation.CompareModels(ev.CompareModelsRequest(evaluation_id=created.id))
    ppl = next(c for c in cmp.comparisons if c.name == "perplexity")
    assert ppl.model_better and ppl.delta < 0 and ppl.dataset_version_id == version_id
    assert "model better on" in cmp.summary and "perplexity" in cmp.summary

    cached = settings.data_dir / "cache" / "models" / "acme" / "checkpoints" / tuned
    assert (cached / "adapter_config.json").is_file()  # only the checkpoint's model folder was fetched
    assert not (cached / "trainer_state.json").exists() and not (cached / "model").exists()

    best = _aliases(acme)["best"]
    assert best.checkpoint_id == tuned
    assert [h.checkpoint_id for h in best.history][:2] == [tuned, first]
    assert _aliases(acme)["latest"].checkpoint_id == tuned


def test_a_tenant_cannot_evaluate_another_tenants_checkpoint_or_dataset(services, tmp_path):
    stacks, settings = services
    acme, acme2 = stacks["acme"], stacks["acme2"]
    version_id = _upload_and_split(acme)
    untrained, _ = _lora_checkpoints(settings.models_dir / BASE, _train_rows(acme, version_id), tmp_path / "c")
    checkpoint = _register(acme, settings, "acme", untrained, 1, 0.1, version_id)
    own_version = _upload_and_split(acme2)

    cases = {
        "checkpoint": _request(checkpoint, own_version),
        "dataset": ev.CreateEvaluationRequest(model=ev.ModelRef(base_model=BASE),
                                              datasets=[ev.EvalDataset(version_id=version_id)],
                                              metrics=[ev.METRIC_PERPLEXITY]),
    }
    for what, request in cases.items():
        with pytest.raises(grpc.RpcError) as info:
            acme2.evaluation.CreateEvaluation(request)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND, what
        assert (checkpoint if what == "checkpoint" else version_id) in info.value.details(), what
    assert not acme2.evaluation.ListEvaluations(ev.ListEvaluationsRequest()).evaluations
    with pytest.raises(grpc.RpcError) as info:  # a split the version does not have is named
        acme.evaluation.CreateEvaluation(ev.CreateEvaluationRequest(
            model=ev.ModelRef(base_model=BASE), datasets=[ev.EvalDataset(version_id=version_id, split="dev")],
            metrics=[ev.METRIC_PERPLEXITY]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'dev'" in info.value.details()
