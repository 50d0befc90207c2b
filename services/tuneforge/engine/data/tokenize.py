"""Canonical records to token ids and labels: chat templates, loss masks, DPO pairs, pre-training.

Public API:
    Example: one training row: ``input_ids``, ``labels`` (-100 = no loss), ``position_ids``,
        ``seq_lens`` (lengths of the samples packed in the row; one entry when unpacked),
        ``rows`` (source row ids such as ``train[12]``, for error messages), ``task``.
    PreferencePair: ``chosen`` and ``rejected`` Examples of one preference row (labels only on the
        completion), ``row``.
    ensure_chat_template(tokenizer) -> bool: sets a ChatML template when the tokenizer has none
        (adding <|im_start|>/<|im_end|> as special tokens if missing); True if the vocabulary grew.
    ensure_pad_token(tokenizer) -> bool: makes pad a token distinct from eos (reusing a pad-like token
        of the vocabulary, else adding <|pad|>); True if the vocabulary grew (resize the embeddings!).
    check_pad_token(tokenizer): raises FailedPrecondition when pad is missing or equals eos.
    tokenize_sft(records, tokenizer, *, max_len, assistant_only_loss=True, source="train")
        chat/instruction records through the chat template; labels only on assistant turns
        (their end-of-turn token included) unless ``assistant_only_loss=False``; text records are
        learned whole, EOS appended. Right-truncated to ``max_len``.
    tokenize_preference(records, tokenizer, *, max_len, source="train") -> list[PreferencePair]
    tokenize_pretrain(records, tokenizer, *, max_len, source="train") -> list[Example]
        text (or chat, rendered) documents joined with EOS and cut into ``max_len`` rows; position
        ids restart at each document and the first token of each document is not a target.

Masks come from character offsets of the rendered conversation (``return_offsets_mapping``), so
a fast tokenizer is required; a template that rewrites earlier turns when a later turn is added
(so that the prefix property fails) is rejected with a clear error rather than mis-masked.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tuneforge.common.errors import FailedPrecondition, FieldViolation, InvalidInput
from tuneforge.engine.data.records import Message, Record, RecordKind

IGNORE_INDEX = -100
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_PAD_CANDIDATES = ("<|pad|>", "<pad>", "[PAD]", "<|finetune_right_pad_id|>", "<|padding|>")


@dataclass
class Example:
    """One training row (possibly several packed samples)."""

    input_ids: list[int]
    labels: list[int]
    rows: tuple[str, ...]
    position_ids: list[int] = field(default_factory=list)
    seq_lens: tuple[int, ...] = ()
    task: str | None = None

    def __post_init__(self) -> None:
        if not self.position_ids:
            self.position_ids = list(range(len(self.input_ids)))
        if not self.seq_lens:
            self.seq_lens = (len(self.input_ids),)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_targets(self) -> int:
        """Tokens that contribute to the loss (a label at a sample's first position never does)."""
        return sum(
            1 for i, lab in enumerate(self.labels) if lab != IGNORE_INDEX and self.position_ids[i] != 0
        )


@dataclass
class PreferencePair:
    """Chosen and rejected completions of one prompt."""

    chosen: Example
    rejected: Example
    row: str


# ------------------------------------------------------------------------------ tokenizer fixes


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give the tokenizer a ChatML template if it has none; returns True if tokens were added."""
    if getattr(tokenizer, "chat_template", None):
        return False
    missing = [t for t in ("<|im_start|>", "<|im_end|>") if t not in tokenizer.get_vocab()]
    added = tokenizer.add_special_tokens({"additional_special_tokens": missing}) if missing else 0
    tokenizer.chat_template = CHATML_TEMPLATE
    return added > 0


def ensure_pad_token(tokenizer: Any) -> bool:
    """Make the pad token exist and differ from eos; returns True if the vocabulary grew."""
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    vocab = tokenizer.get_vocab()
    for candidate in _PAD_CANDIDATES:
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            return False
    # An unknown-token that is neither eos nor bos and never rendered by the chat template is a safe
    # pad (pad positions are masked out of attention and labels): no new row in the embeddings, so
    # adapters stay small and load onto the unmodified base (e.g. SmolLM2: <|endoftext|>).
    unk, template = tokenizer.unk_token, getattr(tokenizer, "chat_template", None) or ""
    if unk and tokenizer.unk_token_id not in (tokenizer.eos_token_id, tokenizer.bos_token_id) and unk not in template:
        tokenizer.pad_token = unk
        return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return True


def check_pad_token(tokenizer: Any) -> None:
    """Raise unless pad exists and differs from eos (pad == eos silently drops EOS from labels)."""
    if tokenizer.eos_token_id is None:
        raise FailedPrecondition("the tokenizer has no eos token; set eos_token in tokenizer_config.json")
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise FailedPrecondition(
            f"the tokenizer's pad token ({tokenizer.pad_token!r}) is missing or equal to eos "
            f"({tokenizer.eos_token!r}); call ensure_pad_token(tokenizer) and resize the model embeddings"
        )


def _require_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise FailedPrecondition(
            "the tokenizer has no chat template; call ensure_chat_template(tokenizer) when loading "
            "(load_model_and_tokenizer does) and resize the embeddings if it added tokens"
        )


def _require_fast(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise FailedPrecondition(
            f"{type(tokenizer).__name__} is not a fast tokenizer; loss masks need offset mappings: "
            "ship a tokenizer.json with the model"
        )


# ------------------------------------------------------------------------------ chat rendering


def _render(tokenizer: Any, messages: Sequence[Message], *, generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(
        [m.to_dict() for m in messages], tokenize=False, add_generation_prompt=generation_prompt
    )


def _assistant_spans(
    tokenizer: Any, messages: Sequence[Message], row: str
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of each assistant turn (end-of-turn included)."""
    full = _render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m.role != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1])
        if not (through.startswith(before) and full.startswith(through)):
            raise InvalidInput.field_error(
                f"{row}.messages[{i}]",
                "the chat template renders earlier turns differently once later turns are added, so "
                "assistant tokens cannot be located; use a template without history rewriting",
            )
        # Whitespace after the end-of-turn token is formatting, not something to learn.
        spans.append((len(before), len(through.rstrip())))
    return full, spans


