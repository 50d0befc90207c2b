"""Exports on the tiny model: merged == peft merge_and_unload within 1e-5; adapter-only; full; QLoRA."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tuneforge.common.errors import FailedPrecondition
from tuneforge.engine import export

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

INPUT = torch.tensor([[1, 5, 9, 42, 7, 100, 3, 11]])


def _logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=INPUT).logits


def _make_adapter(base_model: torch.nn.Module, out: Path) -> Path:
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(1)
    model = peft.get_peft_model(base_model, config)
    model.save_pretrained(out / "adapter")
    (out / "trainer_state.json").write_text('{"step": 10}')
    return out


@pytest.fixture
def lora_checkpoint(tiny_model_dir: Path, tmp_path: Path) -> Path:
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return _make_adapter(base, tmp_path / "ckpt")


def _reference_merge(base_dir: Path, adapter_dir: Path) -> torch.Tensor:
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return _logits(peft.PeftModel.from_pretrained(base, adapter_dir).merge_and_unload())


def test_merged_export_equals_peft_merge_and_unload(tiny_model_dir: Path, lora_checkpoint: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "merged"
    files = export.export_merged(tiny_model_dir, lora_checkpoint, out)
    assert Path("model.safetensors") in files and Path("tokenizer.json") in files
    exported = transformers.AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    got, want = _logits(exported), _reference_merge(tiny_model_dir, lora_checkpoint / "adapter")
    assert torch.allclose(got, want, atol=1e-5, rtol=0), (got - want).abs().max()
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert (got - _logits(base)).abs().max() > 1e-3  # the adapter changed something


def test_qlora_adapter_merges_onto_the_unquantized_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    bnb = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                          bnb_4bit_compute_dtype=torch.float32)
    quantized = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=bnb)
    ckpt = _make_adapter(quantized, tmp_path / "qlora")
    out = tmp_path / "merged"
    export.export_merged(tiny_model_dir, ckpt, out)
    exported = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    want = _reference_merge(tiny_model_dir, ckpt / "adapter")
    assert torch.allclose(_logits(exported), want, atol=1e-5, rtol=0)


def test_merge_refuses_a_quantized_base_folder(tiny_model_dir: Path, lora_checkpoint: Path,
                                               tmp_path: Path) -> None:
    base = tmp_path / "base4bit"
    shutil.copytree(tiny_model_dir, base)
    config = json.loads((base / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (base / "config.json").write_text(json.dumps(config))
    with pytest.raises(FailedPrecondition, match="needs the unquantized base"):
        export.export_merged(base, lora_checkpoint, tmp_path / "out")


def test_adapter_only_export_loads_with_peft(tiny_model_dir: Path, lora_checkpoint: Path,
                                             tmp_path: Path) -> None:
    out = tmp_path / "adapter"
    files = export.export_adapter(lora_checkpoint, out)
    assert {Path("adapter_config.json"), Path("adapter_model.safetensors")} <= set(files)
    assert Path("trainer_state.json") not in files
    base = transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    loaded = peft.PeftModel.from_pretrained(base, out)
    want = _reference_merge(tiny_model_dir, lora_checkpoint / "adapter")
    assert torch.allclose(_logits(loaded), want, atol=1e-5, rtol=0)


def test_full_export_round_trips(tiny_model_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "full"
    shutil.copytree(tiny_model_dir, ckpt / "model")
    (ckpt / "optimizer.pt").write_bytes(b"not exported")
    out = tmp_path / "out"
    files = export.export_full(ckpt, out)
    assert Path("optimizer.pt") not in files
    got = _logits(transformers.AutoModelForCausalLM.from_pretrained(out))
    want = _logits(transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    assert torch.equal(got, want)
