"""Reward models in the engine: the Bradley-Terry loss equals trl 1.16's ``RewardTrainer`` on the same
model and batch; ``run_training`` trains a sequence-classification head (LoRA with the score head, and
full) whose saved folder loads back with ``AutoModelForSequenceClassification``; evaluation reports the
pairwise accuracy of held-out pairs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.unit.engine._train_support import make_spec, write_jsonl
from tuneforge.engine.api import recipe_for, run_training
from tuneforge.engine.recipes import _common
from tuneforge.engine.recipes.reward_model import reward_rows
from tuneforge.engine.train.events import EngineEvent, EventKind, RunStatus
from tuneforge.engine.train.objectives import RewardModelObjective, bradley_terry_losses

COLOURS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow",
           "milk": "white", "night": "black", "leaf": "green", "sea": "blue", "cloud": "white", "fire": "red"}


def separable_pairs(n: int, *, margin: bool = False) -> list[dict]:
    """Pairs a reward model can separate: the chosen answer is polite and right, the rejected one rude."""
    items = list(COLOURS.items())
    rows = []
    for i in range(n):
        x, c = items[i % len(items)]
        row = {"kind": "preference", "prompt": [{"role": "user", "content": f"What colour is the {x}?"}],
               "chosen": [{"role": "assistant", "content": f"The {x} is {c}. Thank you for asking!"}],
               "rejected": [{"role": "assistant", "content": "No. Go away."}]}
        if margin:
            row["margin"] = 0.5 * (i % 3)
        rows.append(row)
    return rows


@pytest.fixture(scope="module")
def model_and_rows(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A tiny reward model (its score head perturbed so rewards differ) and 4 pairs with margins."""
    tmp = tmp_path_factory.mktemp("rm_trl")
    spec = make_spec(tiny_model_dir, tmp, objective="reward_model", method="full", rows=separable_pairs(4, margin=True))
    model, tokenizer = _common.load_model(spec, torch.device("cpu"))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    model.eval()
    train, _ = _common.read_splits(spec)
    rows = reward_rows(train, tokenizer, 64, "train")
    return model, tokenizer, rows, tmp


def _trl_loss(model, tokenizer, batch, out: Path, center: float | None) -> float:
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(output_dir=str(out), use_cpu=True, bf16=False, report_to=[], gradient_checkpointing=False,
                        save_strategy="no", center_rewards_coefficient=center)
    data = Dataset.from_list([{"chosen_ids": [1, 2], "rejected_ids": [3], "margin": 0.0}])
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.model.eval()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "margin": batch["margin"]}
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, inputs))


@pytest.mark.parametrize("center", [0.0, 0.01])
def test_reward_model_loss_matches_trl(model_and_rows, center: float) -> None:
    model, tokenizer, rows, tmp = model_and_rows
    objective = RewardModelObjective(tokenizer.pad_token_id, center_coefficient=center)
    batch = objective.collate(rows)
    with torch.no_grad():
        out = objective.loss(model, batch)
    ours = float(out.total) / objective.units(batch)  # the engine sums over pairs, trl averages

    theirs = _trl_loss(model, tokenizer, batch, tmp / f"c{center}", center or None)

    assert objective.units(batch) == 4 and batch["margin"].tolist() == [0.0, 0.5, 1.0, 0.0]
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert abs(ours - math.log(2)) > 1e-3  # rewards differ: not the value at r_chosen == r_rejected


def test_bradley_terry_is_the_textbook_formula() -> None:
    chosen, rejected, margin = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 0.0]), torch.tensor([1.0, 0.0])
    expected = [-math.log(1 / (1 + math.exp(-(2.0 - 0.5 - 1.0)))), -math.log(1 / (1 + math.exp(1.0)))]
    assert bradley_terry_losses(chosen, rejected, margin).tolist() == pytest.approx(expected)
    centred = bradley_terry_losses(chosen, rejected, margin, center_coefficient=0.1)
    assert centred.tolist() == pytest.approx([expected[0] + 0.1 * 2.5**2, expected[1] + 0.1 * 1.0])


