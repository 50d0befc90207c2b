"""Admission from the memory planner: fit, refusal with the numbers, fixes ranked and true; the plan's
steps and tokens; a running job's pace and estimated finish."""

from __future__ import annotations

import copy
import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tuneforge.common.errors import FailedPrecondition
from tuneforge.engine.planner import GIB, plan_memory
from tuneforge.engine.spec import TrainingSpec, load_spec
from tuneforge.training.domain.admission import (
    OTHER_METHOD,
    ClusterCapacity,
    Setup,
    assess,
    plan,
    planned_steps_and_tokens,
)
from tuneforge.training.domain.model import Job, JobStatus, Pace
from tuneforge.training.domain.ports import VersionFacts

OWNED = {"tenant": "acme", "output": {"checkpoint_uri": "file:///x", "checkpoint_prefix": "tenants/acme/checkpoints/",
                                      "run_name": "job_1"}}
# Llama-2-7B's shape.
LLAMA_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
            "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False}
# The tests' tiny model (tuneforge.engine.models.tiny).
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512, "tie_word_embeddings": False}
GPU_24 = ClusterCapacity(gpus=8, gpu_memory_bytes=24 * GIB)


def _doc(**sections: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"model": {"name": "m"}, "data": {"train": {"dataset_version": "dsv_1"}}, **OWNED}
    for key, value in sections.items():
        if isinstance(value, dict):
            doc[key] = {**doc.get(key, {}), **value}
        else:
            doc[key] = value
    return doc


def _spec(**sections: Any) -> TrainingSpec:
    return load_spec(_doc(**sections))


