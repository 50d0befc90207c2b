"""Reward models and KTO through the API (CreateJob on real dataset, checkpoint and training servers,
the tiny base model from the models folder).

A reward model trained on a separable synthetic preference set reaches high pairwise accuracy on
its held-out pairs; its checkpoint is of head MODEL_HEAD_REWARD_MODEL and its merged export loads
with ``AutoModelForSequenceClassification`` (num_labels=1, trust_remote_code off) and ranks the
held-out pairs as well. A GRPO job then names that reward-model checkpoint by id (no reward function:
every reward is its score), and the evaluation service judges the tuned policy against its base with
it (win rate). KTO trains on an uploaded labelled-completion (KTO format) dataset.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.integration.training.conftest import BASE, lora_request, wait_job
from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.common.grpc.interceptors import bad_request_violations
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = pytest.mark.integration

THINGS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow",
          "milk": "white", "night": "black", "leaf": "green", "sea": "blue", "cloud": "white", "fire": "red",
          "lemon": "yellow", "tar": "black", "rose": "red", "ice": "white"}
ASK = ["What colour is the {x}?", "Tell me the colour of the {x}.", "Which colour does the {x} have?"]


def separable_pairs() -> list[dict]:
    """48 pairs whose chosen answer is polite and on topic and whose rejected one is curt and rude."""
    return [{"prompt": q.format(x=x), "chosen": f"The {x} is {c}. Thank you for asking!",
             "rejected": f"{c.upper()}?! Stop bothering me."} for x, c in THINGS.items() for q in ASK]


def _upload(stack, name: str, rows: list[dict], fmt: int = 0) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()

    def requests():
        yield ds.UploadDatasetRequest(metadata=ds.UploadMetadata(dataset_name=name, file_name=f"{name}.jsonl",
                                                                 format=fmt))
        yield ds.UploadDatasetRequest(chunk=data)

    return stack.datasets.UploadDataset(requests()).version.id


def _split(stack, version_id: str, validation: float) -> str:
    run = stack.datasets.CurateDataset(ds.CurateDatasetRequest(
        version_id=version_id, steps=[ds.CurationStep(exact_dedup=ds.ExactDedupStep())],
        split=ds.SplitConfig(validation_ratio=validation, seed=5))).run
    deadline = time.monotonic() + 120
    done = (common_pb2.OPERATION_STATE_SUCCEEDED, common_pb2.OPERATION_STATE_FAILED,
            common_pb2.OPERATION_STATE_CANCELLED)
    while run.state not in done and time.monotonic() < deadline:
        time.sleep(0.1)
        run = stack.datasets.GetCurationRun(ds.GetCurationRunRequest(run_id=run.id)).run
    assert run.state == common_pb2.OPERATION_STATE_SUCCEEDED, run.error.message
    return run.output_version_id


def _metrics(stack, job_id: str) -> list[tr.Metrics]:
    events = stack.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job_id))
    return [e.metrics for e in events if e.WhichOneof("payload") == "metrics"]


def _score(model, tokenizer, prompt: str, answer: str) -> float:
    import torch

    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                                         tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return float(model(**ids).logits[0, 0])


def _evaluation_stub(cluster, make_service, tmp_path: Path):
    """A real evaluation service on the cluster's store and peers."""
    from tuneforge.common.grpc.client import channel
    from tuneforge.evaluation.app import build_app as build_evaluation
    from tuneforge.evaluation.settings import EvaluationSettings
    from tuneforge.evaluation.v1 import evaluation_pb2_grpc as ev_grpc

    service = make_service(EvaluationSettings, build_evaluation, object_store_uri=(tmp_path / "objects").as_uri(),
                           models_dir=tmp_path / "models", datasets_address=cluster.addresses["datasets"],
                           checkpoints_address=cluster.addresses["checkpoints"],
                           auth_tokens=",".join(f"{t}:{tok}" for t, tok in cluster.tokens.items()))
    return ev_grpc.EvaluationServiceStub(channel(service.address, cluster.tokens["acme"], default_timeout=60))


