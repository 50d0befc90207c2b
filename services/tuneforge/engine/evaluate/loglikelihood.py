"""Log-likelihood of continuations given contexts, as lm-evaluation-harness ``loglikelihood``.

For each ``(context, continuation)`` request the harness (``HFLM``):

1. moves trailing whitespace of the context onto the continuation;
2. encodes ``context + continuation`` and ``context`` without special tokens and takes the
   continuation's tokens as the whole encoding past the context's length;
3. with an empty context, uses the prefix token (EOS/BOS) as context;
4. feeds ``(context_enc + continuation_enc)[-(max_length + 1):][:-1]`` and sums the
   log-probabilities of the continuation tokens; ``is_greedy`` says whether each continuation
   token is the argmax.

Multiple-choice scoring asks one request per option and compares the sums
(``tuneforge.evaluation.domain.metrics.multiple_choice`` turns them into acc / acc_norm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tuneforge.engine.evaluate.perplexity import ProgressFn


@dataclass(frozen=True)
class LogLikelihood:
    """Summed log-probability of a continuation and whether greedy decoding would produce it."""

    logprob: float
    is_greedy: bool
    tokens: int


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """The harness's ``_encode_pair``: context and continuation token ids."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = list(tokenizer(context + continuation, add_special_tokens=False)["input_ids"])
    if not context:
        return [_prefix_token(tokenizer)], whole
    context_enc = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    return context_enc, whole[len(context_enc) :]


def _prefix_token(tokenizer: Any) -> int:
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("tokenizer has neither BOS nor EOS token to use as an empty context")


def loglikelihoods(
    model: Any,
    tokenizer: Any,
    requests: Sequence[tuple[str, str]],
    *,
    max_length: int,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
) -> list[LogLikelihood]:
    """Score ``(context, continuation)`` requests in batches; results in request order."""
    import torch

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    prepared = []
    for context, continuation in requests:
        ctx, cont = encode_pair(tokenizer, context, continuation)
        inp = (ctx + cont)[-(max_length + 1) :][:-1]
        prepared.append((inp, cont))
    order = sorted(range(len(prepared)), key=lambda k: -len(prepared[k][0]))
    out: list[LogLikelihood | None] = [None] * len(prepared)
    device = next(model.parameters()).device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            for k, ll in zip(idx, _score(model, [prepared[k] for k in idx], pad_id, device), strict=True):
                out[k] = ll
            if progress is not None:
                progress(min(start + batch_size, len(order)), len(order))
    return [o for o in out if o is not None]


def _score(model: Any, batch: Sequence[tuple[list[int], list[int]]], pad_id: int, device: Any) -> list[LogLikelihood]:
    import torch

    width = max(len(inp) for inp, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(batch), width), dtype=torch.long)
    for r, (inp, _) in enumerate(batch):
        ids[r, : len(inp)] = torch.tensor(inp)
        attn[r, : len(inp)] = 1
    logprobs = torch.log_softmax(model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float(), -1)
    results = []
    for r, (inp, cont) in enumerate(batch):
        # The last len(cont) positions of the input predict the continuation tokens.
        rows = logprobs[r, len(inp) - len(cont) : len(inp)]
        target = torch.tensor(cont, device=rows.device)
        picked = rows.gather(1, target.unsqueeze(1)).squeeze(1)
        greedy = bool((rows.argmax(-1) == target).all())
        results.append(LogLikelihood(float(picked.sum()), greedy, len(cont)))
    return results


def multiple_choice_loglikelihoods(
    model: Any,
    tokenizer: Any,
    items: Sequence[tuple[str, Sequence[str]]],
    *,
    max_length: int,
    batch_size: int = 8,
    progress: ProgressFn | None = None,
) -> list[list[float]]:
    """Per item ``(context, options)``, the summed log-likelihood of each option."""
    requests = [(ctx, opt) for ctx, opts in items for opt in opts]
    lls = loglikelihoods(model, tokenizer, requests, max_length=max_length, batch_size=batch_size, progress=progress)
    out, k = [], 0
    for _, opts in items:
        out.append([ll.logprob for ll in lls[k : k + len(opts)]])
        k += len(opts)
    return out
