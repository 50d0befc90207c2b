"""Losses the loop can train: next-token cross-entropy (SFT, pre-training), DPO, ORPO, SimPO, KTO and
the Bradley-Terry loss of reward models.

Rows are already tokenized. A causal-LM row holds ``input_ids`` and ``labels`` (``-100`` where no
loss is taken; Hugging Face alignment, the shift happens here) and optionally ``position_ids``
(packed rows). A DPO row holds ``chosen_input_ids``/``chosen_labels`` and
``rejected_input_ids``/``rejected_labels``. Every loss is a SUM over its units (label tokens, or
preference pairs); the loop divides by the global count.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.engine.spec import DpoLossType
from tuneforge.engine.train.loop import Batch, LossSum

IGNORE = -100
_MODEL_KEYS = ("input_ids", "attention_mask", "position_ids")


def pad_rows(rows: Sequence[dict[str, Any]], pad_id: int, prefix: str = "") -> Batch:
    """Right-pad ``input_ids``/``labels`` (and ``position_ids``) of ``rows`` into tensors."""
    ids = [list(r[prefix + "input_ids"]) for r in rows]
    labels = [list(r[prefix + "labels"]) for r in rows]
    width = max(len(x) for x in ids)
    batch: Batch = {
        "input_ids": torch.tensor([x + [pad_id] * (width - len(x)) for x in ids]),
        "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]),
        "labels": torch.tensor([y + [IGNORE] * (width - len(y)) for y in labels]),
    }
    if rows and prefix + "position_ids" in rows[0]:
        pos = [list(r[prefix + "position_ids"]) for r in rows]
        batch["position_ids"] = torch.tensor([p + [0] * (width - len(p)) for p in pos])
    return batch


def _num_tokens(batch: Batch) -> int:
    if "num_tokens" in batch:
        return int(batch["num_tokens"])
    return int(batch["attention_mask"].sum())


def _logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    out = model(**{k: batch[k] for k in _MODEL_KEYS if k in batch}, use_cache=False)
    # Prompt tuning prepends virtual tokens to the outputs; keep the positions of the real tokens.
    return out.logits[:, -batch["labels"].size(1) :]


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-prob of each next label, and the mask of positions that count (shifted)."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    mask = shift_labels != IGNORE
    safe = shift_labels.masked_fill(~mask, 0)
    logps = torch.log_softmax(shift_logits, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return logps * mask, mask


class CausalLMObjective:
    """Next-token cross-entropy over unmasked labels (SFT and continued pre-training).

    Args:
        pad_id: the tokenizer's pad id (distinct from eos).
        collate: turns rows into a batch; defaults to right padding with ``pad_rows``.
    """

    has_perplexity = True

    def __init__(self, pad_id: int, collate: Callable[[Sequence[Any]], Batch] | None = None, name: str = "sft"):
        self.name = name
        self._collate = collate or (lambda rows: pad_rows(rows, pad_id))

    def collate(self, rows: Sequence[Any]) -> Batch:
        return self._collate(rows)

    def units(self, batch: Batch) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def tokens(self, batch: Batch) -> int:
        return _num_tokens(batch)

    def loss(self, model: torch.nn.Module, batch: Batch) -> LossSum:
        logits = _logits(model, batch)
        total = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.size(-1)),
            batch["labels"][:, 1:].reshape(-1),
            ignore_index=IGNORE,
            reduction="sum",
        )
        return LossSum(total)


def dpo_losses(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: DpoLossType,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
) -> torch.Tensor:
    """Per-pair DPO loss (the formulas of trl 1.x ``DPOTrainer``).

    sigmoid: -log sigmoid(beta * delta); hinge: relu(1 - beta * delta); ipo: (delta_per_token -
    1/(2 beta))^2, with delta the difference of the policy/reference log-ratios of chosen and
    rejected (IPO normalises each log-ratio by its completion length).
    """
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    delta = chosen_ratio - rejected_ratio
    if loss_type is DpoLossType.SIGMOID:
        return -F.logsigmoid(beta * delta)
    if loss_type is DpoLossType.HINGE:
        return torch.relu(1 - beta * delta)
    ipo_delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
    return (ipo_delta - 1 / (2 * beta)) ** 2


def collate_pairs(rows: Sequence[Any], pad_id: int) -> Batch:
    """Preference rows as one batch: the chosen sequences, then the rejected ones, padded to one width."""
    chosen = pad_rows(rows, pad_id, "chosen_")
    rejected = pad_rows(rows, pad_id, "rejected_")
    width = max(chosen["input_ids"].size(1), rejected["input_ids"].size(1))
    fills = {"input_ids": pad_id, "attention_mask": 0, "labels": IGNORE}

    def cat(key: str) -> torch.Tensor:
        parts = [F.pad(b[key], (0, width - b[key].size(1)), value=fills[key]) for b in (chosen, rejected)]
        return torch.cat(parts)

    return {key: cat(key) for key in fills}


def pair_units(batch: Batch) -> int:
    """Pairs in a ``collate_pairs`` batch; a pair counts only when both completions have labels."""
    has = (batch["labels"][:, 1:] != IGNORE).any(dim=1)
    c, r = has.chunk(2)
    return int((c & r).sum())


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_odds_ratio(chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor) -> torch.Tensor:
    """Per-pair log sigmoid of the log odds ratio of chosen over rejected (ORPO's L_OR, negated).

    The inputs are length-normalised (mean per completion token) log-probs, as in the paper and
    trl's ``ORPOTrainer.odds_ratio_loss``; odds(y) = p / (1 - p).
    """
    c, r = chosen_mean_logps.float(), rejected_mean_logps.float()
    log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
    return F.logsigmoid(log_odds)


def simpo_losses(chosen_mean_logps: torch.Tensor, rejected_mean_logps: torch.Tensor, *, beta: float,
                 gamma: float) -> torch.Tensor:
    """Per-pair SimPO loss -log sigmoid(beta * (chosen - rejected) - gamma) on length-normalised log-probs
    (trl's ``CPOTrainer`` with ``loss_type="simpo"``, ``cpo_alpha=0``, no label smoothing)."""
    return -F.logsigmoid(beta * (chosen_mean_logps.float() - rejected_mean_logps.float()) - gamma)


@dataclass
class Reference:
    """Where reference log-probs come from: the policy with its adapter disabled, or a frozen copy.

    Attributes:
        adapter_model: the peft model whose ``disable_adapter()`` yields the base (adapters).
        frozen_model: a frozen copy of the initial model (full fine-tuning).
    """

    adapter_model: torch.nn.Module | None = None
    frozen_model: torch.nn.Module | None = None

    def context(self) -> contextlib.AbstractContextManager[Any]:
        if self.adapter_model is not None:
            return self.adapter_model.disable_adapter()  # type: ignore[operator]  # peft's method, typed via Module.__getattr__
        return contextlib.nullcontext()

    def model(self, policy: torch.nn.Module) -> torch.nn.Module:
        return self.frozen_model if self.frozen_model is not None else policy


class DPOObjective:
    """Direct preference optimisation over (chosen, rejected) pairs against a reference.

    Args:
        pad_id: the tokenizer's pad id.
        beta: DPO temperature.
        loss_type: sigmoid, ipo or hinge.
        reference: how reference log-probs are computed.
    """

    name = "dpo"
    has_perplexity = False

    def __init__(self, pad_id: int, *, beta: float, loss_type: DpoLossType, reference: Reference):
        self.pad_id = pad_id
        self.beta = beta
        self.loss_type = loss_type
        self.reference = reference

    def collate(self, rows: Sequence[Any]) -> Batch:
        return collate_pairs(rows, self.pad_id)

    def units(self, batch: Batch) -> int:
        return pair_units(batch)

    def tokens(self, batch: Batch) -> int:
        return _num_tokens(batch)

    def sequence_logps(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed completion log-probs of each sequence ([chosen; rejected]) and token counts."""
        logps, mask = token_logps(_logits(model, batch), batch["labels"])
        return logps.sum(dim=1), mask.sum(dim=1)

    def loss(self, model: torch.nn.Module, batch: Batch) -> LossSum:
        logps, counts = self.sequence_logps(model, batch)
        with torch.no_grad(), self.reference.context():
            ref_logps, _ = self.sequence_logps(self.reference.model(model), batch)
        chosen, rejected = logps.chunk(2)
        ref_chosen, ref_rejected = ref_logps.chunk(2)
        n_chosen, n_rejected = counts.chunk(2)
        losses = dpo_losses(
            chosen, rejected, ref_chosen, ref_rejected,
            beta=self.beta, loss_type=self.loss_type, chosen_tokens=n_chosen, rejected_tokens=n_rejected,
        )
        chosen_reward = self.beta * (chosen - ref_chosen).detach()
        rejected_reward = self.beta * (rejected - ref_rejected).detach()
        metrics = {
            "rewards_chosen": float(chosen_reward.sum()),
            "rewards_rejected": float(rejected_reward.sum()),
            "rewards_accuracy": float((chosen_reward > rejected_reward).float().sum()),
            "rewards_margin": float((chosen_reward - rejected_reward).sum()),
        }
        return LossSum(losses.sum(), metrics)


class ReferenceFreeObjective:
    """ORPO or SimPO over (chosen, rejected) pairs: no reference model, length-normalised log-probs.

    ORPO, per pair: the chosen completion's mean token NLL minus ``beta`` * log sigmoid(log odds
    ratio). The NLL is over completion tokens only, as in the paper; trl's ``ORPOTrainer`` takes it
    over prompt and completion tokens averaged over the whole batch (the odds-ratio term is the same).
    SimPO, per pair: ``simpo_losses``.

    Args:
        pad_id: the tokenizer's pad id.
        kind: "orpo" or "simpo".
        beta: ORPO's weight of the odds-ratio term (lambda), or SimPO's reward scale.
        gamma: SimPO's target margin (unused by ORPO).
    """

    has_perplexity = False

    def __init__(self, pad_id: int, *, kind: str, beta: float, gamma: float = 0.0):
        if kind not in ("orpo", "simpo"):
            raise ValueError(f"kind must be 'orpo' or 'simpo', not {kind!r}")
        self.name = kind
        self.pad_id = pad_id
        self.beta = beta
        self.gamma = gamma

    def collate(self, rows: Sequence[Any]) -> Batch:
        return collate_pairs(rows, self.pad_id)

    def units(self, batch: Batch) -> int:
        return pair_units(batch)

    def tokens(self, batch: Batch) -> int:
        return _num_tokens(batch)

    def mean_logps(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Mean completion-token log-prob of each sequence ([chosen; rejected])."""
        logps, mask = token_logps(_logits(model, batch), batch["labels"])
        return logps.sum(dim=1) / mask.sum(dim=1).clamp(min=1)

    def loss(self, model: torch.nn.Module, batch: Batch) -> LossSum:
        chosen, rejected = self.mean_logps(model, batch).chunk(2)
        metrics: dict[str, float] = {}
        if self.name == "orpo":
            ratio = orpo_odds_ratio(chosen, rejected)
            nll = -chosen.float()
            losses = nll - self.beta * ratio
            metrics["nll_loss"] = float(nll.detach().sum())
            metrics["log_odds_ratio"] = float(ratio.detach().sum())
        else:
            losses = simpo_losses(chosen, rejected, beta=self.beta, gamma=self.gamma)
        chosen_reward = self.beta * chosen.detach()
        rejected_reward = self.beta * rejected.detach()
        metrics.update({
            "rewards_chosen": float(chosen_reward.sum()),
            "rewards_rejected": float(rejected_reward.sum()),
            "rewards_accuracy": float((chosen_reward > rejected_reward).float().sum()),
            "rewards_margin": float((chosen_reward - rejected_reward).sum()),
        })
        return LossSum(losses.sum(), metrics)


def kto_losses(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    *,
    beta: float,
    desirable_weight: float,
    undesirable_weight: float,
) -> torch.Tensor:
    """Per-example KTO loss (Ethayarajh et al. 2024, eq. 7; trl 1.x ``KTOTrainer`` with loss_type "kto").

    desirable: w_d * (1 - sigmoid(beta * (ratio - kl))); undesirable: w_u * (1 - sigmoid(beta * (kl -
    ratio))), with ratio the policy/reference log-ratio of the completion and ``kl`` the detached,
    clamped-at-0 estimate of KL(policy || reference) from mismatched prompt/completion pairs.
    """
    ratio = logps - ref_logps
    good = desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio)))
    return torch.where(desirable, good, bad)


