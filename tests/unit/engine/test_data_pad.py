"""Pad distinct from EOS without growing the vocabulary when a safe existing token exists."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tuneforge.engine.data.tokenize import check_pad_token, ensure_pad_token


def _tokenizer(specials: list[str], **named: str) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=named.get("unk_token")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["hello world"] * 10, trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def test_unused_unk_token_becomes_pad_without_resizing():
    t = _tokenizer(["<|endoftext|>", "<|im_end|>"], unk_token="<|endoftext|>", eos_token="<|im_end|>",
                   pad_token="<|im_end|>")
    t.chat_template = "{% for m in messages %}<|im_end|>{{ m['content'] }}{% endfor %}"
    size = len(t)
    assert ensure_pad_token(t) is False
    assert t.pad_token == "<|endoftext|>" and len(t) == size
    check_pad_token(t)


def test_a_pad_token_is_added_when_no_safe_token_exists():
    t = _tokenizer(["<|im_end|>"], eos_token="<|im_end|>", pad_token="<|im_end|>")
    size = len(t)
    assert ensure_pad_token(t) is True
    assert t.pad_token == "<|pad|>" and len(t) == size + 1 and t.pad_token_id != t.eos_token_id