def _encode_with_labels(
    tokenizer: Any, text: str, spans: Sequence[tuple[int, int]]
) -> tuple[list[int], list[int]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for k, (start, _end) in enumerate(enc["offset_mapping"]):
        if any(s <= start < e for s, e in spans):
            labels[k] = ids[k]
    return ids, labels


def _chat_example(tokenizer: Any, messages: Sequence[Message], row: str, assistant_only: bool) -> Example:
    text, spans = _assistant_spans(tokenizer, messages, row)
    ids, labels = _encode_with_labels(tokenizer, text, spans if assistant_only else [(0, len(text))])
    return Example(ids, labels, (row,))


def _text_example(tokenizer: Any, text: str, row: str) -> Example:
    ids = [*list(tokenizer(text, add_special_tokens=False)["input_ids"]), tokenizer.eos_token_id]
    return Example(ids, list(ids), (row,))


def _truncate(ex: Example, max_len: int) -> Example:
    if len(ex) <= max_len:
        return ex
    return Example(ex.input_ids[:max_len], ex.labels[:max_len], ex.rows, task=ex.task)


def tokenize_sft(
    records: Sequence[Record],
    tokenizer: Any,
    *,
    max_len: int,
    assistant_only_loss: bool = True,
    source: str = "train",
) -> list[Example]:
    """Tokenize chat/instruction/text records for supervised fine-tuning.

    Args:
        records: canonical records (kind chat, instruction or text).
        tokenizer: a fast Hugging Face tokenizer with a chat template and pad != eos.
        max_len: rows are right-truncated to this many tokens.
        assistant_only_loss: learn only assistant turns (True) or every token (False).
        source: name used in row ids (``train[3]``).

    Raises:
        InvalidInput: records of the wrong kind, or chat records without an assistant turn while
            ``assistant_only_loss`` is on (every such row named).
        FailedPrecondition: slow tokenizer, or pad missing/equal to eos.
    """
    _require_fast(tokenizer)
    check_pad_token(tokenizer)
    _require_template(tokenizer)
    problems, out = [], []
    for i, rec in enumerate(records):
        row = f"{source}[{i}]"
        if rec.kind is RecordKind.TEXT:
            ex = _text_example(tokenizer, rec.text or "", row)
        elif rec.kind in (RecordKind.CHAT, RecordKind.INSTRUCTION):
            if assistant_only_loss and not any(m.role == "assistant" for m in rec.messages or ()):
                problems.append(
                    FieldViolation(
                        f"{row}.messages",
                        "has no assistant turn to learn from; add one or set data.assistant_only_loss: false",
                    )
                )
                continue
            ex = _chat_example(tokenizer, rec.messages or (), row, assistant_only_loss)
        else:
            problems.append(FieldViolation(f"{row}.kind", "preference records need objective dpo"))
            continue
        ex.task = rec.task
        out.append(_truncate(ex, max_len))
    if problems:
        raise InvalidInput.of(problems[:50], what=f"{source} records for SFT")
    return out


def _preference_side(
    tokenizer: Any,
    prompt_text: str,
    completion: Sequence[Message],
    prompt: Sequence[Message],
    row: str,
    max_len: int,
) -> Example:
    text = _render(tokenizer, [*prompt, *completion])
    if not text.startswith(prompt_text):
        raise InvalidInput.field_error(
            f"{row}.prompt",
            "the chat template does not render the prompt as a "
            "prefix of prompt + completion; use a simpler template",
        )
    ids, labels = _encode_with_labels(tokenizer, text, [(len(prompt_text), len(text.rstrip()))])
    if len(ids) > max_len:  # keep the completion: drop the start of the prompt first
        n_prompt = next((k for k, lab in enumerate(labels) if lab != IGNORE_INDEX), len(ids))
        cut = min(len(ids) - max_len, max(n_prompt - max_len // 2, 0))
        ids, labels = ids[cut:][:max_len], labels[cut:][:max_len]
    return Example(ids, labels, (row,))


def tokenize_preference(
    records: Sequence[Record], tokenizer: Any, *, max_len: int, source: str = "train"
) -> list[PreferencePair]:
    """Tokenize preference records for DPO: prompt + chosen and prompt + rejected, labels on completions.

    Over-long pairs lose the start of the prompt first (down to half of ``max_len``), then the end of
    the completion.

    Raises:
        InvalidInput: non-preference records (every one named).
    """
    _require_fast(tokenizer)
    check_pad_token(tokenizer)
    _require_template(tokenizer)
    problems, out = [], []
    for i, rec in enumerate(records):
        row = f"{source}[{i}]"
        if rec.kind is not RecordKind.PREFERENCE:
            problems.append(
                FieldViolation(
                    f"{row}.kind",
                    f"is {rec.kind.value}; objective dpo needs preference records (prompt, chosen, rejected)",
                )
            )
            continue
        prompt = rec.prompt or ()
        prompt_text = _render(tokenizer, prompt, generation_prompt=True)
        chosen = _preference_side(tokenizer, prompt_text, rec.chosen or (), prompt, row, max_len)
        rejected = _preference_side(tokenizer, prompt_text, rec.rejected or (), prompt, row, max_len)
        chosen.task = rejected.task = rec.task
        out.append(PreferencePair(chosen, rejected, row))
    if problems:
        raise InvalidInput.of(problems[:50], what=f"{source} records for DPO")
    return out


def tokenize_labelled(
    records: Sequence[Record], tokenizer: Any, *, max_len: int, source: str = "train"
) -> list[dict[str, Any]]:
    """Tokenize labelled completions for KTO: rows of ``prompt_ids``, ``completion_ids``, ``desirable``.

    The prompt is rendered with the chat template's generation prompt and the completion as the
    assistant's answer (as for DPO); over-long rows lose the start of the prompt first.

    Raises:
        InvalidInput: records of another kind, or whose completion is truncated away (every one named).
    """
    _require_fast(tokenizer)
    check_pad_token(tokenizer)
    _require_template(tokenizer)
    problems, out = [], []
    for i, rec in enumerate(records):
        row = f"{source}[{i}]"
        if rec.kind is not RecordKind.LABELLED:
            problems.append(FieldViolation(f"{row}.kind", f"is {rec.kind.value}; objective kto needs labelled "
                                           "records (prompt, completion, label)"))
            continue
        prompt = rec.prompt or ()
        prompt_text = _render(tokenizer, prompt, generation_prompt=True)
        ex = _preference_side(tokenizer, prompt_text, rec.completion or (), prompt, row, max_len)
        marked = [k for k, lab in enumerate(ex.labels) if lab != IGNORE_INDEX]
        if not marked:
            problems.append(FieldViolation(f"{row}.completion", f"is empty after truncation to {max_len} tokens; "
                                           "raise max_seq_length or shorten the prompt"))
            continue
        out.append({"prompt_ids": list(ex.input_ids[: marked[0]]),
                    "completion_ids": list(ex.input_ids[marked[0] : marked[-1] + 1]),
                    "desirable": bool(rec.label), "rows": (row,)})
    if problems:
        raise InvalidInput.of(problems[:50], what=f"{source} records for KTO")
    return out


def tokenize_pretrain(
    records: Sequence[Record], tokenizer: Any, *, max_len: int, source: str = "train"
) -> list[Example]:
    """Concatenate documents (EOS after each) and cut them into rows of ``max_len`` tokens.

    Text records are used as is; chat/instruction records are rendered with the chat template;
    preference records are refused (InvalidInput naming the rows).
    Position ids restart at each document start, so with ``use_cache=False`` and no attention mask
    the model attends within documents only (see ``data.packing``).
    """
    check_pad_token(tokenizer)
    bad = [
        FieldViolation(f"{source}[{i}].kind", "preference records need objective dpo")
        for i, rec in enumerate(records)
        if rec.kind is RecordKind.PREFERENCE
    ]
    if bad:
        raise InvalidInput.of(bad[:50], what=f"{source} records for pre-training")
    stream: list[int] = []
    starts: list[int] = []
    for rec in records:
        text = rec.text if rec.kind is RecordKind.TEXT else _render(tokenizer, rec.messages or ())
        starts.append(len(stream))
        stream.extend(tokenizer(text or "", add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    rows: list[Example] = []
    boundaries = set(starts)
    for begin in range(0, len(stream), max_len):
        chunk = stream[begin : begin + max_len]
        cuts = [k for k in range(len(chunk)) if k == 0 or begin + k in boundaries] + [len(chunk)]
        seq_lens = tuple(b - a for a, b in itertools.pairwise(cuts))
        positions = [p for n in seq_lens for p in range(n)]
        labels = [IGNORE_INDEX if p == 0 else t for p, t in zip(positions, chunk, strict=True)]
        rows.append(Example(chunk, labels, (f"{source}[chunk {len(rows)}]",), positions, seq_lens))
    return rows


def tokenize_prompts(
    records: Sequence[Record], tokenizer: Any, *, max_prompt_len: int, source: str = "train"
) -> list[dict[str, Any]]:
    """Tokenize prompt-only records for online RL: the prompt through the chat template with an open
    assistant turn, left-truncated to ``max_prompt_len`` tokens.

    Returns:
        Rows ``{"prompt_ids", "prompt_text", "answer", "rows"}``.

    Raises:
        InvalidInput: records that are not prompt-only (every one named).
    """
    _require_fast(tokenizer)
    check_pad_token(tokenizer)
    _require_template(tokenizer)
    problems, out = [], []
    for i, rec in enumerate(records):
        row = f"{source}[{i}]"
        if rec.kind is not RecordKind.PROMPT:
            problems.append(FieldViolation(f"{row}.kind", f"is {rec.kind.value}; online RL (grpo, rloo, ppo) needs "
                                           "prompt-only records (a prompt and an optional answer)"))
            continue
        text = _render(tokenizer, rec.prompt or (), generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][-max_prompt_len:]
        out.append({"prompt_ids": ids, "prompt_text": text, "answer": rec.answer, "rows": (row,)})
    if problems:
        raise InvalidInput.of(problems[:50], what=f"{source} records for online RL")
    return out