class KTOObjective:
    """Kahneman-Tversky optimisation over unpaired completions labelled desirable or undesirable.

    A row holds ``prompt_ids``, ``completion_ids`` and ``desirable`` (bool). The KL reference point is
    estimated per micro-batch as in trl: each prompt with the previous row's completion (cycled by
    one), policy minus reference summed log-probs, averaged, clamped at 0, no gradient.

    Args:
        pad_id: the tokenizer's pad id.
        beta: KTO temperature.
        desirable_weight, undesirable_weight: loss weights of the two kinds of examples.
        reference: how reference log-probs are computed.
    """

    name = "kto"
    has_perplexity = False

    def __init__(self, pad_id: int, *, beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                 reference: Reference):
        self.pad_id = pad_id
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight
        self.reference = reference

    def _sequences(self, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]) -> Batch:
        rows = [{"input_ids": [*p, *c], "labels": [IGNORE] * len(p) + list(c)} for p, c in zip(prompts, completions,
                                                                                              strict=True)]
        return pad_rows(rows, self.pad_id)

    def collate(self, rows: Sequence[Any]) -> Batch:
        prompts = [r["prompt_ids"] for r in rows]
        completions = [r["completion_ids"] for r in rows]
        batch = self._sequences(prompts, completions)
        kl = self._sequences(prompts, completions[-1:] + completions[:-1])
        batch.update({f"kl_{k}": v for k, v in kl.items()})
        batch["desirable"] = torch.tensor([bool(r["desirable"]) for r in rows])
        return batch

    def units(self, batch: Batch) -> int:
        return int(batch["desirable"].numel())

    def tokens(self, batch: Batch) -> int:
        return _num_tokens(batch)

    @staticmethod
    def _logps(model: torch.nn.Module, batch: Batch, prefix: str = "") -> torch.Tensor:
        part = {k: batch[prefix + k] for k in ("input_ids", "attention_mask", "labels")}
        logps, _ = token_logps(_logits(model, part), part["labels"])
        return logps.sum(dim=1)

    def loss(self, model: torch.nn.Module, batch: Batch) -> LossSum:
        logps = self._logps(model, batch)
        with torch.no_grad():
            kl_logps = self._logps(model, batch, "kl_")
            with self.reference.context():
                ref_model = self.reference.model(model)
                ref_logps = self._logps(ref_model, batch)
                ref_kl_logps = self._logps(ref_model, batch, "kl_")
        kl = (kl_logps - ref_kl_logps).mean().clamp(min=0)
        desirable = batch["desirable"].to(logps.device)
        losses = kto_losses(logps, ref_logps, desirable, kl, beta=self.beta,
                            desirable_weight=self.desirable_weight, undesirable_weight=self.undesirable_weight)
        rewards = self.beta * (logps - ref_logps).detach()
        metrics = {
            "kto_kl": float(kl) * len(losses),  # the loop averages sums over units
            "rewards_desirable": float(rewards[desirable].sum()),
            "rewards_undesirable": float(rewards[~desirable].sum()),
        }
        return LossSum(losses.sum(), metrics)