def _wait_evaluation(stub, evaluation_id: str):
    from tuneforge.evaluation.v1 import evaluation_pb2 as ev

    deadline = time.monotonic() + 300
    evaluation = stub.GetEvaluation(ev.GetEvaluationRequest(evaluation_id=evaluation_id)).evaluation
    while evaluation.state not in (common_pb2.OPERATION_STATE_SUCCEEDED, common_pb2.OPERATION_STATE_FAILED,
                                   common_pb2.OPERATION_STATE_CANCELLED) and time.monotonic() < deadline:
        time.sleep(0.2)
        evaluation = stub.GetEvaluation(ev.GetEvaluationRequest(evaluation_id=evaluation_id)).evaluation
    assert evaluation.state == common_pb2.OPERATION_STATE_SUCCEEDED, evaluation.error.message
    return evaluation


def _evaluate_reward_accuracy(stub, checkpoint_id: str, version_id: str):
    """METRIC_REWARD_ACCURACY through the evaluation service."""
    from tuneforge.evaluation.v1 import evaluation_pb2 as ev

    # A reward model computes its own metric only: asking for more is refused, naming the field.
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateEvaluation(ev.CreateEvaluationRequest(
            model=ev.ModelRef(checkpoint_id=checkpoint_id), datasets=[ev.EvalDataset(version_id=version_id)],
            metrics=[ev.METRIC_REWARD_ACCURACY, ev.METRIC_PERPLEXITY]))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request_violations(info.value)] == ["metrics"]
    created = stub.CreateEvaluation(ev.CreateEvaluationRequest(
        model=ev.ModelRef(checkpoint_id=checkpoint_id),
        datasets=[ev.EvalDataset(version_id=version_id, split="validation")],
        metrics=[ev.METRIC_REWARD_ACCURACY])).evaluation
    evaluation = _wait_evaluation(stub, created.id)
    metrics = {m.name: m for r in evaluation.results for m in r.metrics}

    # Win rate judged by the reward model, by checkpoint id: the base against itself with greedy
    # decoding gives the same answers, so every prompt is a tie (1/2) and both mean rewards agree.
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateEvaluation(ev.CreateEvaluationRequest(
            model=ev.ModelRef(base_model="tiny-base"), baseline=ev.ModelRef(base_model="tiny-base"),
            datasets=[ev.EvalDataset(version_id=version_id)], metrics=[ev.METRIC_REWARD_WIN_RATE]))
    assert [f for f, _ in bad_request_violations(info.value)] == ["reward_model"]
    created = stub.CreateEvaluation(ev.CreateEvaluationRequest(
        model=ev.ModelRef(base_model="tiny-base"), baseline=ev.ModelRef(base_model="tiny-base"),
        reward_model=ev.ModelRef(checkpoint_id=checkpoint_id),
        datasets=[ev.EvalDataset(version_id=version_id, split="validation", max_samples=6)],
        metrics=[ev.METRIC_REWARD_WIN_RATE], generation=ev.GenerationConfig(max_new_tokens=6))).evaluation
    assert created.reward_model.checkpoint_id == checkpoint_id
    evaluation = _wait_evaluation(stub, created.id)
    judged = {m.name: m for r in evaluation.results for m in r.metrics if m.name.startswith("reward_")}
    assert judged["reward_win_rate"].value == 0.5 and judged["reward_win_rate"].count == 6
    assert judged["reward_mean_model"].value == pytest.approx(judged["reward_mean_baseline"].value)
    return metrics


