"""The engine's DPO losses equal trl 1.16's ``DPOTrainer`` on the same model, reference and batch."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from tests.unit.engine._train_support import make_spec, preference_rows
from tuneforge.engine.data.tokenize import tokenize_preference
from tuneforge.engine.recipes import _common
from tuneforge.engine.spec import DpoLossType
from tuneforge.engine.train.objectives import IGNORE, DPOObjective, Reference


@pytest.fixture(scope="module")
def policy_and_batch(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A policy nudged away from its frozen reference, and one engine batch of 4 preference pairs."""
    tmp = tmp_path_factory.mktemp("dpo_trl")
    spec = make_spec(tiny_model_dir, tmp, objective="dpo", method="full")
    model, tokenizer = _common.load_model(spec, torch.device("cpu"))
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():  # otherwise every log-ratio is 0 and all losses are trivial
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    model.eval()
    train, _ = _common.read_splits(spec)
    rows = [_common.pair_row(p) for p in tokenize_preference(train[:4], tokenizer, max_len=64)]
    return model, reference, tokenizer, rows, tmp


def _trl_loss(model, reference, tokenizer, batch, loss_type: str, beta: float, out: Path) -> float:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir=str(out), use_cpu=True, bf16=False, beta=beta, loss_type=[loss_type],
                     report_to=[], gradient_checkpointing=False, max_length=64, save_strategy="no")
    data = Dataset.from_list([{k: v for k, v in r.items() if k != "kind"} for r in preference_rows(4)])
    trainer = DPOTrainer(model=model, ref_model=reference, args=args, train_dataset=data,
                         processing_class=tokenizer)
    trainer.model.eval()
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "completion_mask": (batch["labels"] != IGNORE).long(),
    }
    with torch.no_grad():
        return float(trainer._compute_loss(trainer.model, inputs, return_outputs=False))


@pytest.mark.parametrize("loss_type", [DpoLossType.SIGMOID, DpoLossType.IPO, DpoLossType.HINGE])
def test_dpo_loss_matches_trl(policy_and_batch, loss_type: DpoLossType) -> None:
    model, reference, tokenizer, rows, tmp = policy_and_batch
    beta = 0.1
    objective = DPOObjective(tokenizer.pad_token_id, beta=beta, loss_type=loss_type,
                             reference=Reference(frozen_model=reference))
    batch = objective.collate(rows)
    with torch.no_grad():
        out = objective.loss(model, batch)
    ours = float(out.total) / objective.units(batch)  # the engine sums over pairs, trl averages

    theirs = _trl_loss(model, reference, tokenizer, batch, loss_type.value, beta, tmp / loss_type.value)

    assert objective.units(batch) == 4
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert abs(ours - {DpoLossType.SIGMOID: 0.6931, DpoLossType.HINGE: 1.0}.get(loss_type, -1)) > 1e-3  # not trivial
