"""The engine's KTO loss equals trl 1.16's ``KTOTrainer`` (loss_type "kto") on the same model, reference
and batch (desirable and undesirable examples, the KL reference point from cycled completions)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.unit.engine._train_support import make_spec, preference_rows
from tuneforge.engine.data.tokenize import tokenize_preference
from tuneforge.engine.recipes import _common
from tuneforge.engine.train.objectives import IGNORE, KTOObjective, Reference


def _split(side) -> tuple[list[int], list[int]]:
    """A tokenized preference side as (prompt ids, completion ids)."""
    first = next(i for i, y in enumerate(side.labels) if y != IGNORE)
    return list(side.input_ids[:first]), list(side.input_ids[first:])


@pytest.fixture(scope="module")
def policy_and_rows(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A policy nudged away from its frozen reference, and 6 KTO rows (3 desirable, 3 undesirable)."""
    tmp = tmp_path_factory.mktemp("kto_trl")
    spec = make_spec(tiny_model_dir, tmp, objective="dpo", method="full")
    model, tokenizer = _common.load_model(spec, torch.device("cpu"))
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():  # otherwise every log-ratio and the KL are 0
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    model.eval()
    train, _ = _common.read_splits(spec)
    pairs = tokenize_preference(train[:6], tokenizer, max_len=64)
    rows = []
    for i, pair in enumerate(pairs):
        prompt, completion = _split(pair.chosen if i % 2 == 0 else pair.rejected)
        rows.append({"prompt_ids": prompt, "completion_ids": completion, "desirable": i % 2 == 0})
    return model, reference, tokenizer, rows, tmp


def _trl_loss(model, reference, tokenizer, batch, beta: float, weights: tuple[float, float], out: Path) -> float:
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    args = KTOConfig(output_dir=str(out), use_cpu=True, bf16=False, beta=beta, report_to=[],
                     gradient_checkpointing=False, max_length=64, save_strategy="no",
                     desirable_weight=weights[0], undesirable_weight=weights[1])
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"], "label": i % 2 == 0}
                              for i, r in enumerate(preference_rows(4))])
    trainer = KTOTrainer(model=model, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.model.eval()
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "completion_mask": (batch["labels"] != IGNORE).long(),
        "KL_input_ids": batch["kl_input_ids"],
        "KL_attention_mask": batch["kl_attention_mask"],
        "KL_completion_mask": (batch["kl_labels"] != IGNORE).long(),
        "label": batch["desirable"],
    }
    with torch.no_grad():
        return float(trainer._compute_loss(trainer.model, inputs, return_outputs=False))


@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 1.5)])
def test_kto_loss_matches_trl(policy_and_rows, weights: tuple[float, float]) -> None:
    model, reference, tokenizer, rows, tmp = policy_and_rows
    beta = 0.1
    objective = KTOObjective(tokenizer.pad_token_id, beta=beta, desirable_weight=weights[0],
                             undesirable_weight=weights[1], reference=Reference(frozen_model=reference))
    batch = objective.collate(rows)
    with torch.no_grad():
        out = objective.loss(model, batch)
    ours = float(out.total) / objective.units(batch)  # the engine sums over examples, trl averages

    theirs = _trl_loss(model, reference, tokenizer, batch, beta, weights, tmp / f"w{weights[1]}")

    assert objective.units(batch) == 6 and int(batch["desirable"].sum()) == 3
    assert out.metrics["kto_kl"] > 0  # the KL reference point is in play
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert abs(ours - 0.5 * (weights[0] + weights[1]) / 2) > 1e-4  # not the value at ratio == kl == 0


def test_kl_pairs_cycle_completions_by_one_like_trl() -> None:
    rows = [{"prompt_ids": [1, 2], "completion_ids": [10], "desirable": True},
            {"prompt_ids": [3], "completion_ids": [20, 21], "desirable": False},
            {"prompt_ids": [4, 5, 6], "completion_ids": [30], "desirable": True}]
    batch = KTOObjective(0, beta=0.1, reference=Reference()).collate(rows)
    kl = [[t for t, m in zip(ids, mask, strict=True) if m] for ids, mask in
          zip(batch["kl_input_ids"].tolist(), batch["kl_attention_mask"].tolist(), strict=True)]
    # trl: kl_completions = completions[-1:] + completions[:-1]
    assert kl == [[1, 2, 30], [3, 10], [4, 5, 6, 20, 21]]
    assert batch["labels"].tolist()[1] == [IGNORE, 20, 21, IGNORE, IGNORE][: batch["labels"].size(1)]
    assert batch["desirable"].tolist() == [True, False, True]
