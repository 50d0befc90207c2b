"""Checkpoints and resume: same samples, same LR curve, same losses; damaged checkpoints skipped;
saved adapters load with plain peft."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from tests.unit.engine._train_support import make_spec
from tuneforge.engine.api import run_training
from tuneforge.engine.data.tokenize import tokenize_sft
from tuneforge.engine.recipes import _common
from tuneforge.engine.train.checkpoint import CheckpointManager
from tuneforge.engine.train.events import EngineEvent, EventKind, RunStatus
from tuneforge.engine.train.loop import train_loop
from tuneforge.engine.train.objectives import CausalLMObjective
from tuneforge.engine.train.optim import lr_curve


def _spec(model_dir: Path, tmp: Path, run_name: str, **hp: object):
    return make_spec(
        model_dir, tmp,
        lora_dropout=0.1,
        hyperparameters={"max_steps": 8, "lr_scheduler": "cosine", "warmup_steps": 2,
                         "learning_rate": 1e-2, **hp},
        schedule={"save_every_steps": 2, "keep_latest_n": 2},
        output={"checkpoint_uri": f"file://{tmp}/ckpt", "run_name": run_name},
    )


def _steps(events: list[EngineEvent]) -> dict[int, dict[str, float]]:
    return {e.step: e.metrics for e in events if e.kind is EventKind.STEP}


def test_killed_and_resumed_run_matches_uninterrupted(tiny_model_dir: Path, tmp_path: Path) -> None:
    full_events: list[EngineEvent] = []
    full = run_training(_spec(tiny_model_dir, tmp_path, "full"), on_event=full_events.append)
    assert full.status is RunStatus.COMPLETED

    cancel = threading.Event()
    first: list[EngineEvent] = []

    def stop_after_4(e: EngineEvent) -> None:
        first.append(e)
        if e.kind is EventKind.CHECKPOINT and e.step == 4:
            cancel.set()

    spec = _spec(tiny_model_dir, tmp_path, "killed")
    killed = run_training(spec, on_event=stop_after_4, cancel=cancel)
    assert killed.status is RunStatus.CANCELLED and killed.steps == 4
    second: list[EngineEvent] = []
    resumed = run_training(spec, on_event=second.append)

    assert resumed.resumed_from_uri.endswith("/killed/step-4/")
    assert [e.kind for e in second][:2] == [EventKind.RESUMED, EventKind.STARTED]
    a, b = _steps(full_events), {**_steps(first), **_steps(second)}
    assert sorted(b) == list(range(1, 9))
    expected_lr = lr_curve(spec.hyperparameters.lr_scheduler, 1e-2, 2, 8)
    assert [b[s]["lr"] for s in range(1, 9)] == pytest.approx(expected_lr, rel=1e-9)
    assert [a[s]["lr"] for s in range(1, 9)] == pytest.approx(expected_lr, rel=1e-9)
    # Same samples in the same order (and dropout streams): identical losses step by step.
    for s in range(1, 9):
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], abs=1e-4), s
    assert resumed.metrics["loss"] == pytest.approx(full.metrics["loss"], abs=1e-4)


def test_damaged_or_partial_checkpoint_is_skipped(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = _spec(tiny_model_dir, tmp_path, "corrupt", max_steps=6)
    run_training(spec)
    root = tmp_path / "ckpt" / "corrupt"
    assert sorted(p.name for p in root.iterdir()) == ["step-4", "step-6"]
    adapter = root / "step-6" / "model" / "adapter_model.safetensors"
    data = bytearray(adapter.read_bytes())
    data[-10] ^= 0xFF
    adapter.write_bytes(bytes(data))
    partial = root / "step-8" / "model"  # an upload that never wrote its manifest
    partial.mkdir(parents=True)
    (partial / "adapter_model.safetensors").write_bytes(b"partial")

    manager = CheckpointManager(spec.output.checkpoint_uri, "corrupt")
    assert manager.latest_complete() == 4
    events: list[EngineEvent] = []
    result = run_training(spec, on_event=events.append)
    assert result.resumed_from_uri.endswith("/corrupt/step-4/")
    assert min(_steps(events)) == 5 and result.steps == 6


def test_saved_adapter_loads_with_plain_peft(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = make_spec(tiny_model_dir, tmp_path, hyperparameters={"max_steps": 3})
    device = torch.device("cpu")
    model, tokenizer = _common.load_model(spec, device)
    train, _ = _common.read_splits(spec)
    rows = [_common.example_row(e) for e in tokenize_sft(train, tokenizer, max_len=64)]
    runtime = _common.build_runtime(spec, model, device, 3, 0)
    train_loop(runtime, CausalLMObjective(tokenizer.pad_token_id), rows, [], _common.step_plan(spec, len(rows)),
               _common.loop_config(spec, 3))
    out = tmp_path / "adapter"
    runtime.save_model(out)

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loaded = PeftModel.from_pretrained(base, out).eval()
    model.eval()
    ids = torch.tensor([rows[0]["input_ids"]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad(), loaded.disable_adapter():
        untouched = loaded(input_ids=ids).logits
    assert not torch.allclose(untouched, expected, atol=1e-4)  # the adapter actually changes outputs
