"""Batched generation: left padding, chat template, greedy or seeded sampling, stop sequences.

Prompts are plain strings (used as they are) or chat conversations (rendered with the
tokenizer's chat template and an open assistant turn). Batches are left-padded so every row's
next token sits in the last column. A row stops at the model's end-of-turn / EOS tokens, at
``max_new_tokens``, or when its text contains a stop sequence (the text is cut before it).

Greedy results do not depend on the batch size. Sampling is reproducible for the same seed and
batch size: each batch reseeds the generator with ``seed + batch_index``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneforge.common.errors import InvalidInput
from tuneforge.engine.evaluate.chat import render_chat
from tuneforge.engine.evaluate.perplexity import ProgressFn

Prompt = str | Sequence[Mapping[str, str]]


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings (mirrors the API's ``GenerationConfig``)."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    batch_size: int = 8
    max_prompt_tokens: int | None = None  # left-truncate longer prompts; None: model context - new tokens

    def check(self) -> None:
        """Raise ``InvalidInput`` listing every bad field."""
        problems = []
        if self.max_new_tokens < 1:
            problems.append(("generation.max_new_tokens", "must be at least 1"))
        if self.batch_size < 1:
            problems.append(("generation.batch_size", "must be at least 1"))
        if self.do_sample and self.temperature <= 0:
            problems.append(("generation.temperature", "must be > 0 when sampling (or set do_sample=false)"))
        if not 0 < self.top_p <= 1:
            problems.append(("generation.top_p", "must be in (0, 1]"))
        if problems:
            from tuneforge.common.errors import FieldViolation

            raise InvalidInput.of([FieldViolation(f, d) for f, d in problems], "generation config")


@dataclass(frozen=True)
class Generation:
    """One generated completion."""

    prompt: str
    text: str
    new_tokens: int
    stopped_by: str = field(default="")  # "stop_sequence", "eos" or "length"


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """A prompt as model input text (chat prompts through the chat template)."""
    if isinstance(prompt, str):
        return prompt
    return render_chat(tokenizer, prompt, add_generation_prompt=True)


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop sequence; return it and whether one was found."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    settings: GenerationSettings,
    *,
    progress: ProgressFn | None = None,
) -> list[Generation]:
    """Generate one completion per prompt, in batches of ``settings.batch_size``."""
    import torch

    settings.check()
    texts = [render_prompt(tokenizer, p) for p in prompts]
    out: list[Generation] = []
    for b, start in enumerate(range(0, len(texts), settings.batch_size)):
        chunk = texts[start : start + settings.batch_size]
        chat = [not isinstance(p, str) for p in prompts[start : start + settings.batch_size]]
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(settings.seed + b)
            out.extend(_generate_batch(model, tokenizer, chunk, all(chat), settings))
        if progress is not None:
            progress(len(out), len(texts))
    return out


def _generate_batch(
    model: Any, tokenizer: Any, texts: Sequence[str], chat: bool, settings: GenerationSettings
) -> list[Generation]:
    import torch

    limit = settings.max_prompt_tokens or max(8, _context(model) - settings.max_new_tokens)
    old_side, old_trunc = tokenizer.padding_side, tokenizer.truncation_side
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    try:
        # Rendered chat already holds the template's special tokens.
        enc = tokenizer(
            list(texts), return_tensors="pt", padding=True, truncation=True, max_length=limit,
            add_special_tokens=not chat,
        ).to(model.device)
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = old_side, old_trunc
    kwargs: dict[str, Any] = {"max_new_tokens": settings.max_new_tokens, "do_sample": settings.do_sample}
    if settings.do_sample:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    if settings.stop:
        kwargs["stopping_criteria"] = _stop_criteria(tokenizer, enc["input_ids"].shape[1], settings.stop)
    with torch.inference_mode():
        seqs = model.generate(**enc, pad_token_id=_pad_id(tokenizer, model), **kwargs)
    new = seqs[:, enc["input_ids"].shape[1] :]
    return [_finish(tokenizer, t, row, settings) for t, row in zip(texts, new, strict=True)]


def _finish(tokenizer: Any, prompt: str, row: Any, settings: GenerationSettings) -> Generation:
    ids = row.tolist()
    pad = tokenizer.pad_token_id
    while ids and pad is not None and ids[-1] == pad:
        ids.pop()
    text, stopped = cut_at_stop(tokenizer.decode(ids, skip_special_tokens=True), settings.stop)
    reason = "stop_sequence" if stopped else ("length" if len(ids) >= settings.max_new_tokens else "eos")
    return Generation(prompt, text, len(ids), reason)


def _context(model: Any) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048) or 2048)


def _pad_id(tokenizer: Any, model: Any) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    eos = model.generation_config.eos_token_id
    return int(eos[0] if isinstance(eos, list) else eos)


def _stop_criteria(tokenizer: Any, prompt_len: int, stop: Sequence[str]) -> Any:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _StopOnText(StoppingCriteria):
        # Per-row: a row is done once its decoded new text contains a stop sequence.
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            texts = tokenizer.batch_decode(input_ids[:, prompt_len:], skip_special_tokens=True)
            return torch.tensor([any(s in t for s in stop) for t in texts], device=input_ids.device)

    return StoppingCriteriaList([_StopOnText()])
