"""Two Ray Train workers under DeepSpeed ZeRO-2 (full weights) and ZeRO-3 (LoRA), on CPU over gloo.

One Ray session is shared by the module (started with explicit limits by the engine itself).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.engine._train_support import make_spec
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
def test_two_workers_zero(tiny_model_dir: Path, tmp_path: Path, stage: int, method: str) -> None:
    spec = make_spec(
        tiny_model_dir, tmp_path, method=method,
        resources={"num_workers": 2, "zero_stage": stage, "object_store_memory_mb": 300},
        hyperparameters={"max_steps": 4, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                         "learning_rate": 1e-2 if method == "lora" else 2e-3},
    )
    events: list[EngineEvent] = []
    result = run_training(spec, on_event=events.append)

    assert result.status is RunStatus.COMPLETED and result.steps == 4
    losses = [e.metrics["loss"] for e in events if e.kind is EventKind.STEP]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    saved = Path(result.last_checkpoint_uri.removeprefix("file://")) / "model"
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    if method == "full":
        weights = load_file(str(saved / "model.safetensors"))
        assert set(weights) == set(base)
        assert all(weights[k].shape == base[k].shape and weights[k].numel() > 0 for k in base)
        assert any(not torch.equal(weights[k], base[k]) for k in base)
    else:
        adapter = load_file(str(saved / "adapter_model.safetensors"))
        assert adapter and all(t.numel() > 0 for t in adapter.values())  # gathered, not empty partitions
        assert any(float(t.abs().sum()) > 0 for k, t in adapter.items() if "lora_B" in k)