@pytest.mark.slow
@pytest.mark.timeout(2400)
@pytest.mark.usefixtures("_ray_session")
def test_reward_model_reaches_high_accuracy_then_rewards_a_grpo_job_by_checkpoint_id(cluster, make_service,
                                                                                    tmp_path: Path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    acme = cluster.stack("acme")
    version_id = _split(acme, _upload(acme, "rm-prefs", separable_pairs()), validation=0.25)
    req = lora_request(version_id, steps=12, every=6, objective=tr.OBJECTIVE_REWARD_MODEL)
    req.hyperparameters.learning_rate = 1e-2
    req.hyperparameters.reward_margin = 0.5
    job = acme.training.CreateJob(req).job
    assert job.objective == tr.OBJECTIVE_REWARD_MODEL and job.hyperparameters.reward_margin == 0.5
    done = wait_job(acme.training, job.id, timeout=400)
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message)

    metrics = _metrics(acme, job.id)
    losses = [m.loss for m in metrics if m.loss]
    evals = [m for m in metrics if m.eval_loss]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses) and min(losses[-3:]) < losses[0]
    assert any(m.reward_accuracy for m in metrics)  # training steps report it too
    assert len(evals) == 2 and evals[-1].eval_reward_accuracy >= 0.9, [m.eval_reward_accuracy for m in evals]
    assert evals[-1].eval_reward_margin_mean > 0

    manifest = acme.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=done.result_checkpoint_id)).manifest
    assert manifest.head == ck.MODEL_HEAD_REWARD_MODEL and manifest.kind == ck.CHECKPOINT_KIND_LORA
    assert manifest.metrics["eval_reward_accuracy"] >= 0.9

    # The merged export is a plain Hugging Face sequence classifier other jobs load by checkpoint.
    export = acme.checkpoints.ExportCheckpoint(ck.ExportCheckpointRequest(
        checkpoint=done.result_checkpoint_id, format=ck.EXPORT_FORMAT_MERGED), timeout=300)
    folder = Path(urlparse(export.uri).path)
    assert {"config.json", "model.safetensors"} <= {f.path for f in export.files}
    assert not any(f.path.endswith((".bin", ".pt")) for f in export.files)
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=False,
                                                               use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id
    held_out = acme.datasets.PreviewRows(ds.PreviewRowsRequest(version_id=version_id, split="validation",
                                                               limit=50)).rows
    assert len(held_out) >= 8
    right = [_score(model, tokenizer, r["prompt"][0]["content"], r["chosen"])
             > _score(model, tokenizer, r["prompt"][0]["content"], r["rejected"]) for r in held_out]
    assert sum(right) / len(right) >= 0.9

    # The evaluation service reports the same pairwise accuracy on the held-out split, by checkpoint id.
    evaluations = _evaluation_stub(cluster, make_service, tmp_path)
    metrics = _evaluate_reward_accuracy(evaluations, done.result_checkpoint_id, version_id)
    accuracy = metrics["reward_accuracy"]
    assert accuracy.count == len(held_out) and accuracy.value == pytest.approx(sum(right) / len(right))
    assert accuracy.value >= 0.9 and accuracy.ci_low <= accuracy.value <= accuracy.ci_high
    assert metrics["reward_margin_mean"].value > 0

    # The chain the issue judges: a GRPO job names this reward model by its checkpoint id (a LoRA
    # checkpoint: the workers apply it on the base), then the tuned policy meets its base before it.
    policy = _grpo_with_reward_model(acme, done.result_checkpoint_id)
    _win_rate_of_the_tuned_policy(evaluations, policy, done.result_checkpoint_id, version_id)


@pytest.fixture
def _ray_session():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _grpo_with_reward_model(acme, reward_checkpoint_id: str) -> str:
    """A short GRPO job (1 worker, no ZeRO) rewarded only by the reward-model checkpoint; its result checkpoint."""
    prompts = [{"prompt": q.format(x=x)} for x in THINGS for q in ASK[:1]]
    version = acme.datasets.GetDatasetVersion(ds.GetDatasetVersionRequest(
        version_id=_upload(acme, "rm-prompts", prompts))).version
    assert version.kind == ds.RECORD_KIND_PROMPT
    job = acme.training.CreateJob(tr.CreateJobRequest(
        base_model=BASE, method=tr.METHOD_FULL, objective=tr.OBJECTIVE_GRPO, dataset_version_id=version.id,
        hyperparameters=tr.Hyperparameters(learning_rate=1e-2, max_steps=3, micro_batch_size=2, seed=3,
                                           lr_scheduler=tr.LR_SCHEDULER_CONSTANT, max_seq_length=96,
                                           num_generations=4, max_new_tokens=8,
                                           reward_model=reward_checkpoint_id),
        resources=tr.Resources(num_workers=1, zero_stage=0), schedule=tr.Schedule(save_every_steps=3))).job
    assert job.hyperparameters.reward_model == reward_checkpoint_id and not job.hyperparameters.reward_functions
    done = wait_job(acme.training, job.id, timeout=900)
    events = list(acme.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id)))
    logs = [e.log.message for e in events if e.WhichOneof("payload") == "log"]
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message, logs)
    assert any(m.startswith(f"input reward_model: {reward_checkpoint_id} from ") and "with the adapter" in m
               for m in logs), logs
    # No reward function: every reward is the reward model's score, so it varies within the groups.
    steps = [e.metrics for e in events if e.WhichOneof("payload") == "metrics" and e.metrics.response_length]
    assert len(steps) == 3 and all(math.isfinite(m.reward_mean) and m.reward_std > 0 for m in steps), steps
    assert done.result_checkpoint_id
    return done.result_checkpoint_id


