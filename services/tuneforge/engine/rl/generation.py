"""The one generation interface rollouts go through, and its Hugging Face ``generate`` implementation.

A ``RolloutEngine`` turns token-id prompts into ``n`` sampled completions each. The recipe only sees
this protocol, so a vLLM or SGLang engine (sharing weights with the policy after each step) can be
plugged in on GPUs without touching the objective: it must return the completions' token ids, and
may return the sampler's per-token log-probabilities (the objective recomputes them with the policy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How completions are sampled."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0  # the rollout's seed: the same seed and weights give the same completions


@dataclass(frozen=True)
class Completion:
    """One sampled completion of one prompt.

    Attributes:
        prompt_index: which prompt of the call it continues.
        token_ids: the generated ids, ending with the stop token when one was produced (no padding).
        logprobs: the sampler's log-probability of each token, or None when the engine does not give them.
        finished: whether it ended with a stop token (False: cut at ``max_new_tokens``).
    """

    prompt_index: int
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] | None
    finished: bool


class RolloutEngine(Protocol):
    """Samples completions; the only way rollouts are produced."""

    def generate(self, prompts: Sequence[Sequence[int]], n: int, params: SamplingParams) -> list[Completion]:
        """``n`` completions of each prompt, prompt by prompt (``prompt_index`` 0,0,..,1,1,..)."""
        ...


class HFRolloutEngine:
    """Rollouts with ``model.generate`` on the training model itself (left-padded batches).

    Args:
        model: the policy (unwrapped from DDP/DeepSpeed); generation runs in eval mode, no gradients.
        pad_id: padding id (distinct from the stop ids).
        stop_ids: ids that end a completion (EOS, end of turn).
        synced: pass ``synced_gpus`` (ZeRO-3: every worker must run the same number of forwards).
    """

    def __init__(self, model: torch.nn.Module, pad_id: int, stop_ids: Sequence[int], *, synced: bool = False):
        self.model: Any = model  # a transformers model: generate() is not on nn.Module
        self.pad_id = pad_id
        self.stop_ids = tuple(dict.fromkeys(stop_ids))
        self.synced = synced

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompts: Sequence[Sequence[int]], n: int, params: SamplingParams) -> list[Completion]:
        """Sample ``n`` completions per prompt in one batch; seeded by ``params.seed`` (global RNG untouched)."""
        device = self.device
        width = max(len(p) for p in prompts)
        rows = [list(p) for p in prompts for _ in range(n)]
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
        was_training = self.model.training
        self.model.eval()
        devices = [device] if device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                torch.manual_seed(params.seed)
                out = self.model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                    temperature=params.temperature, top_p=params.top_p, top_k=0,
                    max_new_tokens=params.max_new_tokens, pad_token_id=self.pad_id,
                    eos_token_id=list(self.stop_ids), synced_gpus=self.synced, output_scores=True,
                    return_dict_in_generate=True,
                )
        finally:
            self.model.train(was_training)
        new = out.sequences[:, width:].cpu()
        logps = torch.stack(out.scores, dim=1).float().log_softmax(-1).cpu() if out.scores else None
        return [self._completion(i // n, new[i], None if logps is None else logps[i]) for i in range(len(rows))]

    def _completion(self, prompt_index: int, row: torch.Tensor, logps: torch.Tensor | None) -> Completion:
        ids = row.tolist()
        end = next((k + 1 for k, t in enumerate(ids) if t in self.stop_ids), None)
        ids = ids[:end] if end is not None else ids
        lp = None
        if logps is not None:
            lp = tuple(float(logps[k, t]) for k, t in enumerate(ids))
        return Completion(prompt_index, tuple(ids), lp, end is not None)
