"""One evaluation task on one model: load it, then score and generate on a list of examples.

This is what runs in-process or inside a Ray task. Inputs and outputs are plain Python (JSON-able)
so they cross process boundaries; metric arithmetic happens in the service's domain
(``tuneforge.evaluation.domain.scoring``).

Phases run only when a requested metric needs them:

- ``perplexity`` (metrics ``perplexity``, ``forgetting``): token-weighted loss over every example
  with ``text`` or ``messages`` (assistant-only tokens for conversations);
- ``multiple_choice``: option log-likelihoods of examples with ``mc_prompt``/``choices``/``gold``;
- ``generation`` (bleu, rouge, exact_match, token_f1, classification, safety): one completion
  per example with a ``prompt``;
- ``reward_accuracy``: a reward model (a sequence classifier with one output) scores both answers of
  every preference example (``mc_prompt``/``choices``/``gold``); the domain counts the pairs it ranks
  right. A reward model runs this metric only, and this metric needs a reward model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tuneforge.engine.evaluate import generation as gen
from tuneforge.engine.evaluate import loglikelihood, perplexity
from tuneforge.engine.evaluate.chat import encode_chat, render_chat
from tuneforge.engine.evaluate.loading import LoadedModel, load_model, pick_device

log = logging.getLogger(__name__)

PERPLEXITY_METRICS = frozenset({"perplexity", "forgetting"})
GENERATION_METRICS = frozenset({"bleu", "rouge", "exact_match", "token_f1", "classification", "safety",
                                "reward_win_rate"})
REWARD_METRICS = frozenset({"reward_accuracy"})

Progress = Callable[[int, int, str], None]
"""Called with (examples done in this phase, examples in this phase, phase name)."""


def run_task(
    *,
    model_dir: str,
    adapter_dir: str | None,
    examples: Sequence[Mapping[str, Any]],
    metrics: Sequence[str],
    generation: Mapping[str, Any],
    max_length: int = 0,
    stride: int = 0,
    prefer_gpu: bool = True,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Evaluate one model on examples and return the raw outputs the domain scores.

    Args:
        model_dir: local Hugging Face folder (safetensors).
        adapter_dir: local PEFT adapter folder applied on top, or None.
        examples: dicts as built by ``tuneforge.evaluation.domain.examples``.
        metrics: lower-case metric names (``perplexity``, ``bleu``, ...).
        generation: ``GenerationSettings`` fields.
        max_length: perplexity window (0: the model's context).
        stride: perplexity stride (0: half the window).
        prefer_gpu: use CUDA when available.
        progress: see ``Progress``; it may raise ``Cancelled`` to stop the task.

    Returns:
        ``{"device", "perplexity"?, "multiple_choice"?, "generations"?}``.
    """
    device = pick_device(prefer_gpu)
    loaded = load_model(Path(model_dir), adapter_dir=Path(adapter_dir) if adapter_dir else None, device=device)
    wanted = set(metrics)
    _check_model_kind(loaded, wanted)
    out: dict[str, Any] = {"device": device}
    report = progress or (lambda done, total, phase: None)
    if wanted & REWARD_METRICS:
        out["reward_pairs"] = _reward_pairs(loaded, examples, max_length, report)
    if wanted & PERPLEXITY_METRICS:
        out["perplexity"] = _perplexity(loaded, examples, max_length, stride, report)
    if "multiple_choice" in wanted:
        out["multiple_choice"] = _multiple_choice(loaded, examples, max_length, report)
    if wanted & GENERATION_METRICS:
        out["generations"] = _generations(loaded, examples, generation, report)
    return out


