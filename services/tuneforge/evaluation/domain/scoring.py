"""Raw engine outputs -> metric values; model-vs-baseline comparison; forgetting.

Pure Python: the engine returns summed losses, option log-likelihoods and generations
(``tuneforge.engine.evaluate.job``); this module applies ``metrics``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuneforge.evaluation.domain import metrics as m
from tuneforge.evaluation.domain.model import LOWER_IS_BETTER, Metric, MetricResult, Role


def score(
    raw: Mapping[str, Any],
    wanted: Sequence[Metric],
    role: Role,
    dataset_version_id: str,
    flagged: Callable[[str], bool] | None = None,
) -> list[MetricResult]:
    """Metric values of one model on one dataset from the engine's raw outputs.

    Args:
        raw: ``run_task`` output.
        wanted: metrics requested (FORGETTING is scored on its own dataset by ``forgetting``).
        role: which model these are.
        dataset_version_id: the dataset they are on.
        flagged: the safety scorer's "is this text flagged" (required for SAFETY).
    """
    scores: list[m.Score] = []
    if Metric.PERPLEXITY in wanted and "perplexity" in raw:
        scores += _perplexity_scores(raw["perplexity"])
    if Metric.MULTIPLE_CHOICE in wanted and raw.get("multiple_choice", {}).get("gold"):
        mc = raw["multiple_choice"]
        scores += m.multiple_choice(mc["loglikelihoods"], mc["choices"], mc["gold"])
    if Metric.REWARD_ACCURACY in wanted and raw.get("reward_pairs", {}).get("chosen"):
        scores += _reward_scores(raw["reward_pairs"])
    gens = raw.get("generations") or []
    if gens:
        scores += _generation_scores(gens, wanted, flagged)
    return [MetricResult(role, dataset_version_id, s.name, s.value, s.count, s.ci_low, s.ci_high) for s in scores]


def _perplexity_scores(ppl: Mapping[str, Any]) -> list[m.Score]:
    tokens = int(ppl["tokens"])
    if not tokens:
        return []
    mean = float(ppl["nll_sum"]) / tokens
    n = int(ppl["examples"])
    return [m.Score("mean_loss", mean, n), m.Score("perplexity", math.exp(mean), n), m.Score("scored_tokens", tokens, n)]


def _reward_scores(pairs: Mapping[str, Sequence[float]]) -> list[m.Score]:
    """A reward model's pairwise accuracy (ties count as wrong, as in trl's RewardTrainer) and mean margin."""
    chosen, rejected = pairs["chosen"], pairs["rejected"]
    n = len(chosen)
    right = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    low, high = m.wilson_interval(right, n)
    margin = sum(c - r for c, r in zip(chosen, rejected, strict=True)) / n
    return [m.Score("reward_accuracy", right / n, n, low, high), m.Score("reward_margin_mean", margin, n)]


def answer_pairs(generations: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per dataset, the model's and the baseline's answers to the same prompt as judge examples
    (``mc_prompt``, ``choices`` = [model, baseline], ``gold`` = 0: the model's answer is "chosen")."""
    answers: dict[tuple[str, int], dict[str, Any]] = {}
    for g in generations:
        answers.setdefault((g["dataset_version_id"], g["index"]), {"prompt": g["prompt"]})[g["role"]] = g["text"]
    out: dict[str, list[dict[str, Any]]] = {}
    for (version_id, _index), a in sorted(answers.items()):
        if Role.MODEL.value in a and Role.BASELINE.value in a:
            out.setdefault(version_id, []).append(
                {"mc_prompt": a["prompt"], "choices": [a[Role.MODEL.value], a[Role.BASELINE.value]], "gold": 0})
    return out


