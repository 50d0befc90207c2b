"""Packing keeps samples apart (position ids, labels, attention), collation pads, all-masked fails."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from tuneforge.common.errors import InvalidInput  # noqa: E402
from tuneforge.engine.data import (  # noqa: E402
    IGNORE_INDEX,
    Example,
    NoTrainableTokens,
    collate,
    collate_preference,
    make_collator,
    pack,
    pack_rows,
    pad_fraction,
    records_from_dicts,
    tokenize_preference,
    tokenize_sft,
)


def _ex(n: int, row: int, start: int = 10) -> Example:
    ids = list(range(start, start + n))
    return Example(ids, list(ids), (f"train[{row}]",))


def test_pack_restarts_positions_and_masks_boundaries() -> None:
    examples = [_ex(n, i, 10 * i) for i, n in enumerate([5, 3, 7, 2, 6, 4])]
    rows = pack(examples, max_len=10)
    assert all(len(r) <= 10 for r in rows)
    assert sorted(r for row in rows for r in row.rows) == sorted(e.rows[0] for e in examples)
    assert sum(len(r) for r in rows) == sum(len(e) for e in examples)
    assert len(rows) == 3  # 27 tokens fit in 3 rows of 10 with best-fit decreasing
    by_row = {e.rows[0]: e for e in examples}
    for row in rows:
        offset = 0
        for name, n in zip(row.rows, row.seq_lens, strict=True):
            src = by_row[name]
            assert row.input_ids[offset : offset + n] == src.input_ids
            assert row.position_ids[offset : offset + n] == list(range(n))
            assert row.labels[offset] == IGNORE_INDEX  # never predicted from the previous sample
            assert row.labels[offset + 1 : offset + n] == src.labels[1:]
            offset += n
    assert pack(examples, max_len=10) == rows  # deterministic
    with pytest.raises(InvalidInput, match="truncate"):
        pack([_ex(11, 0)], max_len=10)


def test_packing_reduces_pad_share() -> None:
    examples = [_ex(n, i) for i, n in enumerate([30, 5, 17, 9, 3, 28, 12, 2, 20, 8] * 4)]
    packed = pack(examples, max_len=32)
    assert pad_fraction(packed, 1, pad_to=32) == pytest.approx(1 - 536 / (32 * len(packed)))
    assert pad_fraction(packed, 4) <= pad_fraction(packed, 1, pad_to=32) < 0.05
    assert pad_fraction(examples, 4) > 0.3


def test_packed_forward_equals_separate_forwards(tiny_model_dir: Path) -> None:
    """Attention does not cross samples: per-sample logits are the same packed or alone."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True).eval()
    samples = [_ex(n, i, 20 + 7 * i) for i, n in enumerate([6, 9, 4])]
    [row] = pack(samples, max_len=32)
    batch = collate([row], pad_token_id=1)
    assert "attention_mask" not in batch
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        mixed = model(
            input_ids=batch["input_ids"],
            attention_mask=torch.ones_like(batch["input_ids"]),
            position_ids=batch["position_ids"],
            use_cache=False,
        ).logits
        offset = 0
        for name, n in zip(row.rows, row.seq_lens, strict=True):
            alone = next(s for s in samples if s.rows[0] == name)
            ref = model(input_ids=torch.tensor([alone.input_ids]), use_cache=False).logits
            torch.testing.assert_close(packed[0, offset : offset + n], ref[0], atol=1e-5, rtol=1e-4)
            offset += n
    # With an attention mask the model attends across samples: why collate leaves it out.
    assert not torch.allclose(packed, mixed, atol=1e-4)


def test_collate_pads_right_and_reports_boundaries() -> None:
    a, b = _ex(3, 0), _ex(5, 1)
    batch = collate([a, b], pad_token_id=1, pad_to_multiple_of=8)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0].tolist() == [10, 11, 12, 1, 1, 1, 1, 1]
    assert batch["labels"][0, 3:].tolist() == [IGNORE_INDEX] * 5
    assert batch["attention_mask"].tolist()[0] == [1, 1, 1, 0, 0, 0, 0, 0]
    assert batch["cu_seq_lens"].tolist() == [0, 3, 8]
    assert int(batch["num_tokens"]) == 8
    packed = collate(pack([a, b], max_len=8), pad_token_id=1)
    assert "attention_mask" not in packed and packed["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]


def test_all_masked_batch_fails_naming_rows() -> None:
    masked = [Example([5, 6, 7], [IGNORE_INDEX] * 3, (f"train[{i}]",)) for i in (4, 9)]
    with pytest.raises(NoTrainableTokens) as info:
        collate(masked, pad_token_id=1)
    assert isinstance(info.value, InvalidInput)
    assert [v.field for v in info.value.violations] == ["train[4]", "train[9]"]
    # a label only at position 0 is never a target either (nothing predicts it)
    with pytest.raises(NoTrainableTokens):
        collate([Example([5, 6], [5, IGNORE_INDEX], ("train[0]",))], pad_token_id=1)
    collate([*masked, _ex(2, 1)], pad_token_id=1)  # one learnable sample is enough


def test_truncated_away_assistant_turns_fail_the_batch(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_user = {
        "kind": "chat",
        "messages": [
            {"role": "user", "content": "the cat reads a book. " * 20},
            {"role": "assistant", "content": "Four."},
        ],
    }
    examples = tokenize_sft(records_from_dicts([long_user]), tok, max_len=16)
    with pytest.raises(NoTrainableTokens, match="no tokens to learn"):
        make_collator(tok)(examples)


def test_row_dict_collator_and_pack_rows(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [
        {"input_ids": [5, 6, 7], "labels": [5, 6, 7], "rows": ("train[0]",)},
        {"input_ids": [8, 9], "labels": [8, 9], "rows": ("train[1]",)},
    ]
    packed = pack_rows(rows, max_len=8, seed=3)
    assert len(packed) == 1 and packed[0]["seq_lens"] == (3, 2)
    batch = make_collator(tok, packing=True)(packed)
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7, IGNORE_INDEX, 9]]
    # a packed row dict without seq_lens: boundaries come from position restarts
    batch2 = make_collator(tok)([{k: v for k, v in packed[0].items() if k != "seq_lens"}])
    assert batch2["cu_seq_lens"].tolist() == [0, 3, 5]


def test_preference_collation_chosen_then_rejected(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [
        {"kind": "preference", "prompt": [{"role": "user", "content": q}], "chosen": a, "rejected": "No."}
        for q, a in (("Say hello.", "Hello!"), ("Name a colour.", "Blue is a colour."))
    ]
    pairs = tokenize_preference(records_from_dicts(rows), tok, max_len=64)
    batch = collate_preference(pairs, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4
    assert batch["input_ids"][0, : len(pairs[0].chosen)].tolist() == pairs[0].chosen.input_ids
    assert batch["input_ids"][3, : len(pairs[1].rejected)].tolist() == pairs[1].rejected.input_ids
