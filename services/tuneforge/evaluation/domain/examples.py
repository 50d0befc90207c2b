"""Canonical dataset records (the datasets service's Parquet schema) -> evaluation examples.

An example is a plain dict the engine understands (``tuneforge.engine.evaluate.job``):

- ``text``: raw text scored for perplexity (``text`` records);
- ``messages``: a conversation scored on assistant tokens only (chat / instruction records,
  and preference records as prompt + chosen answer);
- ``prompt`` + ``reference``: the conversation before the last assistant turn, and that turn's
  content, for generation metrics (chat / instruction); ``label`` is the record's ``category``
  when the record has one (classification compares generations to the reference otherwise);
- ``prompt`` + ``reference`` for preference records too: the pair's prompt and its chosen answer;
- ``mc_prompt`` + ``choices`` + ``gold``: preference records as a two-way multiple choice
  (chosen vs rejected), in an order fixed by the content so ties cannot favour the gold answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from tuneforge.common.errors import InvalidInput
from tuneforge.common.public_text import echo


def to_example(record: Mapping[str, Any], row: int) -> dict[str, Any]:
    """Convert one canonical record.

    Raises:
        InvalidInput: the record has no usable content (the violation names ``rows[<row>]``).
    """
    kind = record.get("kind")
    if kind == "text" and record.get("text"):
        return {"text": record["text"]}
    if kind in ("chat", "instruction") and record.get("messages"):
        return _chat_example(list(record["messages"]), record.get("category"), row)
    if kind == "preference" and record.get("prompt") and record.get("chosen") is not None:
        return _preference_example(record, row)
    raise InvalidInput.field_error(
        f"rows[{row}]", f"record of kind {echo(kind)} has no text, messages or prompt/chosen to evaluate"
    )


def _chat_example(messages: list[Mapping[str, str]], category: str | None, row: int) -> dict[str, Any]:
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        raise InvalidInput.field_error(f"rows[{row}].messages", "no assistant turn to score or to compare with")
    example: dict[str, Any] = {"messages": msgs[: last + 1], "prompt": msgs[:last], "reference": msgs[last]["content"]}
    if category:
        example["label"] = category
    return example


def _preference_example(record: Mapping[str, Any], row: int) -> dict[str, Any]:
    prompt = [{"role": m["role"], "content": m["content"]} for m in record["prompt"]]
    chosen, rejected = record["chosen"], record.get("rejected")
    # prompt + reference: generation metrics (and METRIC_REWARD_WIN_RATE) answer the pair's prompt.
    example: dict[str, Any] = {"messages": [*prompt, {"role": "assistant", "content": chosen}],
                               "prompt": prompt, "reference": chosen}
    if rejected is not None:
        flip = hashlib.sha256(f"{chosen}\x1f{rejected}".encode()).digest()[0] % 2 == 1
        example.update(
            mc_prompt=prompt,
            choices=[rejected, chosen] if flip else [chosen, rejected],
            gold=1 if flip else 0,
        )
    return example


def to_examples(records: Iterable[Mapping[str, Any]], *, max_samples: int) -> list[dict[str, Any]]:
    """Convert records in order, keeping at most ``max_samples`` (0 = all)."""
    out: list[dict[str, Any]] = []
    for i, record in enumerate(records):
        if max_samples and len(out) >= max_samples:
            break
        out.append(to_example(record, i))
    return out