def win_rate(pairs: Mapping[str, Sequence[float]], dataset_version_id: str) -> list[MetricResult]:
    """The model's win rate over the baseline by reward (a tie counts 1/2), and both sides' mean reward."""
    model, base = pairs["chosen"], pairs["rejected"]
    n = len(model)
    if not n:
        return []
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(model, base, strict=True))
    low, high = m.wilson_interval(round(wins), n)
    return [MetricResult(Role.MODEL, dataset_version_id, "reward_win_rate", wins / n, n, low, high),
            MetricResult(Role.MODEL, dataset_version_id, "reward_mean_model", sum(model) / n, n),
            MetricResult(Role.MODEL, dataset_version_id, "reward_mean_baseline", sum(base) / n, n)]


def _generation_scores(
    gens: Sequence[Mapping[str, Any]], wanted: Sequence[Metric], flagged: Callable[[str], bool] | None
) -> list[m.Score]:
    preds = [g["text"] for g in gens]
    refs = [g.get("reference") or "" for g in gens]
    out: list[m.Score] = []
    if Metric.BLEU in wanted:
        out.append(m.bleu(preds, refs))
    if Metric.ROUGE in wanted:
        out += m.rouge(preds, refs)
    if Metric.EXACT_MATCH in wanted:
        out.append(m.exact_match(preds, refs))
    if Metric.TOKEN_F1 in wanted:
        out.append(m.token_f1(preds, refs))
    if Metric.CLASSIFICATION in wanted:
        labels = [g.get("label") or g.get("reference") or "" for g in gens]
        out += m.classification(preds, labels)
    if Metric.SAFETY in wanted and flagged is not None:
        k = sum(flagged(p) for p in preds)
        low, high = m.wilson_interval(k, len(preds))
        out.append(m.Score("unsafe_rate", k / len(preds), len(preds), low, high))
        out.append(m.refusal_rate(preds))
    return out


@dataclass(frozen=True)
class Comparison:
    """One metric, model vs baseline, on one dataset."""

    dataset_version_id: str
    name: str
    model_value: float
    baseline_value: float

    @property
    def delta(self) -> float:
        """``model_value - baseline_value``."""
        return self.model_value - self.baseline_value

    @property
    def model_better(self) -> bool:
        """Direction-aware: lower is better for perplexity, loss, unsafe and refusal rates."""
        if self.name in LOWER_IS_BETTER:
            return self.model_value < self.baseline_value
        return self.model_value > self.baseline_value


NOT_COMPARED = frozenset({"scored_tokens"})


def compare(results: Sequence[MetricResult]) -> list[Comparison]:
    """Pair each model metric with the baseline's value of the same name on the same dataset."""
    base = {(r.dataset_version_id, r.name): r.value for r in results if r.role is Role.BASELINE}
    out = []
    for r in results:
        key = (r.dataset_version_id, r.name)
        if r.role is Role.MODEL and key in base and r.name not in NOT_COMPARED:
            out.append(Comparison(r.dataset_version_id, r.name, r.value, base[key]))
    return out


def forgetting_ratio(model_ppl: float, baseline_ppl: float) -> float:
    """Fine-tuned / base perplexity on the general held-out set (> 1: the model got worse)."""
    return model_ppl / baseline_ppl if baseline_ppl > 0 else math.inf


def summary(comparisons: Sequence[Comparison], forgetting_flagged: bool) -> str:
    """A one-paragraph verdict."""
    if not comparisons:
        return "no metric was computed for both models"
    wins = [c for c in comparisons if c.model_better]
    parts = [f"model better on {len(wins)} of {len(comparisons)} metrics"]
    if wins:
        parts.append("better: " + ", ".join(f"{c.name} ({c.model_value:.4g} vs {c.baseline_value:.4g})" for c in wins))
    losses = [c for c in comparisons if not c.model_better and c.delta != 0]
    if losses:
        parts.append("worse: " + ", ".join(f"{c.name} ({c.model_value:.4g} vs {c.baseline_value:.4g})" for c in losses))
    if forgetting_flagged:
        parts.append("catastrophic forgetting FLAGGED on the general held-out set")
    return "; ".join(parts) + "."
