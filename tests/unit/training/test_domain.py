"""Training domain and its one mapping: CreateJob <-> TrainingSpec, errors in API terms, the status machine."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from tuneforge.common.errors import FailedPrecondition, FieldViolation, InvalidInput
from tuneforge.engine.spec import ADAPTER_LEARNING_RATE, FULL_LEARNING_RATE, TrainingSpec, load_spec
from tuneforge.training import convert
from tuneforge.training.domain.limits import JobLimits, limit_violations
from tuneforge.training.domain.model import Job, JobStatus, check_transition
from tuneforge.training.domain.service import _head_violation, _kind_violations
from tuneforge.training.v1 import training_pb2 as tr

OWNED = {"tenant": "acme", "output": {"checkpoint_uri": "file:///x", "checkpoint_prefix": "tenants/acme/checkpoints/",
                                      "run_name": "job_1"}}


def _request(**kw: object) -> tr.CreateJobRequest:
    fields: dict = {"base_model": "tiny", "method": tr.METHOD_LORA, "objective": tr.OBJECTIVE_SFT,
                    "dataset_version_id": "dsv_1"}
    return tr.CreateJobRequest(**{**fields, **kw})


def _spec(req: tr.CreateJobRequest) -> TrainingSpec:
    request = convert.job_request(req)
    assert request.problems == ()
    return load_spec({**request.spec, **OWNED})


def _api_fields(req: tr.CreateJobRequest) -> set[str]:
    request = convert.job_request(req)
    problems = list(request.problems)
    try:
        load_spec({**request.spec, **OWNED})
    except InvalidInput as exc:
        problems += exc.violations
    return {convert.api_violation(v).field for v in problems}


def test_a_request_maps_field_by_field_into_the_spec() -> None:
    spec = _spec(_request(
        hyperparameters=tr.Hyperparameters(max_steps=6, warmup_ratio=0.1, lora_r=8, lora_target_modules=["q_proj"],
                                           lr_scheduler=tr.LR_SCHEDULER_COSINE, learning_rate=1e-3, dpo_beta=0.3,
                                           max_seq_length=96, packing=True, precision=tr.PRECISION_BF16),
        resources=tr.Resources(num_workers=2, zero_stage=2), schedule=tr.Schedule(keep_best_n=4)))
    assert spec.method.lora.r == 8 and spec.method.lora.alpha == 16 and spec.method.lora.target_modules == ["q_proj"]
    assert spec.hyperparameters.max_steps == 6 and spec.hyperparameters.warmup_ratio == 0.1
    assert spec.hyperparameters.lr_scheduler.value == "cosine" and spec.hyperparameters.learning_rate == 1e-3
    assert spec.objective.dpo.beta == 0.3 and spec.data.max_seq_length == 96 and spec.data.packing
    assert spec.precision.value == "bf16" and spec.resources.num_workers == 2 and spec.schedule.keep_best_n == 4
    assert spec.model.name == "tiny" and spec.data.train is not None and spec.data.train.dataset_version == "dsv_1"


def test_zero_values_take_the_specs_defaults_the_same_as_an_engine_yaml() -> None:
    from_api = _spec(_request())
    from_yaml = load_spec({"model": {"name": "tiny"}, "data": {"train": {"dataset_version": "dsv_1"}}, **OWNED})
    assert from_api == from_yaml
    hp = from_api.hyperparameters
    assert (hp.learning_rate, hp.lr_scheduler.value, hp.epochs, hp.micro_batch_size) == (ADAPTER_LEARNING_RATE,
                                                                                      "linear", 1, 4)
    full = _spec(_request(method=tr.METHOD_FULL, resources=tr.Resources(use_gpu=True)))
    assert full.hyperparameters.learning_rate == FULL_LEARNING_RATE and full.precision.value == "bf16"


@pytest.mark.parametrize(("method", "objective", "check"), [
    (tr.METHOD_QLORA, tr.OBJECTIVE_SFT, lambda s: s.method.qlora.quant_type.value == "nf4"),
    (tr.METHOD_PREFIX, tr.OBJECTIVE_SFT, lambda s: s.method.prefix.num_virtual_tokens == 5),
    (tr.METHOD_PROMPT, tr.OBJECTIVE_PRETRAIN, lambda s: s.method.prompt.num_virtual_tokens == 5),
    (tr.METHOD_FULL, tr.OBJECTIVE_DPO, lambda s: s.objective.dpo.beta == 0.1 and s.objective.kind.value == "dpo"),
    (tr.METHOD_LORA, tr.OBJECTIVE_ORPO, lambda s: s.objective.orpo.beta == 0.1 and s.objective.kind.value == "orpo"),
    (tr.METHOD_FULL, tr.OBJECTIVE_SIMPO,
     lambda s: (s.objective.simpo.beta, s.objective.simpo.gamma, s.objective.kind.value) == (2.0, 1.0, "simpo")),
])
def test_every_method_and_objective_maps(method: int, objective: int, check) -> None:
    hp = tr.Hyperparameters(num_virtual_tokens=5) if method in (tr.METHOD_PREFIX, tr.METHOD_PROMPT) else None
    assert check(_spec(_request(method=method, objective=objective, hyperparameters=hp)))


def test_mixture_maps_with_weights_and_tasks() -> None:
    spec = _spec(_request(dataset_version_id="", mixture=[tr.TaskMixture(dataset_version_id="a", weight=2, task="qa"),
                                                          tr.TaskMixture(dataset_version_id="b", weight=1)]))
    assert [(m.source.dataset_version, m.weight, m.task) for m in spec.data.mixture] == [("a", 2.0, "qa"),
                                                                                        ("b", 1.0, None)]


def test_the_mapping_read_backwards_gives_the_request_back() -> None:
    req = _request(hyperparameters=tr.Hyperparameters(max_steps=6, lora_r=8, lr_scheduler=tr.LR_SCHEDULER_COSINE),
                   schedule=tr.Schedule(eval_every_steps=2), validation_dataset_version_id="dsv_2")
    spec = _spec(req)
    again = convert.request_from_spec(spec.resolved_dict())
    assert _spec(again) == spec
    assert again.hyperparameters.lora_alpha == 16 and again.hyperparameters.lr_scheduler == tr.LR_SCHEDULER_COSINE


@pytest.mark.parametrize(("change", "field"), [
    ({"base_model": " "}, "base_model"),
    ({"base_model": ""}, "base_model"),
    ({"method": tr.METHOD_UNSPECIFIED}, "method"),
    ({"method": 42}, "method"),
    ({"objective": tr.OBJECTIVE_UNSPECIFIED}, "objective"),
    ({"dataset_version_id": ""}, "dataset_version_id"),
    ({"mixture": [tr.TaskMixture(dataset_version_id="dsv_2", weight=1)]}, "dataset_version_id"),
    ({"dataset_version_id": "", "mixture": [tr.TaskMixture(dataset_version_id="dsv_2", weight=0)]}, "mixture[0].weight"),
    ({"dataset_version_id": "", "mixture": [tr.TaskMixture(dataset_version_id="", weight=1)]},
     "mixture[0].dataset_version_id"),
    ({"hyperparameters": tr.Hyperparameters(warmup_steps=3, warmup_ratio=0.1)}, "hyperparameters.warmup_ratio"),
    ({"hyperparameters": tr.Hyperparameters(epochs=2, max_steps=10)}, "hyperparameters.max_steps"),
    ({"hyperparameters": tr.Hyperparameters(learning_rate=2.0)}, "hyperparameters.learning_rate"),
    ({"hyperparameters": tr.Hyperparameters(lora_r=-1)}, "hyperparameters.lora_r"),
    ({"hyperparameters": tr.Hyperparameters(max_seq_length=4)}, "hyperparameters.max_seq_length"),
    ({"hyperparameters": tr.Hyperparameters(lora_dropout=1.0)}, "hyperparameters.lora_dropout"),
    ({"hyperparameters": tr.Hyperparameters(qlora_quant_type="int3")}, "hyperparameters.qlora_quant_type"),
    ({"hyperparameters": tr.Hyperparameters(num_virtual_tokens=4)}, "hyperparameters.num_virtual_tokens"),
    ({"hyperparameters": tr.Hyperparameters(precision=tr.PRECISION_FP16)}, "hyperparameters.precision"),
    ({"hyperparameters": tr.Hyperparameters(lr_scheduler=9)}, "hyperparameters.lr_scheduler"),
    ({"resources": tr.Resources(zero_stage=4)}, "resources.zero_stage"),
    ({"resources": tr.Resources(zero_stage=2, offload_params=True)}, "resources.offload_params"),
    ({"resources": tr.Resources(offload_optimizer=True)}, "resources.offload_optimizer"),
    ({"resources": tr.Resources(num_workers=-2)}, "resources.num_workers"),
    ({"method": tr.METHOD_QLORA, "resources": tr.Resources(zero_stage=3)}, "resources.zero_stage"),
    ({"schedule": tr.Schedule(early_stopping_patience=2)}, "schedule.early_stopping_patience"),
    ({"schedule": tr.Schedule(eval_every_steps=2, keep_best_n=-1)}, "schedule.keep_best_n"),
    ({"hyperparameters": tr.Hyperparameters(packing=True), "objective": tr.OBJECTIVE_DPO}, "hyperparameters.packing"),
    ({"hyperparameters": tr.Hyperparameters(packing=True), "objective": tr.OBJECTIVE_ORPO}, "hyperparameters.packing"),
    ({"hyperparameters": tr.Hyperparameters(orpo_beta=-1), "objective": tr.OBJECTIVE_ORPO}, "hyperparameters.orpo_beta"),
    ({"hyperparameters": tr.Hyperparameters(simpo_beta=1000), "objective": tr.OBJECTIVE_SIMPO},
     "hyperparameters.simpo_beta"),
    ({"hyperparameters": tr.Hyperparameters(simpo_gamma=-0.5), "objective": tr.OBJECTIVE_SIMPO},
     "hyperparameters.simpo_gamma"),
])
def test_each_bad_field_is_named_in_api_terms(change: dict, field: str) -> None:
    assert field in _api_fields(_request(**change))


def test_remedies_name_api_fields_too() -> None:
    request = convert.job_request(_request(objective=tr.OBJECTIVE_DPO, hyperparameters=tr.Hyperparameters(packing=True)))
    with pytest.raises(InvalidInput) as info:
        load_spec({**request.spec, **OWNED})
    texts = [convert.api_violation(v).description for v in info.value.violations]
    assert any("hyperparameters.packing: false" in t for t in texts), texts


@pytest.mark.parametrize(("path", "api"), [
    ("method.lora.r", "hyperparameters.lora_r"), ("data.max_seq_length", "hyperparameters.max_seq_length"),
    ("objective.dpo.beta", "hyperparameters.dpo_beta"), ("schedule.eval_every_steps", "schedule.eval_every_steps"),
    ("data.mixture[1].weight", "mixture[1].weight"), ("data.mixture[3].source.dataset_version",
                                                      "mixture[3].dataset_version_id"),
    ("data.mixture[1]", "mixture[1]"), ("model.path", "base_model"), ("model", "base_model"),
    ("precision", "hyperparameters.precision"), ("data.train", "dataset_version_id"),
    ("hyperparameters.no_such", "hyperparameters.no_such"), ("output.run_name", "output.run_name"),
    ("method.prompt.num_virtual_tokens", "hyperparameters.num_virtual_tokens"),
])
def test_spec_fields_map_back_to_api_fields(path: str, api: str) -> None:
    assert convert.api_field(path) == api


def test_every_request_field_has_a_home_in_the_spec() -> None:
    """A new proto field without a spec field of the same name (or a RENAMED row) fails here."""
    for api in convert.API_FIELDS:
        spec_paths = [spec for a, spec in convert.TABLE if a == api]
        assert spec_paths, api
        for spec_path in spec_paths:
            node: type[BaseModel] | None = TrainingSpec
            for part in spec_path.replace("[]", "").split("."):
                assert node is not None and part in node.model_fields, (api, spec_path)
                node = _model_of(node.model_fields[part].annotation)


def _model_of(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        if (found := _model_of(arg)) is not None:
            return found
    return None


@pytest.mark.parametrize(("objective", "kind", "bad"), [
    ("dpo", "CHAT", True), ("dpo", "PREFERENCE", False), ("sft", "PREFERENCE", True),
    ("sft", "CHAT", False), ("pretrain", "TEXT", False), ("dpo", "", False),
    ("orpo", "PREFERENCE", False), ("orpo", "CHAT", True), ("simpo", "PREFERENCE", False), ("simpo", "TEXT", True),
    ("reward_model", "PREFERENCE", False), ("reward_model", "CHAT", True), ("reward_model", "LABELLED", True),
    ("kto", "LABELLED", False), ("kto", "PREFERENCE", True), ("kto", "CHAT", True), ("sft", "LABELLED", True),
    ("dpo", "LABELLED", True),
])
def test_objective_must_fit_the_dataset_kind(objective: str, kind: str, bad: bool) -> None:
    spec = load_spec({"model": {"name": "tiny"}, "data": {"train": {"dataset_version": "dsv_1"}},
                      "objective": {"kind": objective}, **OWNED})
    found = [convert.api_field(v.field) for v in _kind_violations(spec, {"dsv_1": kind})]
    assert found == (["dataset_version_id"] if bad else [])


def test_operator_caps_name_the_field_and_the_setting() -> None:
    spec = _spec(_request(resources=tr.Resources(num_workers=8), hyperparameters=tr.Hyperparameters(max_steps=500)))
    found = limit_violations(spec, JobLimits(num_workers=4, steps=100))
    assert {convert.api_field(v.field) for v in found} == {"resources.num_workers", "hyperparameters.max_steps"}
    assert all("TUNEFORGE_TRAIN_MAX_" in v.description for v in found)
    assert limit_violations(spec, JobLimits()) == []


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
    job = Job("job_1", "acme", _spec(_request()), JobStatus.VALIDATING, None, "job_1")  # type: ignore[arg-type]
    for status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLED):
        job.move_to(status)
    assert job.status.terminal
    with pytest.raises(FailedPrecondition, match="has ended"):
        job.move_to(JobStatus.RUNNING)


def test_the_idempotency_digest_tracks_the_body() -> None:
    digest = convert.job_request(_request()).digest
    assert digest() == convert.job_request(_request()).digest()
    assert digest() != convert.job_request(_request(hyperparameters=tr.Hyperparameters(max_steps=7))).digest()
    assert digest() != convert.job_request(_request(labels={"a": "b"})).digest()


def test_api_terms_reraises_spec_errors_with_api_names() -> None:
    with pytest.raises(InvalidInput) as info, convert.api_terms():
        raise InvalidInput.of([FieldViolation("method.lora.r", "must be > 0; set method.lora.r: 8")])
    assert info.value.violations == (FieldViolation("hyperparameters.lora_r", "must be > 0; set hyperparameters.lora_r: 8"),)


def test_orpo_and_simpo_hyperparameters_map_and_read_back() -> None:
    req = _request(objective=tr.OBJECTIVE_SIMPO, hyperparameters=tr.Hyperparameters(simpo_beta=2.5, simpo_gamma=0.3))
    spec = _spec(req)
    assert (spec.objective.simpo.beta, spec.objective.simpo.gamma) == (2.5, 0.3)
    again = convert.request_from_spec(spec.resolved_dict())
    assert again.objective == tr.OBJECTIVE_SIMPO and again.hyperparameters.simpo_gamma == pytest.approx(0.3)
    orpo = _spec(_request(objective=tr.OBJECTIVE_ORPO, hyperparameters=tr.Hyperparameters(orpo_beta=0.25)))
    assert orpo.objective.orpo.beta == 0.25


def test_priority_travels_beside_the_spec_and_shows_on_the_job() -> None:
    from datetime import UTC, datetime, timedelta

    from tuneforge.training.domain.model import Lease

    request = convert.job_request(_request(priority=7))
    assert request.priority == 7 and "priority" not in request.spec
    assert request.digest() != convert.job_request(_request()).digest()
    # A job created before priorities existed keeps its digest (the same idempotency key still matches).
    assert convert.job_request(_request(priority=0)).digest() == convert.job_request(_request()).digest()
    spec = _spec(_request())
    expires = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=30)
    job = Job("job_1", "acme", spec, JobStatus.RUNNING, datetime(2026, 1, 1, tzinfo=UTC), "job_1", priority=7,
              lease=Lease("job_1", "acme", "replica-a", 3, expires), queue_reason="stale")
    msg = convert.job_to_proto(job)
    assert (msg.priority, msg.replica, msg.lease_expire_time.ToDatetime(UTC), msg.queue_reason) == (
        7, "replica-a", expires, "")
    job.status, job.lease, job.queue_reason = JobStatus.QUEUED, None, "waiting for tenant quota"
    msg = convert.job_to_proto(job)
    assert (msg.replica, msg.HasField("lease_expire_time"), msg.queue_reason) == ("", False, "waiting for tenant quota")


@pytest.mark.parametrize(("architecture", "objective", "bad"), [
    ("LlamaForSequenceClassification", "sft", True), ("LlamaForSequenceClassification", "kto", True),
    ("LlamaForSequenceClassification", "reward_model", False), ("LlamaForCausalLM", "reward_model", False),
    ("LlamaForCausalLM", "dpo", False),
])
def test_a_reward_model_checkpoint_is_no_base_for_a_language_model(tmp_path, architecture: str, objective: str,
                                                                     bad: bool) -> None:
    import json

    (tmp_path / "config.json").write_text(json.dumps({"architectures": [architecture]}))
    spec = load_spec({"model": {"name": "ckpt_0123"}, "data": {"train": {"dataset_version": "dsv_1"}},
                      "objective": {"kind": objective}, **OWNED})
    found = _head_violation(spec, tmp_path)
    assert (found is not None) == bad
    if found is not None:
        assert convert.api_field(found.field) == "base_model" and "reward model" in found.description