def _apply(doc: dict[str, Any], changes: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """The spec document with a fix's changes (spec path -> value text) applied."""
    out = copy.deepcopy(doc)
    for path, text in changes:
        value: Any = {"true": True, "false": False}.get(text, int(text) if text.isdigit() else text)
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def test_a_tiny_job_fits_a_cpu_only_cluster_with_nothing_declared() -> None:
    a = assess(_spec(), TINY, ClusterCapacity())
    assert a.fits and a.device == "cpu" and a.need is not None and 0 < a.need.total < 256 * 1024**2
    assert any("not declared" in n for n in a.notes)


def test_the_need_is_the_planners_figure_for_the_jobs_settings() -> None:
    spec = _spec(method={"kind": "full"}, resources={"use_gpu": True, "num_workers": 4, "zero_stage": 2},
                 hyperparameters={"micro_batch_size": 2}, data={"max_seq_length": 2048}, gradient_checkpointing=True)
    need = assess(spec, LLAMA_7B, GPU_24).need
    direct = plan_memory(LLAMA_7B, "full", 2048, 2, 4, zero_stage=2, gradient_checkpointing=True, dtype="bf16")
    assert need is not None and need.total == direct.total and need.optimizer == direct.optimizer


def test_an_oversized_job_is_refused_with_the_numbers_and_fixes_that_each_fit_ranked() -> None:
    doc = _doc(method={"kind": "full"}, resources={"use_gpu": True, "num_workers": 2},
               hyperparameters={"micro_batch_size": 8}, data={"max_seq_length": 2048})
    spec = load_spec(doc)
    a = assess(spec, LLAMA_7B, GPU_24)
    assert not a.fits and a.need is not None and a.need.total > a.usable
    assert a.usable == int(24 * GIB * 0.9)
    assert a.fixes, "a 7B model fits 24 GiB GPUs with QLoRA or ZeRO-3 offload"
    ranked = [(f.rank, f.total) for f in a.fixes]
    assert ranked == sorted(ranked)
    for fix in a.fixes:  # every fix offered is true: applied to the request, the job fits
        again = assess(load_spec(_apply(doc, fix.changes)), LLAMA_7B, GPU_24)
        assert again.fits and again.need is not None and again.need.total == fix.total, fix

    err = a.refusal()
    assert isinstance(err, FailedPrecondition) and err.reason == "JOB_DOES_NOT_FIT"
    assert f"{a.need.total / GIB:.2f} GiB" in err.message and "21.60 GiB usable" in err.message
    assert err.metadata["needed_memory_bytes"] == str(a.need.total) and err.metadata["device"] == "gpu"
    assert [v.field for v in err.violations] == [f.changes[0][0] for f in a.fixes]
    assert all("GiB per GPU" in v.description for v in err.violations)
    again = pickle.loads(pickle.dumps(err))  # errors cross Ray: metadata survives
    assert again.metadata == err.metadata and again.violations == err.violations


def test_when_no_single_change_fits_the_fewest_together_are_offered() -> None:
    doc = _doc(method={"kind": "full"}, resources={"use_gpu": True, "num_workers": 1},
               hyperparameters={"micro_batch_size": 16}, data={"max_seq_length": 4096})
    a = assess(load_spec(doc), LLAMA_7B, ClusterCapacity(gpus=1, gpu_memory_bytes=16 * GIB))
    assert not a.fits and len(a.fixes) == 1 and len(a.fixes[0].changes) > 1
    assert assess(load_spec(_apply(doc, a.fixes[0].changes)), LLAMA_7B, ClusterCapacity(gpus=1, gpu_memory_bytes=16 * GIB)).fits


def test_nothing_fits_a_device_too_small_for_any_setup() -> None:
    a = assess(_spec(resources={"use_gpu": True}), LLAMA_7B, ClusterCapacity(gpus=1, gpu_memory_bytes=GIB // 4))
    assert not a.fits and not a.fixes
    assert "larger devices" in a.refusal().message


def test_small_cpu_capacities_make_the_check_meaningful_for_the_tiny_model() -> None:
    need = assess(_spec(), TINY, ClusterCapacity()).need
    assert need is not None
    tight = ClusterCapacity(cpu_worker_memory_bytes=int(need.total / 0.9) - 1024)
    a = assess(_spec(), TINY, tight)
    assert not a.fits and a.device == "cpu" and a.fixes
    assert a.fits is False and all(f.total <= a.usable for f in a.fixes)
    assert assess(_spec(), TINY, ClusterCapacity(cpu_worker_memory_bytes=int(need.total / 0.9) + 1024)).fits


@pytest.mark.parametrize(("resources", "capacity", "field", "words"), [
    ({"use_gpu": True}, ClusterCapacity(gpus=0), "resources.use_gpu", "TUNEFORGE_TRAIN_GPUS=0"),
    ({"use_gpu": True, "num_workers": 4}, ClusterCapacity(gpus=2, gpu_memory_bytes=80 * GIB),
     "resources.num_workers", "has 2 GPU worker(s)"),
    ({"num_workers": 3}, ClusterCapacity(cpu_workers=2), "resources.num_workers", "TUNEFORGE_TRAIN_CPU_WORKERS"),
])
def test_more_devices_than_the_cluster_has_are_refused(resources, capacity, field, words) -> None:
    a = assess(_spec(resources=resources), TINY, capacity)
    err = a.refusal()
    assert not a.fits and err.violations[0].field == field and words in err.message


def test_dpo_with_a_model_copy_counts_the_reference_and_preference_pairs_double_the_activations() -> None:
    sft = _spec(method={"kind": "full"}, resources={"use_gpu": True}, hyperparameters={"micro_batch_size": 2})
    dpo = _spec(method={"kind": "full"}, objective={"kind": "dpo"}, resources={"use_gpu": True},
                hyperparameters={"micro_batch_size": 2})
    lora_dpo = _spec(objective={"kind": "dpo"}, resources={"use_gpu": True}, hyperparameters={"micro_batch_size": 2})
    s, d, ld = (plan(x, LLAMA_7B, Setup.of(x)) for x in (sft, dpo, lora_dpo))
    assert d.reference_model == 2 * d.params and ld.reference_model == 0  # adapter_disabled: no copy
    doubled = plan(sft, LLAMA_7B, Setup.of(_spec(method={"kind": "full"}, resources={"use_gpu": True},
                                                hyperparameters={"micro_batch_size": 4})))
    # Pairs double the sequences; the reference's no-grad forwards add their logits on top.
    assert d.activations > doubled.activations > s.activations


def test_zero_and_offload_with_one_worker_are_planned_as_the_engine_runs_them_without() -> None:
    plain = _spec(method={"kind": "full"}, resources={"use_gpu": True})
    zero = _spec(method={"kind": "full"}, resources={"use_gpu": True, "zero_stage": 3, "offload_optimizer": True})
    a = assess(zero, LLAMA_7B, GPU_24)
    assert a.need == assess(plain, LLAMA_7B, GPU_24).need and any("several workers" in n for n in a.notes)


def test_prefix_tuning_trains_only_the_virtual_tokens() -> None:
    spec = _spec(method={"kind": "prefix", "prefix": {"num_virtual_tokens": 10}}, resources={"use_gpu": True})
    need = plan(spec, LLAMA_7B, Setup.of(spec))
    assert need.trainable == 10 * 4096 * 2 * 32


def test_an_unknown_architecture_is_admitted_unplanned() -> None:
    a = assess(_spec(), {"model_type": "gpt2", "n_embd": 64}, ClusterCapacity(cpu_worker_memory_bytes=1024))
    assert a.fits and a.need is None and any("not supported" in n for n in a.notes)


def test_fix_ranking_puts_changes_that_keep_the_result_before_other_methods() -> None:
    doc = _doc(method={"kind": "full"}, resources={"use_gpu": True, "num_workers": 8},
               hyperparameters={"micro_batch_size": 4}, data={"max_seq_length": 1024})
    a = assess(load_spec(doc), LLAMA_7B, ClusterCapacity(gpus=8, gpu_memory_bytes=40 * GIB))
    ranks = [f.rank for f in a.fixes]
    assert ranks == sorted(ranks) and a.fixes[0].rank < OTHER_METHOD


def test_steps_and_tokens_from_the_training_versions_rows_and_token_stats() -> None:
    spec = _spec(hyperparameters={"micro_batch_size": 4, "gradient_accumulation_steps": 2, "epochs": 2},
                 data={"max_seq_length": 64})
    facts = {"dsv_1": VersionFacts("dsv_1", "CHAT", {"train": 100, "validation": 10})}
    steps, tokens, source = planned_steps_and_tokens(spec, facts, {"mean": 30.0})
    assert steps == 2 * (100 // 8) and tokens == steps * 8 * 30 and "token statistics" in source
    capped = planned_steps_and_tokens(spec, facts, {"mean": 500.0})
    assert capped[1] == steps * 8 * 64  # rows are cut at max_seq_length
    assert planned_steps_and_tokens(spec, facts, {}) == (steps, 0, "")
    fixed = _spec(hyperparameters={"max_steps": 7})
    assert planned_steps_and_tokens(fixed, facts, {"mean": 10.0})[0] == 7


def test_pace_measures_the_rate_and_predicts_the_finish() -> None:
    job = Job("job_1", "acme", _spec(), JobStatus.RUNNING, datetime.now(UTC), "job_1", total_steps=100)
    pace, now = Pace(), datetime(2026, 1, 1, tzinfo=UTC)
    job.current_step, job.trained_tokens = 1, 100
    pace.observe(job, now, 10.0)
    assert job.estimated_finish is None and job.steps_per_second == 0  # one point is no rate
    job.current_step, job.trained_tokens = 11, 1100
    pace.observe(job, now, 15.0)  # 10 steps in 5 s
    assert job.steps_per_second == pytest.approx(2.0) and job.tokens_per_second == pytest.approx(200.0)
    assert job.estimated_finish == now + timedelta(seconds=89 / 2.0)
    job.current_step = 5  # resumed from an earlier checkpoint: a new window
    pace.observe(job, now, 16.0)
    assert job.estimated_finish == now + timedelta(seconds=89 / 2.0)  # unchanged until measured again
    job.move_to(JobStatus.CANCELLED)
    assert job.estimated_finish is None


def test_the_summary_for_the_jobs_log_names_the_planned_peak() -> None:
    a = assess(_spec(), TINY, ClusterCapacity(cpu_worker_memory_bytes=GIB))
    assert a.need is not None and f"{a.need.total / GIB:.2f} GiB per CPU of 0.90 GiB usable" in a.summary()
    assert "not declared" in assess(_spec(), TINY, ClusterCapacity()).summary()


def test_fixes_stay_within_the_operators_caps() -> None:
    from tuneforge.training.domain.limits import JobLimits

    doc = _doc(method={"kind": "full"}, resources={"use_gpu": True}, hyperparameters={
        "micro_batch_size": 16, "gradient_accumulation_steps": 8}, data={"max_seq_length": 2048})
    capacity = ClusterCapacity(gpus=8, gpu_memory_bytes=80 * GIB)
    free = assess(load_spec(doc), LLAMA_7B, capacity)
    capped = assess(load_spec(doc), LLAMA_7B, capacity, JobLimits(num_workers=4, gradient_accumulation_steps=32))
    changed = [dict(f.changes) for f in free.fixes]
    assert any(c.get("resources.num_workers") == "8" for c in changed)
    assert capped.fixes
    for fix in capped.fixes:
        c = dict(fix.changes)
        assert int(c.get("resources.num_workers", 1)) <= 4
        assert int(c.get("hyperparameters.gradient_accumulation_steps", 8)) <= 32


def test_the_status_message_says_each_fix_once() -> None:
    doc = _doc(method={"kind": "full"}, resources={"use_gpu": True, "num_workers": 8},
               hyperparameters={"micro_batch_size": 4}, data={"max_seq_length": 1024})
    err = assess(load_spec(doc), LLAMA_7B, ClusterCapacity(gpus=8, gpu_memory_bytes=40 * GIB)).refusal()
    assert len(err.violations) > 3 and str(err).startswith(err.message)
    shown = err.violations[:3]
    assert all(err.message.count(v.description) == 1 for v in shown)  # the message says the best few once
    assert f"({len(err.violations) - 3} more in the details)" in err.message and len(str(err)) < 2048


def test_gpus_not_declared_are_not_counted() -> None:
    assert assess(_spec(resources={"use_gpu": True, "num_workers": 4}), TINY, ClusterCapacity()).fits
