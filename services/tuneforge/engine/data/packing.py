"""Packing, batching and the all-masked-batch guard.

Public API:
    pack(examples, max_len) -> list[Example]
        Best-fit-decreasing bin packing of tokenized samples into rows of at most ``max_len`` tokens
        (deterministic: ties keep input order). In each row ``position_ids`` restart at 0 for every
        sample, ``seq_lens`` lists the sample lengths (``cu_seqlens`` = cumulative sums) and the
        label of each sample's first token is -100, so no sample predicts across a boundary.
    collate(examples, pad_token_id, *, pad_to_multiple_of=None, require_targets=True) -> dict of tensors
        ``input_ids``, ``labels``, ``position_ids`` and ``cu_seq_lens`` always; ``attention_mask``
        only when no row is packed. Padding is on the right (pad id, label -100; pad positions
        continue counting so a packed row's padding is a separate, loss-free segment).
    collate_preference(pairs, pad_token_id, ...) -> dict: chosen rows first, then rejected rows.
    make_collator(tokenizer, *, packing=False, pad_to_multiple_of=None) -> callable
        ``collate`` over Examples or row dicts (``input_ids``, ``labels``, optional ``position_ids``,
        ``seq_lens``, ``rows``), with the tokenizer's pad id; checks pad != eos once.
    pack_rows(rows, *, max_len, seed=None) -> list[dict]: ``pack`` over row dicts (same keys).
    example_from_row(row) / row_from_example(example): Example <-> row dict.
    check_targets(examples): raises NoTrainableTokens (an InvalidInput) naming the rows when no
        token of the batch has a label.
    pad_fraction(examples, batch_size, *, pad_to=None) -> float: the share of pad tokens when
        batched in order (padded to each batch's longest row, or to ``pad_to``).

Where attention honours packing (transformers 5.x, checked in masking_utils.py and
modeling_flash_attention_utils.py): when a forward gets ``position_ids`` and NO ``attention_mask``
and no cache, ``find_packed_sequence_indices`` turns restarts of position ids into a block-diagonal
causal mask for eager/sdpa/flex attention, and flash-attention uses them as varlen cu_seqlens.
So call the model with ``use_cache=False`` (or config.use_cache=False, as
``models.load_model_and_tokenizer`` sets) and without ``attention_mask`` for packed batches, which is
what ``collate`` produces. ``tests/unit/engine/test_data_packing.py`` proves the packed logits equal
the per-sample logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import accumulate, pairwise
from typing import Any

from tuneforge.common.errors import FieldViolation, InvalidInput
from tuneforge.engine.data.tokenize import IGNORE_INDEX, Example, PreferencePair, check_pad_token


class NoTrainableTokens(InvalidInput):
    """A batch where every label is masked: the loss would be 0/0, so the job fails instead."""

    def __init__(self, message: str, *, violations: Sequence[FieldViolation] = (), reason: str = "") -> None:
        super().__init__(message, violations=violations, reason=reason or "NO_TRAINABLE_TOKENS")


def check_targets(examples: Sequence[Example]) -> None:
    """Raise ``NoTrainableTokens`` naming every row of the batch if none has a label to learn."""
    if any(ex.num_targets for ex in examples):
        return
    rows = [r for ex in examples for r in ex.rows]
    fix = (
        "every label is masked: no assistant tokens within data.max_seq_length; raise max_seq_length, "
        "fix the rows, or set data.assistant_only_loss: false"
    )
    raise NoTrainableTokens(
        f"a batch of {len(rows)} samples has no tokens to learn from",
        violations=[FieldViolation(r, fix) for r in rows[:50]],
    )


def _bins_for(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        fits = [b for b, room in enumerate(free) if room >= lengths[i]]
        if fits:
            best = min(fits, key=lambda b: (free[b], b))
            bins[best].append(i)
            free[best] -= lengths[i]
        else:
            bins.append([i])
            free.append(max_len - lengths[i])
    return bins


def pack(examples: Sequence[Example], max_len: int) -> list[Example]:
    """Pack samples into rows of at most ``max_len`` tokens; no sample is split.

    Args:
        examples: unpacked samples, each already truncated to ``max_len``.
        max_len: the row capacity.

    Raises:
        InvalidInput: a sample is longer than ``max_len`` (truncate first).
    """
    too_long = [
        FieldViolation(ex.rows[0], f"has {len(ex)} tokens > {max_len}; truncate before packing")
        for ex in examples
        if len(ex) > max_len
    ]
    if too_long:
        raise InvalidInput.of(too_long[:50], what="samples to pack")
    rows = []
    for members in _bins_for([len(ex) for ex in examples], max_len):
        ids: list[int] = []
        labels: list[int] = []
        for i in members:
            ex = examples[i]
            ids += ex.input_ids
            labels += [IGNORE_INDEX, *ex.labels[1:]]
        chosen = [examples[i] for i in members]
        positions = [p for ex in chosen for p in range(len(ex))]
        rows.append(
            Example(
                ids,
                labels,
                tuple(r for ex in chosen for r in ex.rows),
                positions,
                tuple(len(ex) for ex in chosen),
                chosen[0].task,
            )
        )
    return rows


def example_from_row(row: Example | Mapping[str, Any]) -> Example:
    """An ``Example`` from a row dict (seq_lens derived from position-id restarts when absent)."""
    if isinstance(row, Example):
        return row
    ids = list(row["input_ids"])
    positions = list(row.get("position_ids") or range(len(ids)))
    seq_lens = tuple(row.get("seq_lens") or ())
    if not seq_lens:
        starts = [k for k, p in enumerate(positions) if p == 0] or [0]
        seq_lens = tuple(b - a for a, b in pairwise([*starts, len(ids)]))
    rows = tuple(row.get("rows") or ("row",))
    return Example(ids, list(row["labels"]), rows, positions, seq_lens, row.get("task"))


def row_from_example(ex: Example) -> dict[str, Any]:
    """An ``Example`` as a plain row dict (JSON/pickle friendly)."""
    return {
        "input_ids": ex.input_ids,
        "labels": ex.labels,
        "position_ids": ex.position_ids,
        "seq_lens": ex.seq_lens,
        "rows": ex.rows,
        "task": ex.task,
    }


def pack_rows(
    rows: Sequence[Mapping[str, Any]], *, max_len: int, seed: int | None = None
) -> list[dict[str, Any]]:
    """``pack`` over row dicts. ``seed`` is accepted for symmetry and unused: packing is deterministic."""
    del seed
    return [row_from_example(ex) for ex in pack([example_from_row(r) for r in rows], max_len)]


def make_collator(
    tokenizer: Any, *, packing: bool = False, pad_to_multiple_of: int | None = None
) -> Callable[[Sequence[Example | Mapping[str, Any]]], dict[str, Any]]:
    """A batch function over Examples or row dicts using the tokenizer's pad id.

    ``packing`` is informational: packed rows are recognised from their ``seq_lens``/position ids,
    and their batches come without ``attention_mask`` (see the module docstring).
    """
    check_pad_token(tokenizer)
    pad_id = int(tokenizer.pad_token_id)
    del packing

    def _collate(rows: Sequence[Example | Mapping[str, Any]]) -> dict[str, Any]:
        return collate([example_from_row(r) for r in rows], pad_id, pad_to_multiple_of=pad_to_multiple_of)

    return _collate


def _pad_len(longest: int, multiple: int | None) -> int:
    return longest if not multiple else -(-longest // multiple) * multiple


def collate(
    examples: Sequence[Example],
    pad_token_id: int,
    *,
    pad_to_multiple_of: int | None = None,
    require_targets: bool = True,
) -> dict[str, Any]:
    """Right-pad a batch into tensors.

    Returns:
        ``input_ids``, ``labels``, ``position_ids`` (long, [B, L]); ``cu_seq_lens`` (int32, the
        cumulative sample boundaries over the flattened batch, padding excluded); ``num_tokens``
        (long scalar, real tokens); ``attention_mask`` only when no row is packed (a packed batch
        must reach the model without one).

    Raises:
        NoTrainableTokens: with ``require_targets``, when no label in the batch is set.
    """
    import torch

    if require_targets:
        check_targets(examples)
    length = _pad_len(max(len(ex) for ex in examples), pad_to_multiple_of)
    ids, labels, positions, mask = [], [], [], []
    for ex in examples:
        n = length - len(ex)
        ids.append(ex.input_ids + [pad_token_id] * n)
        labels.append(ex.labels + [IGNORE_INDEX] * n)
        positions.append(ex.position_ids + list(range(n)))
        mask.append([1] * len(ex) + [0] * n)
    batch = {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(positions, dtype=torch.long),
        "cu_seq_lens": torch.tensor(
            [0, *accumulate(n for ex in examples for n in ex.seq_lens)], dtype=torch.int32
        ),
        "num_tokens": torch.tensor(sum(len(ex) for ex in examples), dtype=torch.long),
    }
    if all(len(ex.seq_lens) == 1 for ex in examples):
        batch["attention_mask"] = torch.tensor(mask, dtype=torch.long)
    return batch


def collate_preference(
    pairs: Sequence[PreferencePair], pad_token_id: int, *, pad_to_multiple_of: int | None = None
) -> dict[str, Any]:
    """Batch DPO pairs: rows ``[0, B)`` are chosen, ``[B, 2B)`` rejected, padded to one length."""
    sides = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    return collate(sides, pad_token_id, pad_to_multiple_of=pad_to_multiple_of)


def pad_fraction(examples: Sequence[Example], batch_size: int, *, pad_to: int | None = None) -> float:
    """Share of pad tokens if ``examples`` are batched in order and right-padded per batch
    (to the longest row of each batch, or to ``pad_to`` tokens for fixed-shape batches)."""
    real = padded = 0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        real += sum(len(ex) for ex in chunk)
        padded += (pad_to or max(len(ex) for ex in chunk)) * len(chunk)
    return 1 - real / padded if padded else 0.0