def bradley_terry_losses(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | float,
                         *, center_coefficient: float = 0.0) -> torch.Tensor:
    """Per-pair reward-model loss -log sigmoid(r_chosen - r_rejected - margin), plus ``center_coefficient`` *
    (r_chosen + r_rejected)^2 (trl 1.x ``RewardTrainer.compute_loss``; its mean over pairs is trl's loss)."""
    c, r = chosen_rewards.float(), rejected_rewards.float()
    losses = -F.logsigmoid(c - r - margin)
    if center_coefficient:
        losses = losses + center_coefficient * (c + r) ** 2
    return losses


class RewardModelObjective:
    """A reward model (a sequence-classification model with one output) on (chosen, rejected) pairs.

    The score of a sequence is the head's output at its last non-pad token (transformers'
    ``*ForSequenceClassification`` with ``config.pad_token_id``; rows are right-padded). A row may
    carry ``margin`` (the record's own); otherwise ``default_margin`` is used.

    Args:
        pad_id: the tokenizer's pad id (distinct from eos).
        default_margin: margin of pairs whose row has none.
        center_coefficient: weight of the reward-centring term (0: off).
    """

    name = "reward_model"
    has_perplexity = False
    # Sums over pairs the loop also averages over evaluation rows (``eval_<name>``).
    eval_metrics = ("reward_accuracy", "reward_margin_mean")

    def __init__(self, pad_id: int, *, default_margin: float = 0.0, center_coefficient: float = 0.0):
        self.pad_id = pad_id
        self.default_margin = default_margin
        self.center_coefficient = center_coefficient

    def collate(self, rows: Sequence[Any]) -> Batch:
        batch = collate_pairs(rows, self.pad_id)
        margins = [r.get("margin") for r in rows]
        batch["margin"] = torch.tensor([self.default_margin if m is None else float(m) for m in margins],
                                       dtype=torch.float)
        return batch

    def units(self, batch: Batch) -> int:
        return pair_units(batch)

    def tokens(self, batch: Batch) -> int:
        return _num_tokens(batch)

    @staticmethod
    def rewards(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """The score of every sequence of the batch ([chosen; rejected])."""
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        return out.logits.squeeze(-1).float()

    def loss(self, model: torch.nn.Module, batch: Batch) -> LossSum:
        chosen, rejected = self.rewards(model, batch).chunk(2)
        losses = bradley_terry_losses(chosen, rejected, batch["margin"].to(chosen.device),
                                      center_coefficient=self.center_coefficient)
        c, r = chosen.detach(), rejected.detach()
        metrics = {
            "reward_accuracy": float((c > r).float().sum()),
            "reward_margin_mean": float((c - r).sum()),
            "reward_chosen": float(c.sum()),
            "reward_rejected": float(r.sum()),
        }
        return LossSum(losses.sum(), metrics)
