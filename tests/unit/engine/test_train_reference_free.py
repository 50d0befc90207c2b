"""ORPO and SimPO train the tiny model through ``run_training`` (single process, CPU)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.engine._train_support import make_spec
from tuneforge.engine.api import recipe_for, run_training
from tuneforge.engine.data.tokenize import tokenize_preference
from tuneforge.engine.recipes import _common
from tuneforge.engine.recipes.reference_free import objective_for
from tuneforge.engine.train.events import EngineEvent, EventKind, RunStatus
from tuneforge.engine.train.loop import train_loop


@pytest.mark.parametrize(("objective", "method"), [("orpo", "lora"), ("simpo", "full")])
def test_reference_free_objective_trains(tiny_model_dir: Path, tmp_path: Path, objective: str, method: str) -> None:
    spec = make_spec(tiny_model_dir, tmp_path, objective=objective, method=method,
                     hyperparameters={"learning_rate": 1e-2 if method == "lora" else 2e-3, "max_steps": 6})
    assert recipe_for(spec).__module__ == "tuneforge.engine.recipes.reference_free"
    events: list[EngineEvent] = []
    result = run_training(spec, on_event=events.append)

    assert result.status is RunStatus.COMPLETED and result.steps == 6
    steps = [e.metrics for e in events if e.kind is EventKind.STEP]
    losses = [m["loss"] for m in steps]
    assert all(math.isfinite(x) for x in losses)
    assert min(losses[-2:]) < losses[0], losses
    assert steps[-1]["rewards_margin"] > steps[0]["rewards_margin"]
    saved = Path(result.last_checkpoint_uri.removeprefix("file://")) / "model"
    if method == "full":
        before = load_file(str(tiny_model_dir / "model.safetensors"))
        after = load_file(str(saved / "model.safetensors"))
        assert any(not torch.equal(before[k], after[k]) for k in before)
    else:
        adapter = load_file(str(saved / "adapter_model.safetensors"))
        assert adapter and all(t.numel() > 0 for t in adapter.values())


def test_orpo_lora_changes_trainable_only(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(tiny_model_dir, tmp_path, objective="orpo", method="lora",
                     hyperparameters={"learning_rate": 1e-2, "max_steps": 2})
    device = torch.device("cpu")
    model, tokenizer = _common.load_model(spec, device)
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    train, _ = _common.read_splits(spec)
    rows = [_common.pair_row(p) for p in tokenize_preference(train, tokenizer, max_len=64)]
    plan = _common.step_plan(spec, len(rows))
    runtime = _common.build_runtime(spec, model, device, 2, 0)
    train_loop(runtime, objective_for(spec, tokenizer.pad_token_id), rows, [], plan, _common.loop_config(spec, 2))

    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach().float())}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and changed == trainable, (sorted(trainable - changed)[:3], sorted(changed - trainable)[:3])