def _perplexity(
    loaded: LoadedModel, examples: Sequence[Mapping[str, Any]], max_length: int, stride: int, report: Progress
) -> dict[str, Any]:
    encoded, kept = [], []
    for i, ex in enumerate(examples):
        if ex.get("messages"):
            ids, mask = encode_chat(loaded.tokenizer, ex["messages"])
            encoded.append(perplexity.Encoded(ids, mask))
        elif ex.get("text"):
            encoded.append(perplexity.encode_texts(loaded.tokenizer, [ex["text"]])[0])
        else:
            continue
        kept.append(i)
    window = min(max_length or loaded.max_length, loaded.max_length)
    result = perplexity.perplexity(
        loaded.model, encoded, max_length=window, stride=stride or max(1, window // 2), pad_id=loaded.pad_id,
        progress=lambda d, t: report(d, t, "perplexity"),
    )
    return {
        "nll_sum": result.nll_sum,
        "tokens": result.tokens,
        "examples": len(kept),
        "per_example": [{"index": i, "nll": n, "tokens": c} for i, (n, c) in zip(kept, result.per_example, strict=True)],
    }


def _multiple_choice(
    loaded: LoadedModel, examples: Sequence[Mapping[str, Any]], max_length: int, report: Progress
) -> dict[str, Any]:
    picked = [ex for ex in examples if ex.get("choices") and ex.get("mc_prompt") is not None]
    # Options are scored as the assistant's answer: context = the prompt with an open assistant turn.
    items = [(render_chat(loaded.tokenizer, ex["mc_prompt"], add_generation_prompt=True), ex["choices"]) for ex in picked]
    lls = loglikelihood.multiple_choice_loglikelihoods(
        loaded.model, loaded.tokenizer, items, max_length=min(max_length or loaded.max_length, loaded.max_length),
        progress=lambda d, t: report(d, t, "multiple_choice"),
    )
    return {"loglikelihoods": lls, "choices": [ex["choices"] for ex in picked], "gold": [ex["gold"] for ex in picked]}


def _generations(
    loaded: LoadedModel, examples: Sequence[Mapping[str, Any]], generation: Mapping[str, Any], report: Progress
) -> list[dict[str, Any]]:
    settings = gen.GenerationSettings(**{**generation, "stop": tuple(generation.get("stop", ()))})
    picked = [(i, ex) for i, ex in enumerate(examples) if ex.get("prompt")]
    outputs = gen.generate(
        loaded.model, loaded.tokenizer, [ex["prompt"] for _, ex in picked], settings,
        progress=lambda d, t: report(d, t, "generation"),
    )
    return [
        {
            "index": i,
            "prompt": ex["prompt"],
            "reference": ex.get("reference", ""),
            "label": ex.get("label"),
            "text": g.text,
            "new_tokens": g.new_tokens,
            "stopped_by": g.stopped_by,
        }
        for (i, ex), g in zip(picked, outputs, strict=True)
    ]


def _check_model_kind(loaded: LoadedModel, wanted: set[str]) -> None:
    """Reward models score text; they do not generate or have token log-probs (and the reverse)."""
    from tuneforge.common.errors import InvalidInput

    if loaded.reward_model and wanted - REWARD_METRICS:
        raise InvalidInput.field_error(
            "metrics", f"the model is a reward model (a sequence classifier): it computes METRIC_REWARD_ACCURACY "
            f"only, not {', '.join(sorted(m.upper() for m in wanted - REWARD_METRICS))}; evaluate those on a "
            "causal language model")
    if not loaded.reward_model and wanted & REWARD_METRICS:
        raise InvalidInput.field_error(
            "metrics", "METRIC_REWARD_ACCURACY needs a reward model: name a checkpoint of a job with "
            "OBJECTIVE_REWARD_MODEL (its manifest's head is MODEL_HEAD_REWARD_MODEL)")


def _reward_pairs(
    loaded: LoadedModel, examples: Sequence[Mapping[str, Any]], max_length: int, report: Progress
) -> dict[str, Any]:
    """The reward of the gold (chosen) and the other (rejected) answer of every preference example."""
    import torch

    picked = [ex for ex in examples if ex.get("choices") and ex.get("mc_prompt") is not None]
    window = min(max_length or loaded.max_length, loaded.max_length)
    chosen, rejected = [], []
    for done, ex in enumerate(picked):
        scores = []
        for answer in ex["choices"]:
            text = render_chat(loaded.tokenizer, [*ex["mc_prompt"], {"role": "assistant", "content": answer}])
            ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"][-window:]
            with torch.no_grad():
                out = loaded.model(input_ids=torch.tensor([ids], device=loaded.model.device))
            scores.append(float(out.logits[0, 0]))
        chosen.append(scores[ex["gold"]])
        rejected.append(scores[1 - ex["gold"]])
        report(done + 1, len(picked), "reward_accuracy")
    return {"chosen": chosen, "rejected": rejected}
