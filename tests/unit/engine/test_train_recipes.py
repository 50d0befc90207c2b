"""Every method x objective through ``run_training`` on the tiny model, single process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.engine._train_support import chat_rows, make_spec, write_jsonl
from tuneforge.common.errors import InvalidInput
from tuneforge.engine.api import run_training
from tuneforge.engine.recipes import _common
from tuneforge.engine.train.events import EngineEvent, EventKind, RunStatus
from tuneforge.engine.train.loop import train_loop
from tuneforge.engine.train.objectives import CausalLMObjective

MATRIX = [
    (method, objective)
    for method in ("full", "lora", "qlora", "prefix")
    for objective in ("sft", "dpo", "pretrain")
]


def _uri_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


@pytest.mark.parametrize(("method", "objective"), MATRIX)
def test_method_objective_trains(tiny_model_dir: Path, tmp_path: Path, method: str, objective: str) -> None:
    lr = {"prefix": 5e-2, "full": 2e-3}.get(method, 1e-2)
    spec = make_spec(tiny_model_dir, tmp_path, objective=objective, method=method,
                     hyperparameters={"learning_rate": lr, "max_steps": 6})
    events: list[EngineEvent] = []
    result = run_training(spec, on_event=events.append)

    assert result.status is RunStatus.COMPLETED and result.steps == 6
    steps = [e.metrics for e in events if e.kind is EventKind.STEP]
    losses = [m["loss"] for m in steps]
    assert all(math.isfinite(x) for x in losses)
    assert min(losses[-2:]) < losses[0], losses
    for key in ("lr", "grad_norm", "tokens_per_s", "samples_per_s", "peak_memory_bytes"):
        assert steps[-1][key] > 0, key
    saved = _uri_path(result.last_checkpoint_uri) / "model"
    if method == "full":
        before = load_file(str(tiny_model_dir / "model.safetensors"))
        after = load_file(str(saved / "model.safetensors"))
        assert any(not torch.equal(before[k], after[k]) for k in before)
    else:
        adapter = load_file(str(saved / "adapter_model.safetensors"))
        assert adapter and all(t.numel() > 0 for t in adapter.values())


@pytest.mark.parametrize("method", ["lora", "qlora", "prefix", "full"])
def test_trainable_change_frozen_stay(tiny_model_dir: Path, tmp_path: Path, method: str) -> None:
    spec = make_spec(tiny_model_dir, tmp_path, method=method,
                     hyperparameters={"learning_rate": 1e-2, "max_steps": 3},
                     schedule={"eval_every_steps": 1}, data={"validation_split_ratio": 0.2})
    device = torch.device("cpu")
    model, tokenizer = _common.load_model(spec, device)
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    train, val = _common.read_splits(spec)
    from tuneforge.engine.data.tokenize import tokenize_sft

    rows = [_common.example_row(e) for e in tokenize_sft(train, tokenizer, max_len=64)]
    val_rows = [_common.example_row(e) for e in tokenize_sft(val, tokenizer, max_len=64)]
    plan = _common.step_plan(spec, len(rows))
    runtime = _common.build_runtime(spec, model, device, 3, 0)
    # Evaluating after every step also proves QLoRA keeps learning after an eval pass on CPU.
    train_loop(runtime, CausalLMObjective(tokenizer.pad_token_id), rows, val_rows, plan,
               _common.loop_config(spec, 3))

    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach().float())}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and changed == trainable, (sorted(trainable - changed)[:3], sorted(changed - trainable)[:3])


def test_multitask_mixture(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", chat_rows(8))
    b = write_jsonl(tmp_path / "b.jsonl", [{"kind": "text", "text": f"the river follows the map {i}."}
                                            for i in range(4)])
    spec = make_spec(tiny_model_dir, tmp_path, data={
        "train": None, "max_seq_length": 64,
        "mixture": [{"source": {"path": str(a)}, "weight": 3.0, "task": "chat"},
                    {"source": {"path": str(b)}, "weight": 1.0, "task": "text"}]})
    mixed = _common.read_mixture(spec)
    tasks = [r.task for r in mixed]
    assert tasks.count("chat") == 9 and tasks.count("text") == 3
    events: list[EngineEvent] = []
    result = run_training(spec, on_event=events.append)
    losses = [e.metrics["loss"] for e in events if e.kind is EventKind.STEP]
    assert result.status is RunStatus.COMPLETED and losses[-1] < losses[0]


def test_all_masked_batch_fails_with_rows(tiny_model_dir: Path, tmp_path: Path) -> None:
    # An assistant turn longer than max_seq_length is truncated away: no label survives.
    long_q = "What is two plus two? " * 40
    rows = [{"kind": "chat", "messages": [{"role": "user", "content": long_q},
                                          {"role": "assistant", "content": "Four."}]}] * 8
    spec = make_spec(tiny_model_dir, tmp_path, rows=rows)
    with pytest.raises(InvalidInput) as info:
        run_training(spec)
    assert "train[" in str(info.value) and "label" in str(info.value)
