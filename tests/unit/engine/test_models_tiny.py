"""The tiny model builder: loadable, deterministic, pad != eos, ChatML template."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.engine.models.tiny import IM_END, IM_START, build_tiny_model


def test_tiny_model_loads_with_distinct_pad_and_eos(tiny_model_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True)
    assert (tiny_model_dir / "model.safetensors").is_file()
    assert tok.pad_token_id is not None and tok.eos_token_id is not None
    assert tok.pad_token_id != tok.eos_token_id
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.num_attention_heads == 4 and model.config.num_key_value_heads == 2
    assert model.config.vocab_size == len(tok)
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"}],
        tokenize=False,
    )
    assert text == f"{IM_START}user\nSay hello.{IM_END}\n{IM_START}assistant\nHello!{IM_END}\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids(IM_END)) == 2


def test_tiny_model_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = build_tiny_model(tmp_path / "a", seed=3, hidden_size=32, num_layers=1)
    b = build_tiny_model(tmp_path / "b", seed=3, hidden_size=32, num_layers=1)
    c = build_tiny_model(tmp_path / "c", seed=4, hidden_size=32, num_layers=1)
    for name in ("model.safetensors", "tokenizer.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
