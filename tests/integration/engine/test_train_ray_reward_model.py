"""A reward model on two Ray Train workers under DeepSpeed ZeRO-2 (full) and ZeRO-3 (LoRA with the score
head), on CPU over gloo: the loss falls, evaluation averages pairwise accuracy over both workers' shards,
and the saved model is a sequence classifier (full: loads with AutoModelForSequenceClassification;
LoRA: the adapter holds the gathered score head)."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.unit.engine._train_support import make_spec, write_jsonl
from tests.unit.engine.test_train_reward_model import separable_pairs
from tuneforge.engine.api import run_training
from tuneforge.engine.train.events import EngineEvent, EventKind, RunStatus

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _ray_session():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.parametrize(("stage", "method"), [(2, "full"), (3, "lora")])
def test_reward_model_on_two_workers(tiny_model_dir: Path, tmp_path: Path, stage: int, method: str) -> None:
    from transformers import AutoModelForSequenceClassification

    val = write_jsonl(tmp_path / "data" / "val.jsonl", separable_pairs(12)[:7])  # odd: one worker reruns a row
    spec = make_spec(
        tiny_model_dir, tmp_path, objective="reward_model", method=method, rows=separable_pairs(16),
        data={"validation": {"path": str(val)}},
        resources={"num_workers": 2, "zero_stage": stage, "object_store_memory_mb": 300},
        hyperparameters={"max_steps": 6, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                         "learning_rate": 1e-2 if method == "lora" else 2e-3},
    )
    events: list[EngineEvent] = []
    result = run_training(spec, on_event=events.append)

    assert result.status is RunStatus.COMPLETED and result.steps == 6
    losses = [e.metrics["loss"] for e in events if e.kind is EventKind.STEP]
    assert len(losses) == 6 and min(losses[-2:]) < losses[0], losses
    evals = [e.metrics for e in events if e.kind is EventKind.EVAL]
    # Seven pairs counted once each: accuracy is a multiple of 1/7.
    accuracy = evals[-1]["eval_reward_accuracy"]
    assert abs(accuracy * 7 - round(accuracy * 7)) < 1e-6 and accuracy >= 5 / 7, evals
    saved = Path(result.last_checkpoint_uri.removeprefix("file://")) / "model"
    if method == "full":
        model = AutoModelForSequenceClassification.from_pretrained(saved, trust_remote_code=False,
                                                                   use_safetensors=True)
        assert model.config.num_labels == 1 and model.score.weight.abs().sum() > 0
    else:
        adapter = load_file(str(saved / "adapter_model.safetensors"))
        score = [t for k, t in adapter.items() if "score" in k]
        assert score and all(t.numel() > 0 for t in score)  # gathered, not empty ZeRO-3 partitions


def test_kto_on_two_workers_zero2(tiny_model_dir: Path, tmp_path: Path) -> None:
    """KTO (LoRA, the reference = the adapter disabled) on two workers: each worker estimates the KL point
    on its own micro-batch, the loss is the mean over both workers' examples."""
    from tests.unit.engine.test_train_kto import labelled_rows

    spec = make_spec(
        tiny_model_dir, tmp_path, objective="kto", method="lora", rows=labelled_rows(16),
        resources={"num_workers": 2, "zero_stage": 2, "object_store_memory_mb": 300},
        hyperparameters={"max_steps": 4, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                         "learning_rate": 1e-2},
    )
    events: list[EngineEvent] = []
    result = run_training(spec, on_event=events.append)

    assert result.status is RunStatus.COMPLETED and result.steps == 4
    steps = [e.metrics for e in events if e.kind is EventKind.STEP]
    assert steps[0]["loss"] == pytest.approx(0.5, abs=1e-4)  # policy == reference: 1 - sigmoid(0)
    assert min(m["loss"] for m in steps[-2:]) < steps[0]["loss"], [m["loss"] for m in steps]
    adapter = load_file(str(Path(result.last_checkpoint_uri.removeprefix("file://")) / "model" /
                            "adapter_model.safetensors"))
    assert any(float(t.abs().sum()) > 0 for k, t in adapter.items() if "lora_B" in k)
