"""Chat rendering with assistant-only token masks (the evaluation side's adapter).

Adapter note: engine-core owns chat templating and assistant-only masking for training
(``tuneforge.engine.data``). Evaluation needs only "which tokens of a rendered conversation are
the assistant's", so this module derives it the same way (render with the tokenizer's own chat
template, then map character spans to tokens through offsets) without depending on the training
data pipeline. Swap ``encode_chat`` for engine-core's masker if the two must ever be shared.

Assistant spans cover each assistant message's content and the template's end-of-turn text (what
the model must learn to emit), never the ``<|im_start|>assistant`` header.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tuneforge.common.errors import InvalidInput

Message = Mapping[str, str]


def render_chat(tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool = False) -> str:
    """Render messages with the tokenizer's chat template as text.

    Raises:
        InvalidInput: the tokenizer has no chat template.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidInput.field_error(
            "model.tokenizer.chat_template",
            "the tokenizer has no chat template: evaluate chat data with a chat model or plain text data",
        )
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return str(text)


def assistant_spans(tokenizer: Any, messages: Sequence[Message]) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and find the character spans of assistant turns.

    Returns:
        The rendered text and ``(start, end)`` character spans, one per assistant message.

    Raises:
        InvalidInput: the template is not prefix-stable (rendering a prefix of the conversation
            does not give a prefix of the whole text), so spans cannot be located.
    """
    text = render_chat(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        head = render_chat(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render_chat(tokenizer, messages[: i + 1])
        if not (text.startswith(head) and text.startswith(upto) and len(upto) >= len(head)):
            raise InvalidInput.field_error(
                f"messages[{i}]",
                "the chat template does not render conversations prefix-stably, so assistant tokens "
                "cannot be located: use a template such as ChatML",
            )
        spans.append((len(head), len(upto)))
    return text, spans


def encode_chat(tokenizer: Any, messages: Sequence[Message]) -> tuple[list[int], list[bool]]:
    """Token ids of a rendered conversation and, per token, whether it is an assistant token.

    Raises:
        InvalidInput: the conversation has no assistant message.
    """
    text, spans = assistant_spans(tokenizer, messages)
    if not spans:
        raise InvalidInput.field_error(
            "messages", "no assistant message: assistant-only scoring needs at least one assistant turn"
        )
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [any(s <= start < e for s, e in spans) for start, _end in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask
