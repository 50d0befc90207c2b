"""GRPO through CreateJob on real servers (datasets, checkpoints, training; Ray Train with two
DeepSpeed ZeRO-2 workers on CPU): a prompt-only dataset uploaded through the datasets service, the
reward of trl's quick-start length task rising, and a worker killed mid-job: the restarted group
resumes from the last checkpoint and repeats the killed attempt's numbers exactly."""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("ray")
pytest.importorskip("deepspeed")

import grpc

from tests.integration.training.conftest import BASE, wait_job
from tuneforge.datasets.v1 import datasets_pb2 as ds
from tuneforge.engine.train.faults import FAULT_ENV
from tuneforge.training.v1 import training_pb2 as tr

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOPICS = ["cats", "dogs", "rivers", "maps", "bread", "foxes", "poems", "numbers"]
STEPS = 8


@pytest.fixture(autouse=True)
def _ray_session():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def upload_prompts(stack) -> str:
    rows = [{"prompt": f"Write something about {t}.", "answer": t} for t in TOPICS]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()

    def requests():
        yield ds.UploadDatasetRequest(metadata=ds.UploadMetadata(dataset_name="prompts", file_name="prompts.jsonl"))
        yield ds.UploadDatasetRequest(chunk=data)

    version = stack.datasets.UploadDataset(requests()).version
    assert version.kind == ds.RECORD_KIND_PROMPT
    return version.id


def grpo_request(version_id: str, **hp) -> tr.CreateJobRequest:
    fields = {"learning_rate": 2e-2, "max_steps": STEPS, "micro_batch_size": 2, "lr_scheduler": tr.LR_SCHEDULER_CONSTANT,
              "max_seq_length": 96, "seed": 3, "num_generations": 8, "max_new_tokens": 12,
              "reward_functions": [tr.RewardFunction(name="length", target_length=80)]}
    return tr.CreateJobRequest(
        base_model=BASE, method=tr.METHOD_FULL, objective=tr.OBJECTIVE_GRPO, dataset_version_id=version_id,
        hyperparameters=tr.Hyperparameters(**{**fields, **hp}),
        resources=tr.Resources(num_workers=2, zero_stage=2),
        schedule=tr.Schedule(save_every_steps=2))


# Two Ray workers started twice (the restart) dominate: a few minutes on a quiet machine, far more on a loaded one.
@pytest.mark.timeout(2400)
def test_grpo_job_reward_rises_and_a_killed_worker_resumes_exactly(cluster, tmp_path, monkeypatch):
    # Worker 1 dies (os._exit, as an OOM kill would) before step 4, once: Ray restarts the group, the
    # recipe resumes from the step-2 checkpoint and runs step 3 again.
    marker = tmp_path / "fault-fired"
    monkeypatch.setenv(FAULT_ENV, f"rank=1,step=4,marker={marker}")
    acme = cluster.stack("acme")
    job = acme.training.CreateJob(grpo_request(upload_prompts(acme))).job
    assert job.objective == tr.OBJECTIVE_GRPO and job.hyperparameters.num_generations == 8
    assert job.hyperparameters.clip_epsilon == pytest.approx(0.2) and job.hyperparameters.rl_loss_type == "dapo"
    assert [(r.name, r.target_length) for r in job.hyperparameters.reward_functions] == [("length", 80)]
    done = wait_job(acme.training, job.id, timeout=2300)
    events = list(acme.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id)))
    logs = [e.log.message for e in events if e.WhichOneof("payload") == "log"]
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message, logs)
    assert marker.exists() and done.restarts == 1, logs
    assert any(m.startswith("resumed from the checkpoint at step 2") for m in logs), logs
    reports: dict[int, list[tr.Metrics]] = {}
    for e in events:
        if e.WhichOneof("payload") == "metrics" and e.metrics.response_length:
            reports.setdefault(e.metrics.step, []).append(e.metrics)
    assert sorted(reports) == list(range(1, STEPS + 1))
    # Step 3 ran before the kill and again after the resume: same rollouts, same weights, same numbers.
    first, again = reports[3][0], reports[3][-1]
    assert len(reports[3]) == 2
    for key in ("loss", "reward_mean", "reward_std", "entropy", "grad_norm", "response_length"):
        assert getattr(again, key) == pytest.approx(getattr(first, key), rel=1e-5, abs=1e-6), key
    rewards = [reports[s][-1].reward_mean for s in range(1, STEPS + 1)]
    assert (rewards[-1] + rewards[-2]) / 2 > (rewards[0] + rewards[1]) / 2 + 15, rewards
    assert all(0 < reports[s][-1].response_length <= 12 for s in reports)


