"""An adapter trained after the tokenizer grew (e.g. an added pad token) loads and merges onto
the unresized base: the loaders grow the base's embeddings to the adapter's tokenizer first."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.engine.evaluate.loading import load_model
from tuneforge.engine.export import merge_lora


def test_adapter_with_added_tokens_merges_and_loads(tiny_model_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    base_size = len(tok)
    tok.add_special_tokens({"additional_special_tokens": ["<|new|>"]})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.resize_token_embeddings(len(tok))
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=None))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.add_(0.01)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter, save_embedding_layers=True)
    tok.save_pretrained(adapter)
    ids = torch.tensor([[1, 2, 3, base_size]])  # includes the added token
    expected = peft_model.eval()(ids).logits

    merged = merge_lora(tiny_model_dir, adapter)
    assert merged.get_input_embeddings().weight.shape[0] == base_size + 1
    assert torch.allclose(merged(ids).logits, expected, atol=1e-5)
    loaded = load_model(tiny_model_dir, adapter_dir=adapter, device="cpu")
    assert len(loaded.tokenizer) == base_size + 1
    assert torch.allclose(loaded.model(ids).logits, expected, atol=1e-5)


def test_pickled_adapters_are_refused(tmp_path):
    import pytest

    from tuneforge.common.errors import InvalidInput
    from tuneforge.engine.export import require_safetensors_adapter

    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(InvalidInput) as info:
        require_safetensors_adapter(tmp_path)
    assert "adapter_model.bin" in str(info.value)
