"""The engine's ORPO and SimPO losses equal trl 1.16's (``trl.experimental.orpo.ORPOTrainer`` and
``trl.experimental.cpo.CPOTrainer`` with ``loss_type="simpo"``) on the same model and batch.

trl's own methods are called unbound on a stand-in ``self`` holding the hyperparameters they read,
so the check covers trl's formulas (log-prob averaging, odds ratio, SimPO margin), not a copy of them.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.unit.engine._train_support import make_spec
from tuneforge.engine.data.tokenize import tokenize_preference
from tuneforge.engine.recipes import _common
from tuneforge.engine.train.objectives import ReferenceFreeObjective

pytest.importorskip("trl.experimental.orpo")
from trl.experimental.cpo import CPOTrainer
from trl.experimental.orpo import ORPOTrainer


@pytest.fixture(scope="module")
def policy_and_rows(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A perturbed tiny policy and 4 tokenized preference pairs of different completion lengths."""
    tmp = tmp_path_factory.mktemp("ref_free_trl")
    spec = make_spec(tiny_model_dir, tmp, objective="orpo", method="full")
    model, tokenizer = _common.load_model(spec, torch.device("cpu"))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    model.eval()
    train, _ = _common.read_splits(spec)
    rows = [_common.pair_row(p) for p in tokenize_preference(train[:4], tokenizer, max_len=64)]
    return model, tokenizer, rows


def _trl_mean_logps(trainer_cls, model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    logps = trainer_cls.get_batch_logps(logits, batch["labels"], average_log_prob=True)
    return logps.chunk(2)


def test_simpo_loss_matches_trl(policy_and_rows) -> None:
    model, tokenizer, rows = policy_and_rows
    beta, gamma = 2.0, 1.0
    objective = ReferenceFreeObjective(tokenizer.pad_token_id, kind="simpo", beta=beta, gamma=gamma)
    batch = objective.collate(rows)
    with torch.no_grad():
        out = objective.loss(model, batch)
        chosen, rejected = _trl_mean_logps(CPOTrainer, model, batch)
        this = SimpleNamespace(alpha=0.0, loss_type="simpo", simpo_gamma=gamma, beta=beta, label_smoothing=0.0,
                               accelerator=SimpleNamespace(device=torch.device("cpu")))
        losses, _, _ = CPOTrainer.cpo_loss(this, chosen, rejected)
    theirs = float(losses.mean())  # cpo_alpha=0: trl's whole SimPO loss
    ours = float(out.total) / objective.units(batch)  # the engine sums over pairs, trl averages

    assert objective.units(batch) == 4
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert abs(ours - 0.6931) > 1e-3  # not trivial


def test_orpo_loss_matches_trl(policy_and_rows) -> None:
    model, tokenizer, rows = policy_and_rows
    beta = 0.1
    objective = ReferenceFreeObjective(tokenizer.pad_token_id, kind="orpo", beta=beta)
    batch = objective.collate(rows)
    with torch.no_grad():
        out = objective.loss(model, batch)
        chosen, rejected = _trl_mean_logps(ORPOTrainer, model, batch)
        this = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device=torch.device("cpu")))
        or_terms, _, _, _, _ = ORPOTrainer.odds_ratio_loss(this, chosen, rejected)
    # The NLL term: the chosen completion's mean token NLL per pair (trl's get_batch_logps, averaged).
    theirs = float((-chosen - or_terms).mean())
    ours = float(out.total) / objective.units(batch)

    assert ours == pytest.approx(theirs, abs=1e-5)
    assert out.metrics["log_odds_ratio"] / 4 == pytest.approx(float(or_terms.mean() / beta), abs=1e-5)


def test_orpo_odds_ratio_is_stable_near_zero_log_prob() -> None:
    from tuneforge.engine.train.objectives import orpo_odds_ratio

    c = torch.tensor([-1e-7, -0.5, -3.0])
    r = torch.tensor([-2.0, -0.6931, -1e-6])
    this = SimpleNamespace(beta=1.0, accelerator=SimpleNamespace(device=torch.device("cpu")))
    theirs, _, _, _, _ = ORPOTrainer.odds_ratio_loss(this, c, r)
    assert torch.isfinite(orpo_odds_ratio(c, r)).all()
    assert torch.allclose(orpo_odds_ratio(c, r), theirs, atol=1e-6)
