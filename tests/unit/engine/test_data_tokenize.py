"""Records to tokens: chat masks, EOS in labels, pad != eos, DPO pairs, pre-training chunks, readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import AutoTokenizer

from tuneforge.common.errors import FailedPrecondition, InvalidInput, NotFound
from tuneforge.engine.data import (
    IGNORE_INDEX,
    RecordKind,
    check_pad_token,
    ensure_chat_template,
    ensure_pad_token,
    read_records,
    records_from_dicts,
    tokenize_preference,
    tokenize_pretrain,
    tokenize_sft,
)

CHAT = {
    "kind": "chat",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello."},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Again, please."},
        {"role": "assistant", "content": "Hi there."},
    ],
}


@pytest.fixture
def tok(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_assistant_only_masking_exact_positions(tok) -> None:
    [ex] = tokenize_sft(records_from_dicts([CHAT]), tok, max_len=512)
    msgs = CHAT["messages"]
    assert ex.input_ids == _ids(tok, tok.apply_chat_template(msgs, tokenize=False))
    expected = [IGNORE_INDEX] * len(ex.input_ids)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for i in (2, 4):  # the assistant turns, located independently of the implementation
        start = len(_ids(tok, tok.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True)))
        answer = [*_ids(tok, msgs[i]["content"]), im_end]
        assert ex.input_ids[start : start + len(answer)] == answer
        expected[start : start + len(answer)] = answer
    assert ex.labels == expected
    learned = tok.decode([t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX])
    assert learned == "Hello!<|im_end|>Hi there.<|im_end|>"


def test_all_tokens_learned_without_assistant_only(tok) -> None:
    [ex] = tokenize_sft(records_from_dicts([CHAT]), tok, max_len=512, assistant_only_loss=False)
    assert ex.labels == ex.input_ids


def test_text_records_keep_eos_in_labels(tok) -> None:
    [ex] = tokenize_sft(
        records_from_dicts([{"kind": "text", "text": "the cat reads a book."}]), tok, max_len=64
    )
    assert ex.input_ids[-1] == tok.eos_token_id and ex.labels[-1] == tok.eos_token_id


def test_truncation_and_missing_assistant_rows_named(tok) -> None:
    [ex] = tokenize_sft(records_from_dicts([CHAT]), tok, max_len=10)
    assert len(ex.input_ids) == 10 and len(ex.labels) == 10
    rows = [
        CHAT,
        {"kind": "chat", "messages": [{"role": "user", "content": "hi"}]},
        {"kind": "instruction", "messages": [{"role": "user", "content": "x"}]},
    ]
    with pytest.raises(InvalidInput) as info:
        tokenize_sft(records_from_dicts(rows), tok, max_len=64)
    assert [v.field for v in info.value.violations] == ["train[1].messages", "train[2].messages"]


def test_pad_equal_to_eos_is_refused_then_fixed(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = tok.eos_token
    with pytest.raises(FailedPrecondition, match="pad token"):
        tokenize_sft(records_from_dicts([CHAT]), tok, max_len=64)
    grew = ensure_pad_token(tok)
    assert grew is False  # <|pad|> exists in the vocabulary: reused, no new token
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    check_pad_token(tok)


def test_pad_added_when_vocabulary_has_none() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(["the cat reads a book."], trainer=trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    before = len(tok)
    with pytest.raises(FailedPrecondition, match="ensure_pad_token"):
        check_pad_token(tok)
    assert ensure_pad_token(tok) is True  # nothing pad-like to reuse: a new token, resize embeddings
    assert tok.pad_token == "<|pad|>" and len(tok) == before + 1
    check_pad_token(tok)


def test_default_chatml_template_when_missing(tok) -> None:
    tok.chat_template = None
    with pytest.raises(FailedPrecondition, match="no chat template"):
        tokenize_sft(records_from_dicts([CHAT]), tok, max_len=64)
    assert ensure_chat_template(tok) is False  # ChatML markers already in the vocabulary
    [ex] = tokenize_sft(records_from_dicts([CHAT]), tok, max_len=512)
    assert tok.decode(ex.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_dpo_tokenization_labels_only_completion(tok) -> None:
    row = {
        "kind": "preference",
        "prompt": [{"role": "user", "content": "Name a colour."}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": "I will not.",
    }  # the datasets service stores answers as strings
    [pair] = tokenize_preference(records_from_dicts([row]), tok, max_len=128)
    prompt_len = len(
        _ids(tok, tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True))
    )
    for side, answer in ((pair.chosen, "Blue."), (pair.rejected, "I will not.")):
        assert side.input_ids[:prompt_len] == pair.chosen.input_ids[:prompt_len]
        assert all(lab == IGNORE_INDEX for lab in side.labels[:prompt_len])
        learned = [t for t, lab in zip(side.input_ids, side.labels, strict=True) if lab != IGNORE_INDEX]
        assert tok.decode(learned) == f"{answer}<|im_end|>"
    with pytest.raises(InvalidInput, match="DPO") as info:
        tokenize_preference(records_from_dicts([CHAT]), tok, max_len=64)
    assert info.value.field == "train[0].kind"


def test_dpo_long_prompt_is_cut_from_the_left(tok) -> None:
    row = {
        "kind": "preference",
        "prompt": [{"role": "user", "content": "the cat reads a book. " * 30}],
        "chosen": "Blue.",
        "rejected": "Red.",
    }
    [pair] = tokenize_preference(records_from_dicts([row]), tok, max_len=40)
    assert len(pair.chosen.input_ids) == 40
    learned = [
        t for t, lab in zip(pair.chosen.input_ids, pair.chosen.labels, strict=True) if lab != IGNORE_INDEX
    ]
    assert tok.decode(learned) == "Blue.<|im_end|>"


def test_pretrain_chunks_with_eos_between_documents(tok) -> None:
    docs = [
        {"kind": "text", "text": "the cat reads a book."},
        {"kind": "text", "text": "a robot builds the map."},
    ]
    rows = tokenize_pretrain(records_from_dicts(docs), tok, max_len=8)
    stream = [t for r in rows for t in r.input_ids]
    first, second = _ids(tok, docs[0]["text"]), _ids(tok, docs[1]["text"])
    assert stream == [*first, tok.eos_token_id, *second, tok.eos_token_id]
    assert all(len(r.input_ids) <= 8 for r in rows)
    for r in rows:
        assert sum(r.seq_lens) == len(r.input_ids)
        for k, p in enumerate(r.position_ids):
            assert (r.labels[k] == IGNORE_INDEX) == (p == 0)
    boundary = len(first) + 1  # the second document starts here: its position restarts at 0
    row, col = divmod(boundary, 8)
    assert rows[row].position_ids[col] == 0


def test_read_jsonl_parquet_and_report_every_bad_row(tmp_path: Path) -> None:
    good = [CHAT, {"kind": "text", "text": "abc", "category": "math"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in good) + "\n")
    table = pa.Table.from_pylist(
        [
            {"kind": "text", "text": "from parquet", "split": "train"},
            {"kind": "text", "text": "held out", "split": "validation"},
        ]
    )
    pq.write_table(table, tmp_path / "b.parquet")
    records = read_records(tmp_path, split="train")
    assert [r.kind for r in records] == [RecordKind.CHAT, RecordKind.TEXT, RecordKind.TEXT]
    assert records[1].task == "math" and records[2].text == "from parquet"
    assert records[0].to_dict()["messages"][0] == {"role": "system", "content": "Be brief."}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"kind": "chat", "messages": [{"role": "wizard", "content": "x"}]},
                {"kind": "poem"},
                {"kind": "text", "text": ""},
            ]
        )
    )
    with pytest.raises(InvalidInput) as info:
        read_records(bad)
    assert [v.field for v in info.value.violations] == [
        "train[0].messages[0].role",
        "train[1].kind",
        "train[2].text",
    ]
    with pytest.raises(NotFound):
        read_records(tmp_path / "missing")
