"""Token-weighted perplexity with a sliding window, batched.

The window follows the Hugging Face perplexity guide ("Perplexity of fixed-length models"): a
text longer than ``max_length`` is read in windows that start every ``stride`` tokens; each window
scores only the tokens not scored by the previous one, with the rest of the window as context.
Losses are summed per token over every text and divided by the number of scored tokens
(token-weighted), so long texts weigh as much as their tokens, not as one example.

Windows of all texts are batched (right padding; a causal model's real tokens never attend to
the pads after them), which is what makes this faster than a one-text-at-a-time loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneforge.common.errors import InvalidInput

ProgressFn = Callable[[int, int], None]
"""Called with (units done, units total) after each batch; it may raise ``Cancelled``."""


@dataclass(frozen=True)
class Encoded:
    """One text as token ids and, per token, whether it is scored (assistant-only masks)."""

    ids: list[int]
    scored: list[bool]


@dataclass(frozen=True)
class _Window:
    example: int
    ids: list[int]
    targets: list[bool]  # per position: is this token a target (it is predicted from the ones before)


@dataclass
class PerplexityResult:
    """Summed negative log-likelihood and scored-token count, overall and per example."""

    nll_sum: float = 0.0
    tokens: int = 0
    per_example: list[tuple[float, int]] = field(default_factory=list)

    @property
    def mean_loss(self) -> float:
        """Mean negative log-likelihood per scored token (nats)."""
        return self.nll_sum / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        """``exp(mean_loss)``."""
        return math.exp(self.mean_loss) if self.tokens else float("nan")


def encode_texts(tokenizer: Any, texts: Sequence[str]) -> list[Encoded]:
    """Tokenize plain texts (special tokens as the tokenizer adds them); every token is scored."""
    out = []
    for text in texts:
        ids = list(tokenizer(text)["input_ids"])
        out.append(Encoded(ids, [True] * len(ids)))
    return out


def sliding_windows(enc: Encoded, example: int, max_length: int, stride: int) -> list[_Window]:
    """Split one encoded text into the HF guide's windows (``stride`` <= ``max_length``)."""
    if not 0 < stride <= max_length:
        raise InvalidInput.field_error(
            "stride", f"{stride} must be in 1..max_length ({max_length}): windows would skip tokens"
        )
    n = len(enc.ids)
    windows, prev_end = [], 0
    for begin in range(0, max(n, 1), stride):
        end = min(begin + max_length, n)
        trg_len = end - prev_end  # tokens not scored by the previous window
        ids = enc.ids[begin:end]
        first_target = len(ids) - trg_len
        targets = [j >= first_target and enc.scored[begin + j] for j in range(len(ids))]
        windows.append(_Window(example, ids, targets))
        prev_end = end
        if end == n:
            break
    return windows


def perplexity(
    model: Any,
    encoded: Sequence[Encoded],
    *,
    max_length: int,
    stride: int | None = None,
    batch_size: int = 8,
    pad_id: int = 0,
    progress: ProgressFn | None = None,
) -> PerplexityResult:
    """Token-weighted loss and perplexity of ``model`` on encoded texts.

    Args:
        model: a causal LM (``model(input_ids, attention_mask).logits``), in eval mode.
        encoded: texts as ``Encoded`` (``encode_texts`` or ``chat.encode_chat``).
        max_length: window length in tokens (at most the model's context).
        stride: window step; ``max_length`` (no overlap) when None.
        batch_size: windows per forward pass (1 gives the naive loop).
        pad_id: token id used for padding (never scored).
        progress: called after each batch with (windows done, windows total).

    Returns:
        Summed NLL and scored-token count, overall and per example.
    """
    import torch

    windows = [w for i, e in enumerate(encoded) for w in sliding_windows(e, i, max_length, stride or max_length)]
    # Longest first: similar lengths share a batch, so little padding is computed.
    order = sorted(range(len(windows)), key=lambda k: -len(windows[k].ids))
    result = PerplexityResult(per_example=[(0.0, 0)] * len(encoded))
    per = [[0.0, 0] for _ in encoded]
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = [windows[k] for k in order[start : start + batch_size]]
            nll, counts = _score_batch(model, batch, pad_id, device)
            for w, loss, c in zip(batch, nll, counts, strict=True):
                per[w.example][0] += loss
                per[w.example][1] += c
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
    result.per_example = [(float(a), int(b)) for a, b in per]
    result.nll_sum = float(sum(a for a, _ in per))
    result.tokens = int(sum(b for _, b in per))
    return result


def _score_batch(model: Any, batch: Sequence[_Window], pad_id: int, device: Any) -> tuple[list[float], list[int]]:
    """Summed NLL of the target tokens of each window, and how many there were."""
    import torch
    import torch.nn.functional as F

    width = max(len(w.ids) for w in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    targets = torch.zeros((len(batch), width), dtype=torch.bool)
    for r, w in enumerate(batch):
        ids[r, : len(w.ids)] = torch.tensor(w.ids)
        attn[r, : len(w.ids)] = 1
        targets[r, : len(w.ids)] = torch.tensor(w.targets)
    ids, attn, targets = ids.to(device), attn.to(device), targets.to(device)
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    # Token j is predicted from logits at j-1: a window's first token is never a target.
    token_nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    mask = targets[:, 1:]
    sums = (token_nll * mask).sum(dim=1)
    return sums.tolist(), mask.sum(dim=1).tolist()