def test_rows_without_margin_take_the_spec_default(model_and_rows) -> None:
    _model, tokenizer, rows, _tmp = model_and_rows
    rows = [{**r, "margin": None} for r in rows[:2]]
    assert RewardModelObjective(tokenizer.pad_token_id, default_margin=0.25).collate(rows)["margin"].tolist() == [
        0.25, 0.25]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_reward_model_trains_and_reports_eval_accuracy(tiny_model_dir: Path, tmp_path: Path, method: str) -> None:
    from transformers import AutoModelForSequenceClassification

    val = write_jsonl(tmp_path / "data" / "val.jsonl", separable_pairs(12)[4:])
    spec = make_spec(tiny_model_dir, tmp_path, objective="reward_model", method=method, rows=separable_pairs(16),
                     data={"validation": {"path": str(val)}},
                     hyperparameters={"learning_rate": 1e-2 if method == "lora" else 2e-3, "max_steps": 8},
                     schedule={"eval_every_steps": 4, "best_metric": "eval_reward_accuracy",
                               "greater_is_better": True})
    assert recipe_for(spec).__module__ == "tuneforge.engine.recipes.reward_model"
    events: list[EngineEvent] = []
    result = run_training(spec, on_event=events.append)

    assert result.status is RunStatus.COMPLETED and result.steps == 8
    steps = [e.metrics for e in events if e.kind is EventKind.STEP]
    evals = [e.metrics for e in events if e.kind is EventKind.EVAL]
    losses = [m["loss"] for m in steps]
    assert all(math.isfinite(x) for x in losses) and min(losses[-2:]) < losses[0], losses
    assert len(evals) == 2 and evals[-1]["eval_reward_accuracy"] == 1.0, evals
    assert evals[-1]["eval_reward_margin_mean"] > 0
    saved = Path(result.last_checkpoint_uri.removeprefix("file://")) / "model"
    if method == "full":
        loaded = AutoModelForSequenceClassification.from_pretrained(saved, trust_remote_code=False,
                                                                    use_safetensors=True)
        assert loaded.config.num_labels == 1 and loaded.score.weight.shape[0] == 1
    else:
        from safetensors.torch import load_file

        adapter = load_file(str(saved / "adapter_model.safetensors"))
        assert any("score" in k for k in adapter), sorted(adapter)[:5]  # the head trains and is saved


def test_killed_and_resumed_reward_model_matches_uninterrupted(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The LoRA adapter AND the trained score head come back from the checkpoint (peft modules_to_save)."""
    import threading

    def spec_for(run: str):
        return make_spec(tiny_model_dir, tmp_path, objective="reward_model", method="lora",
                         rows=separable_pairs(16), hyperparameters={"learning_rate": 1e-2, "max_steps": 6},
                         schedule={"save_every_steps": 2, "keep_latest_n": 2},
                         output={"checkpoint_uri": f"file://{tmp_path}/ckpt", "run_name": run})

    full_events: list[EngineEvent] = []
    full = run_training(spec_for("full"), on_event=full_events.append)
    cancel = threading.Event()
    first: list[EngineEvent] = []

    def stop_after_2(e: EngineEvent) -> None:
        first.append(e)
        if e.kind is EventKind.CHECKPOINT and e.step == 2:
            cancel.set()

    spec = spec_for("killed")
    assert run_training(spec, on_event=stop_after_2, cancel=cancel).status is RunStatus.CANCELLED
    second: list[EngineEvent] = []
    resumed = run_training(spec, on_event=second.append)

    assert resumed.resumed_from_uri.endswith("/killed/step-2/")
    steps = lambda events: {e.step: e.metrics for e in events if e.kind is EventKind.STEP}  # noqa: E731
    a, b = steps(full_events), {**steps(first), **steps(second)}
    assert sorted(b) == list(range(1, 7))
    for s in range(1, 7):
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], abs=1e-4), s
        assert b[s]["reward_accuracy"] == pytest.approx(a[s]["reward_accuracy"]), s
    assert resumed.metrics["loss"] == pytest.approx(full.metrics["loss"], abs=1e-4)