def _win_rate_of_the_tuned_policy(stub, policy_checkpoint_id: str, reward_checkpoint_id: str, version_id: str):
    """METRIC_REWARD_WIN_RATE of the GRPO result against its base, judged by the reward model. Three
    steps on a tiny model move the policy too little to promise it wins: the value is checked for range."""
    from tuneforge.evaluation.v1 import evaluation_pb2 as ev

    created = stub.CreateEvaluation(ev.CreateEvaluationRequest(
        model=ev.ModelRef(checkpoint_id=policy_checkpoint_id), baseline=ev.ModelRef(base_model=BASE),
        reward_model=ev.ModelRef(checkpoint_id=reward_checkpoint_id),
        datasets=[ev.EvalDataset(version_id=version_id, split="validation", max_samples=6)],
        metrics=[ev.METRIC_REWARD_WIN_RATE], generation=ev.GenerationConfig(max_new_tokens=6))).evaluation
    assert created.model.checkpoint_id == policy_checkpoint_id
    judged = {m.name: m for r in _wait_evaluation(stub, created.id).results for m in r.metrics}
    win = judged["reward_win_rate"]
    assert 0.0 <= win.value <= 1.0 and win.count == 6
    assert math.isfinite(judged["reward_mean_model"].value) and math.isfinite(judged["reward_mean_baseline"].value)


def test_kto_job_on_a_labelled_completion_dataset(cluster):
    acme = cluster.stack("acme")
    rows = []
    for x, c in THINGS.items():
        rows.append({"prompt": f"What colour is the {x}?", "completion": f"The {x} is {c}.", "label": True})
        rows.append({"prompt": f"What colour is the {x}?", "completion": f"The {x} is purple.", "label": False})
    version_id = _upload(acme, "kto-data", rows, fmt=ds.DATASET_FORMAT_KTO)
    version = acme.datasets.GetDatasetVersion(ds.GetDatasetVersionRequest(version_id=version_id)).version
    assert version.kind == ds.RECORD_KIND_LABELLED
    stats = acme.datasets.GetDatasetStats(ds.GetDatasetStatsRequest(version_id=version_id))
    assert dict(stats.label_counts) == {"desirable": 16, "undesirable": 16}

    # Labelled completions cannot train DPO, and KTO cannot train on preference pairs: named fields.
    with pytest.raises(grpc.RpcError) as info:
        acme.training.CreateJob(lora_request(version_id, steps=2, every=0, objective=tr.OBJECTIVE_DPO))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request_violations(info.value)] == ["dataset_version_id"]
    assert "KTO" in info.value.details()

    req = lora_request(version_id, steps=4, every=0, objective=tr.OBJECTIVE_KTO)
    req.schedule.save_every_steps = 4
    req.hyperparameters.learning_rate = 1e-2
    req.hyperparameters.kto_beta = 0.2
    # Equal weights: every batch's loss starts at 1.2 * (1 - sigmoid(0)) = 0.6, whatever its mix of labels.
    req.hyperparameters.kto_desirable_weight = 1.2
    req.hyperparameters.kto_undesirable_weight = 1.2
    job = acme.training.CreateJob(req).job
    assert job.objective == tr.OBJECTIVE_KTO and job.hyperparameters.kto_beta == pytest.approx(0.2)
    assert job.hyperparameters.kto_undesirable_weight == pytest.approx(1.2)
    done = wait_job(acme.training, job.id, timeout=300)
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message)
    metrics = [m for m in _metrics(acme, job.id) if m.loss]
    assert len(metrics) == 4 and all(math.isfinite(m.loss) for m in metrics)
    assert metrics[0].loss == pytest.approx(0.6, abs=1e-4)
    assert min(m.loss for m in metrics[-2:]) < metrics[0].loss, [m.loss for m in metrics]
    assert all(m.kto_kl >= 0 for m in metrics) and any(m.kto_kl > 0 for m in metrics[1:])
    manifest = acme.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=done.result_checkpoint_id)).manifest
    assert manifest.head == ck.MODEL_HEAD_CAUSAL_LM and manifest.lineage.dataset_version_id == version_id
