"""Rewards: built-in verifiable reward functions chosen by name, and a reward model's score.

No user code runs: a job names functions from ``BUILTIN`` (with their parameters) and/or a reward
model folder (sequence classification with one label, safetensors, ``trust_remote_code`` off).

Built-ins (``completion``: the decoded completion; ``answer``: the record's reference answer):
    exact_match      1.0 when the completion, stripped, equals the answer (case-insensitive), else 0.0
    contains_answer  1.0 when the answer occurs in the completion (case-insensitive), else 0.0
    regex            1.0 when ``pattern`` matches anywhere in the completion (``re.search``), else 0.0;
                     matching is cut off after 50 ms (the ``regex`` package's timeout), scoring 0.0
    length           -|len(completion) - target_length| in characters (trl's quick-start reward)
    json_valid       1.0 when the completion, stripped, parses as JSON, else 0.0
Rewards that compare with the answer score rows without an answer as NaN: trl's convention for
"not scored", left out of the group baseline and given no advantage.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tuneforge.common.errors import FailedPrecondition
from tuneforge.engine.spec import RewardFunction, RewardFunctionName

REGEX_TIMEOUT_S = 0.05

RewardFn = Callable[[str, str | None, RewardFunction], float]


def _needs_answer(fn: Callable[[str, str, RewardFunction], float]) -> RewardFn:
    def scored(completion: str, answer: str | None, params: RewardFunction) -> float:
        return math.nan if answer is None else fn(completion, answer, params)

    return scored


def _exact(completion: str, answer: str, _p: RewardFunction) -> float:
    return float(completion.strip().casefold() == answer.strip().casefold())


def _contains(completion: str, answer: str, _p: RewardFunction) -> float:
    return float(answer.strip().casefold() in completion.casefold())


def _regex(completion: str, _answer: str | None, p: RewardFunction) -> float:
    import regex

    try:
        return float(regex.search(p.pattern or "", completion, timeout=REGEX_TIMEOUT_S) is not None)
    except TimeoutError:
        return 0.0


def _length(completion: str, _answer: str | None, p: RewardFunction) -> float:
    return -abs(len(completion) - (p.target_length or 0))


def _json_valid(completion: str, _answer: str | None, _p: RewardFunction) -> float:
    try:
        json.loads(completion.strip())
    except ValueError:
        return 0.0
    return 1.0


BUILTIN: dict[RewardFunctionName, RewardFn] = {
    RewardFunctionName.EXACT_MATCH: _needs_answer(_exact),
    RewardFunctionName.CONTAINS_ANSWER: _needs_answer(_contains),
    RewardFunctionName.REGEX: _regex,
    RewardFunctionName.LENGTH: _length,
    RewardFunctionName.JSON_VALID: _json_valid,
}


def score_completions(
    functions: Sequence[RewardFunction], completions: Sequence[str], answers: Sequence[str | None]
) -> torch.Tensor:
    """Each function's reward of each completion, unweighted: a (completions, functions) float tensor."""
    out = torch.empty((len(completions), len(functions)), dtype=torch.float32)
    for j, f in enumerate(functions):
        fn = BUILTIN[f.name]
        for i, (c, a) in enumerate(zip(completions, answers, strict=True)):
            out[i, j] = fn(c, a, f)
    return out


def combine(per_function: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """The weighted sum per completion (trl's ``sum_then_normalize``): NaN where no function scored."""
    w = torch.tensor(list(weights), dtype=per_function.dtype)
    total = (per_function * w).nansum(dim=1)
    total[torch.isnan(per_function).all(dim=1)] = math.nan
    return total


class RewardModelScorer:
    """Scores (prompt, completion) texts with a sequence-classification reward model (one label).

    Args:
        folder: a Hugging Face folder with safetensors weights (``trust_remote_code`` stays off).
        adapter: a reward-model job's LoRA adapter folder (peft task SEQ_CLS) applied on ``folder``.
        device: where the model runs (no gradients, eval mode).
        batch_size: texts per forward pass.
    """

    def __init__(self, folder: Path, device: torch.device, batch_size: int = 16, *,
                 adapter: Path | None = None) -> None:
        from transformers import AutoConfig

        from tuneforge.engine.evaluate.loading import load_model

        if adapter is None:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
            heads = [a for a in (config.architectures or []) if a.endswith("ForSequenceClassification")]
            reward = bool(heads) and getattr(config, "num_labels", 1) == 1
            what = f"its config names {config.architectures or 'no architecture'}, {getattr(config, 'num_labels', '?')} labels"
        else:  # a reward-model job's LoRA checkpoint: the base loaded as a classifier, the adapter (and head) on it
            from tuneforge.engine.export import is_reward_adapter

            reward = is_reward_adapter(Path(adapter))
            what = "its adapter was not trained on a sequence classifier"
        if not reward:
            # A causal LM loaded as a classifier would score with a randomly initialised head.
            raise FailedPrecondition(
                f"the reward model is not a sequence classifier with one label ({what}): "
                "name a checkpoint of a reward-model job (a scalar head trained on preference pairs)")
        loaded = load_model(Path(folder), adapter_dir=Path(adapter) if adapter else None, device=str(device))
        self.model = loaded.model.requires_grad_(False)
        self.tokenizer = loaded.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = device
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, texts: Sequence[str]) -> torch.Tensor:
        """One scalar score per text (prompt and completion rendered together)."""
        out: list[torch.Tensor] = []
        for start in range(0, len(texts), self.batch_size):
            enc: Any = self.tokenizer(list(texts[start:start + self.batch_size]), return_tensors="pt",
                                      padding=True, truncation=True).to(self.device)
            out.append(self.model(**enc).logits[:, 0].float().cpu())
        return torch.cat(out) if out else torch.empty(0)
