"""Training domain: CreateJob validation, the status machine, request -> engine spec, idempotency digest."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tuneforge.common.errors import FailedPrecondition, InvalidInput
from tuneforge.engine.spec import load_spec
from tuneforge.training.domain import specmap
from tuneforge.training.domain.model import (
    Hyperparameters,
    Job,
    JobSpec,
    JobStatus,
    LrScheduler,
    Method,
    Objective,
    Precision,
    Resources,
    Schedule,
    TaskMixture,
    check_transition,
)
from tuneforge.training.domain.service import request_digest
from tuneforge.training.domain.validation import dataset_kind_violations, engine_field, request_violations

GOOD = JobSpec(base_model="tiny", method=Method.LORA, objective=Objective.SFT, dataset_version_id="dsv_1")


def _fields(spec: JobSpec) -> set[str]:
    return {v.field for v in request_violations(spec)}


def test_a_good_request_has_no_violations() -> None:
    assert request_violations(GOOD) == []


@pytest.mark.parametrize(("change", "field"), [
    ({"base_model": " "}, "base_model"),
    ({"method": Method.UNSPECIFIED}, "method"),
    ({"objective": Objective.UNSPECIFIED}, "objective"),
    ({"dataset_version_id": ""}, "dataset_version_id"),
    ({"mixture": (TaskMixture("dsv_2", 1.0),)}, "mixture"),
    ({"dataset_version_id": "", "mixture": (TaskMixture("dsv_2", 0.0),)}, "mixture[0].weight"),
    ({"dataset_version_id": "", "mixture": (TaskMixture("dsv_2", -1.0),)}, "mixture[0].weight"),
    ({"dataset_version_id": "", "mixture": (TaskMixture("", 1.0),)}, "mixture[0].dataset_version_id"),
    ({"hyperparameters": Hyperparameters(warmup_steps=3, warmup_ratio=0.1)}, "hyperparameters.warmup_ratio"),
    ({"hyperparameters": Hyperparameters(epochs=2, max_steps=10)}, "hyperparameters.max_steps"),
    ({"hyperparameters": Hyperparameters(learning_rate=2.0)}, "hyperparameters.learning_rate"),
    ({"hyperparameters": Hyperparameters(micro_batch_size=-1)}, "hyperparameters.micro_batch_size"),
    ({"hyperparameters": Hyperparameters(max_seq_length=4)}, "hyperparameters.max_seq_length"),
    ({"hyperparameters": Hyperparameters(lora_dropout=1.0)}, "hyperparameters.lora_dropout"),
    ({"hyperparameters": Hyperparameters(qlora_quant_type="int3")}, "hyperparameters.qlora_quant_type"),
    ({"hyperparameters": Hyperparameters(precision=Precision.FP16)}, "hyperparameters.precision"),
    ({"resources": Resources(zero_stage=4)}, "resources.zero_stage"),
    ({"resources": Resources(zero_stage=-1)}, "resources.zero_stage"),
    ({"resources": Resources(zero_stage=2, offload_params=True)}, "resources.offload_params"),
    ({"resources": Resources(offload_optimizer=True)}, "resources.offload_optimizer"),
    ({"resources": Resources(num_workers=-2)}, "resources.num_workers"),
    ({"method": Method.QLORA, "resources": Resources(zero_stage=3)}, "resources.zero_stage"),
    ({"schedule": Schedule(early_stopping_patience=2)}, "schedule.early_stopping_patience"),
    ({"schedule": Schedule(keep_best_n=-1)}, "schedule.keep_best_n"),
    ({"suffix": "x" * 65}, "suffix"),
    ({"labels": {"Bad Key": "v"}}, "labels[Bad Key]"),
])
def test_each_bad_field_is_named(change: dict, field: str) -> None:
    assert field in _fields(replace(GOOD, **change))


def test_every_problem_is_reported_at_once() -> None:
    bad = JobSpec(base_model="", method=Method.UNSPECIFIED, objective=Objective.UNSPECIFIED,
                  hyperparameters=Hyperparameters(warmup_steps=1, warmup_ratio=0.5, epochs=1, max_steps=1),
                  resources=Resources(zero_stage=9, offload_params=True))
    assert {"base_model", "method", "objective", "dataset_version_id", "hyperparameters.warmup_ratio",
            "hyperparameters.max_steps", "resources.zero_stage", "resources.offload_params"} <= _fields(bad)


@pytest.mark.parametrize(("objective", "kind", "bad"), [
    (Objective.DPO, "CHAT", True), (Objective.DPO, "PREFERENCE", False), (Objective.SFT, "PREFERENCE", True),
    (Objective.SFT, "CHAT", False), (Objective.PRETRAIN, "TEXT", False), (Objective.DPO, "", False),
])
def test_objective_must_fit_the_dataset_kind(objective: Objective, kind: str, bad: bool) -> None:
    found = dataset_kind_violations(replace(GOOD, objective=objective), {"dsv_1": kind})
    assert [v.field for v in found] == (["dataset_version_id"] if bad else [])


@pytest.mark.parametrize(("path", "api"), [
    ("method.lora.r", "hyperparameters.lora_r"), ("data.max_seq_length", "hyperparameters.max_seq_length"),
    ("objective.dpo.beta", "hyperparameters.dpo_beta"), ("schedule.eval_every_steps", "schedule.eval_every_steps"),
    ("data.mixture[1].weight", "mixture[1]"), ("model.path", "base_model"), ("precision", "hyperparameters.precision"),
])
def test_engine_fields_map_back_to_api_fields(path: str, api: str) -> None:
    assert engine_field(path) == api


ALL = list(JobStatus)
LEGAL = {(JobStatus.VALIDATING, JobStatus.QUEUED), (JobStatus.QUEUED, JobStatus.RUNNING),
         (JobStatus.RUNNING, JobStatus.SUCCEEDED), (JobStatus.RUNNING, JobStatus.QUEUED)} | {
    (a, b) for a in (JobStatus.VALIDATING, JobStatus.QUEUED, JobStatus.RUNNING)
    for b in (JobStatus.FAILED, JobStatus.CANCELLED)}


@pytest.mark.parametrize("current", ALL)
@pytest.mark.parametrize("new", ALL)
def test_status_machine(current: JobStatus, new: JobStatus) -> None:
    if (current, new) in LEGAL:
        check_transition(current, new)
    else:
        with pytest.raises(FailedPrecondition):
            check_transition(current, new)


def test_final_states_are_final_and_job_moves_through_the_machine() -> None:
    job = Job("job_1", "acme", GOOD, JobStatus.VALIDATING, None, "job_1")  # type: ignore[arg-type]
    for status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLED):
        job.move_to(status)
    assert job.status.terminal
    with pytest.raises(FailedPrecondition, match="has ended"):
        job.move_to(JobStatus.RUNNING)


def test_defaults_follow_the_proto() -> None:
    d = specmap.with_defaults(GOOD)
    hp = d.hyperparameters
    assert (hp.learning_rate, hp.lr_scheduler, hp.epochs, hp.micro_batch_size, hp.max_seq_length) == (
        2e-4, LrScheduler.LINEAR, 1, 4, 1024)
    assert (hp.lora_r, hp.lora_alpha, hp.dpo_beta, hp.max_grad_norm, hp.precision) == (16, 32.0, 0.1, 1.0, Precision.FP32)
    assert (d.resources.num_workers, d.resources.max_failures) == (1, 3)
    assert (d.schedule.keep_best_n, d.schedule.keep_latest_n, d.schedule.best_metric) == (2, 1, "eval_loss")
    full = specmap.with_defaults(replace(GOOD, method=Method.FULL, hyperparameters=Hyperparameters(max_steps=9),
                                         resources=Resources(use_gpu=True)))
    assert full.hyperparameters.learning_rate == 2e-5 and full.hyperparameters.epochs == 0
    assert full.hyperparameters.precision is Precision.BF16


def _engine(spec: JobSpec, tmp_path: Path, **data: object) -> dict:
    files = specmap.DataFiles(**{"train": tmp_path / "t.jsonl", **data})  # type: ignore[arg-type]
    return specmap.engine_spec(specmap.with_defaults(spec), tenant="acme", model_path=tmp_path / "m", data=files,
                               output=specmap.Output("file:///x", "tenants/acme/checkpoints/", "job_1"))


def test_request_maps_to_a_valid_engine_spec(tmp_path: Path) -> None:
    spec = replace(GOOD, hyperparameters=Hyperparameters(max_steps=6, warmup_ratio=0.1, lora_r=8,
                                                         lora_target_modules=("q_proj",), lr_scheduler=LrScheduler.COSINE),
                   schedule=Schedule(eval_every_steps=2, save_every_steps=2), resources=Resources(num_workers=2, zero_stage=2))
    loaded = load_spec(_engine(spec, tmp_path, validation=tmp_path / "v.jsonl"))
    assert loaded.method.kind.value == "lora" and loaded.method.lora.r == 8 and loaded.method.lora.alpha == 16
    assert loaded.method.lora.target_modules == ["q_proj"] and loaded.hyperparameters.max_steps == 6
    assert loaded.hyperparameters.warmup_ratio == 0.1 and loaded.hyperparameters.lr_scheduler.value == "cosine"
    assert loaded.resources.num_workers == 2 and loaded.resources.zero_stage == 2 and loaded.resources.max_failures == 3
    assert loaded.schedule.keep_best_n == 2 and loaded.output.run_name == "job_1"
    assert loaded.output.checkpoint_prefix == "tenants/acme/checkpoints/" and loaded.tenant == "acme"


@pytest.mark.parametrize(("method", "objective", "check"), [
    (Method.QLORA, Objective.SFT, lambda s: s.method.qlora.quant_type.value == "nf4"),
    (Method.PREFIX, Objective.SFT, lambda s: s.method.prefix.num_virtual_tokens == 16),
    (Method.PROMPT, Objective.PRETRAIN, lambda s: s.method.prompt.num_virtual_tokens == 16),
    (Method.FULL, Objective.DPO, lambda s: s.objective.dpo.beta == 0.1 and s.objective.kind.value == "dpo"),
])
def test_every_method_and_objective_maps(tmp_path: Path, method: Method, objective: Objective, check) -> None:
    assert check(load_spec(_engine(replace(GOOD, method=method, objective=objective), tmp_path)))


def test_mixture_maps_with_weights_and_tasks(tmp_path: Path) -> None:
    spec = replace(GOOD, dataset_version_id="", mixture=(TaskMixture("a", 2.0, "qa"), TaskMixture("b", 1.0)))
    files = {"train": None, "mixture": ((tmp_path / "a.jsonl", 2.0, "qa"), (tmp_path / "b.jsonl", 1.0, ""))}
    loaded = load_spec(_engine(spec, tmp_path, **files))
    assert [(m.weight, m.task) for m in loaded.data.mixture] == [(2.0, "qa"), (1.0, None)]


def test_engine_rejects_what_the_request_cannot_express(tmp_path: Path) -> None:
    spec = replace(GOOD, schedule=Schedule(eval_every_steps=2))  # evaluation without validation data
    with pytest.raises(InvalidInput) as info:
        load_spec(_engine(spec, tmp_path))
    assert engine_field(info.value.violations[0].field) == "schedule.eval_every_steps"


def test_the_idempotency_digest_tracks_the_body() -> None:
    assert request_digest(GOOD) == request_digest(replace(GOOD))
    assert request_digest(GOOD) != request_digest(replace(GOOD, hyperparameters=Hyperparameters(max_steps=7)))
    assert request_digest(GOOD) != request_digest(replace(GOOD, labels={"a": "b"}))