def test_bad_rl_settings_are_field_violations(cluster):
    # (every case is in tests/unit/training/test_online_rl_api.py; here: the status code on the wire)
    acme = cluster.stack("acme")
    req = grpo_request("dsv_unused", num_generations=1, reward_functions=[tr.RewardFunction(name="python_eval")])
    with pytest.raises(grpc.RpcError) as caught:
        acme.training.CreateJob(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = caught.value.details()
    assert "hyperparameters.num_generations" in details and "hyperparameters.reward_functions[0].name" in details, details


def test_grpo_on_a_chat_dataset_is_refused(cluster):
    from tests.integration.training.conftest import upload_and_split

    acme = cluster.stack("acme")
    req = grpo_request(upload_and_split(acme))
    req.resources.num_workers = 1
    with pytest.raises(grpc.RpcError) as caught:
        acme.training.CreateJob(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "prompt-only records" in caught.value.details(), caught.value.details()


def test_grpo_job_scores_with_a_reward_model_named_in_the_request(cluster, tmp_path, tiny_model_dir):
    # A one-label sequence classifier in the models folder, named by the request like a base model
    # (a reward-model checkpoint id resolves the same way): the run makes it local and scores with it.
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    folder = tmp_path / "models" / "tiny-rm"
    config = LlamaConfig.from_pretrained(tiny_model_dir, num_labels=1)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    acme = cluster.stack("acme")
    req = grpo_request(upload_prompts(acme), max_steps=2, reward_functions=[], reward_model="tiny-rm",
                       reward_model_weight=2.0)
    req.resources.num_workers = 1
    req.resources.zero_stage = 0
    job = acme.training.CreateJob(req).job
    assert job.hyperparameters.reward_model == "tiny-rm"
    done = wait_job(acme.training, job.id, timeout=600)
    events = list(acme.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id)))
    logs = [e.log.message for e in events if e.WhichOneof("payload") == "log"]
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message, logs)
    assert any(m.startswith("input reward_model: tiny-rm from ") for m in logs), logs
    metrics = [e.metrics for e in events if e.WhichOneof("payload") == "metrics" and e.metrics.response_length]
    assert len(metrics) == 2 and all(m.reward_mean != 0.0 and m.reward_std > 0 for m in metrics)


def test_an_unknown_reward_model_is_not_found(cluster):
    acme = cluster.stack("acme")
    req = grpo_request(upload_prompts(acme), reward_model="no-such-rm")
    with pytest.raises(grpc.RpcError) as caught:
        acme.training.CreateJob(req)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND, caught.value.details()


def test_a_language_model_named_as_the_reward_model_is_refused(cluster):
    # The base (a causal LM) would score with a randomly initialised head: refused at CreateJob, by field.
    from tuneforge.common.grpc.interceptors import bad_request_violations

    acme = cluster.stack("acme")
    req = grpo_request(upload_prompts(acme), reward_model=BASE)
    with pytest.raises(grpc.RpcError) as caught:
        acme.training.CreateJob(req)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert [f for f, _ in bad_request_violations(caught.value)] == ["hyperparameters.reward_model"]
    assert "not a reward model" in caught.value.details()


def test_ppo_job_reports_its_value_loss_and_saves_the_value_head(cluster):
    # PPO through the API: one worker, no ZeRO, two steps. The policy, its value head and the frozen
    # reference (KL in the reward, beta 0.05 by default) train and report as the engine measures them.
    import safetensors.torch

    from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck

    acme = cluster.stack("acme")
    req = grpo_request(upload_prompts(acme), max_steps=2, num_generations=4, learning_rate=1e-3)
    req.objective = tr.OBJECTIVE_PPO
    req.resources.num_workers = 1
    req.resources.zero_stage = 0
    job = acme.training.CreateJob(req).job
    assert job.objective == tr.OBJECTIVE_PPO
    # PPO's defaults come back resolved on the job (the reference: tuneforge.training.reference).
    hp = job.hyperparameters
    assert (hp.gamma, hp.gae_lambda, hp.kl_beta) == (pytest.approx(1.0), pytest.approx(0.95), pytest.approx(0.05))
    assert hp.vf_coef == pytest.approx(0.1) and hp.value_clip == pytest.approx(0.2)
    done = wait_job(acme.training, job.id, timeout=600)
    events = list(acme.training.StreamJobEvents(tr.StreamJobEventsRequest(job_id=job.id)))
    logs = [e.log.message for e in events if e.WhichOneof("payload") == "log"]
    assert done.status == tr.JOB_STATUS_SUCCEEDED, (done.error.code, done.error.message, logs)
    steps = [e.metrics for e in events if e.WhichOneof("payload") == "metrics" and e.metrics.response_length]
    assert [m.step for m in steps] == [1, 2]
    # The zero-initialised head predicts 0 against non-zero returns: the first value loss is positive.
    assert steps[0].value_loss > 0 and all(math.isfinite(m.value_loss) for m in steps)
    assert all(m.kl >= 0 and 0 <= m.clip_fraction <= 1 and math.isfinite(m.loss) for m in steps)
    assert all(m.reward_std > 0 and 0 < m.response_length <= 12 for m in steps)
    assert steps[1].kl > 0  # the policy moved away from its frozen reference after the first update

    # The checkpoint holds the value head beside the policy (what a resume reads back).
    manifest = acme.checkpoints.GetManifest(ck.GetManifestRequest(checkpoint=done.result_checkpoint_id)).manifest
    assert manifest.kind == ck.CHECKPOINT_KIND_FULL and manifest.head == ck.MODEL_HEAD_CAUSAL_LM
    tensors: dict = {}
    for f in (f for f in manifest.files if f.path.endswith(".safetensors")):
        data = b"".join(c.data for c in acme.checkpoints.DownloadFile(
            ck.DownloadFileRequest(checkpoint_id=manifest.checkpoint_id, path=f.path)))
        tensors |= safetensors.torch.load(data)
    assert tensors["v_head.weight"].shape == (1, 64) and float(tensors["v_head.weight"].abs().sum()) > 0
    assert "v_head.bias" in tensors and any(k.endswith("embed_tokens.weight") for k in tensors)
