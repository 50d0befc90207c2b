"""Memory planner: parameter counts against real models, DeepSpeed's own figures, validation, recommend."""

from __future__ import annotations

import pytest

from tuneforge.common.errors import InvalidInput, ResourceExhausted
from tuneforge.engine.planner import (
    GIB,
    LINEAR_MODULES,
    Method,
    count_parameters,
    plan_memory,
    recommend,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# SmolLM2-135M-Instruct's shape (from its GGUF metadata): 30 layers, GQA 9/3, tied embeddings.
SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True,
)
TINY = dict(
    vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
)


def _meta_model(config):
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(config)


def _numel(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied parameters are yielded once


@pytest.mark.parametrize(
    "config",
    [
        transformers.LlamaConfig(**TINY),
        transformers.LlamaConfig(**SMOLLM2_135M),
        transformers.LlamaConfig(**{**TINY, "attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}),
        transformers.LlamaConfig(**{**TINY, "head_dim": 32}),  # head_dim * heads != hidden
        transformers.MistralConfig(**TINY),
        transformers.Qwen2Config(**TINY),
        transformers.Qwen3Config(**{**TINY, "head_dim": 16}),
    ],
    ids=["tiny-llama", "smollm2-135m", "llama-biases-tied", "llama-head-dim", "mistral", "qwen2", "qwen3"],
)
def test_parameter_count_equals_the_built_model(config):
    model = _meta_model(config)
    counts = count_parameters(config)
    assert counts.total == _numel(model)
    linear = sum(m.weight.numel() for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in LINEAR_MODULES)
    assert counts.linear_weights == linear


def test_parameter_count_from_a_dict_matches_the_config_object():
    config = transformers.LlamaConfig(**SMOLLM2_135M)
    assert count_parameters(config.to_dict()) == count_parameters(config)
    assert count_parameters(config).total == 134_515_008  # SmolLM2-135M's published size


def test_lora_trainable_parameters_equal_peft():
    peft = pytest.importorskip("peft")
    config = transformers.LlamaConfig(**TINY)
    targets = ["q_proj", "v_proj", "down_proj"]
    model = peft.get_peft_model(
        transformers.LlamaForCausalLM(config), peft.LoraConfig(r=8, target_modules=targets)
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    plan = plan_memory(config, "lora", 128, 1, lora_r=8, lora_targets=targets)
    assert plan.trainable_params == trainable
    assert plan.params == count_parameters(config).total


# --- DeepSpeed's own estimators ----------------------------------------------------------------
# The planner follows DeepSpeed's accounting, so the figures agree to the byte up to rounding:
# tolerance 0.1% (int() of fractional partitions).
DS_TOLERANCE = 1e-3
SIZES = [(134_515_008, 1), (134_515_008, 2), (134_515_008, 8), (7_000_000_000, 4), (70_000_000_000, 8)]


def _full_plan(config, stage, gpus, offload_optimizer=False, offload_params=False):
    return plan_memory(config, Method.FULL, 512, 1, gpus, 80 * GIB, stage, dtype="bf16",
                       offload_optimizer=offload_optimizer, offload_params=offload_params)


def _scaled_config(total_params: int) -> dict:
    """A Llama config whose parameter count is close to ``total_params`` (same family of shapes)."""
    hidden = 576 if total_params < 10**9 else (4096 if total_params < 3 * 10**10 else 8192)
    base = dict(SMOLLM2_135M, hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_attention_heads=hidden // 64,
                num_key_value_heads=hidden // 256, model_type="llama")
    one, two = (count_parameters({**base, "num_hidden_layers": n}).total for n in (1, 2))
    per_layer, embed = two - one, 2 * one - two
    base["num_hidden_layers"] = max(1, round((total_params - embed) / per_layer))
    return base


@pytest.mark.parametrize(("params", "gpus"), SIZES)
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_model_states_match_deepspeed(params, gpus, offload):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    config = _scaled_config(params)
    plan = _full_plan(config, 2, gpus, offload_optimizer=offload)
    ds_cpu, ds_gpu = estimate_zero2_model_states_mem_needs(
        plan.params, num_gpus_per_node=gpus, num_nodes=1, cpu_offload=offload, additional_buffer_factor=1.5
    )
    assert plan.model_states == pytest.approx(ds_gpu, rel=DS_TOLERANCE)
    assert plan.host_per_node == pytest.approx(ds_cpu, rel=DS_TOLERANCE)


@pytest.mark.parametrize(("params", "gpus"), SIZES)
@pytest.mark.parametrize(("offload", "offload_params"), [(False, False), (True, False), (True, True)])
def test_zero3_model_states_match_deepspeed(params, gpus, offload, offload_params):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    config = _scaled_config(params)
    plan = _full_plan(config, 3, gpus, offload_optimizer=offload, offload_params=offload_params)
    largest = count_parameters(config).largest_layer
    ds_cpu, ds_gpu, _ = estimate_zero3_model_states_mem_needs(
        plan.params, largest, num_gpus_per_node=gpus, num_nodes=1, cpu_offload=offload,
        cpu_offload_params=offload_params, zero_init=True, additional_buffer_factor=1.5,
    )
    assert plan.model_states == pytest.approx(ds_gpu, rel=DS_TOLERANCE)
    assert plan.host_per_node == pytest.approx(ds_cpu, rel=DS_TOLERANCE)


def test_largest_layer_is_what_deepspeed_finds_on_the_model():
    config = transformers.LlamaConfig(**TINY)
    model = _meta_model(config)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    assert count_parameters(config).largest_layer == largest


# --- behaviour ---------------------------------------------------------------------------------

def test_zero_stages_shrink_memory_monotonically():
    config = transformers.LlamaConfig(**SMOLLM2_135M)
    totals = [_full_plan(config, stage, 8).model_states for stage in (0, 1, 2, 3)]
    assert totals == sorted(totals, reverse=True)
    assert len(set(totals)) == 4


def test_checkpointing_lora_and_qlora_reduce_memory():
    config = transformers.LlamaConfig(**SMOLLM2_135M)
    full = plan_memory(config, "full", 2048, 4)
    ckpt = plan_memory(config, "full", 2048, 4, gradient_checkpointing=True)
    lora = plan_memory(config, "lora", 2048, 4)
    qlora = plan_memory(config, "qlora", 2048, 4)
    # The loss's logits (49k vocabulary) are not checkpointed; the decoder layers' share shrinks ~20x.
    loss = plan_memory({**config.to_dict(), "num_hidden_layers": 1}, "full", 2048, 4, gradient_checkpointing=True)
    assert ckpt.activations < full.activations * 0.6
    assert (full.activations - loss.activations) / (ckpt.activations - loss.activations) > 10
    assert lora.optimizer < full.optimizer / 10
    assert qlora.weights < lora.weights
    # nf4 with double quantization: ~0.5 byte per quantized weight plus ~1.6% constants.
    counts = count_parameters(config)
    quantized = qlora.weights - 2 * (counts.total - counts.linear_weights) - 2 * qlora.trainable_params
    assert quantized / counts.linear_weights == pytest.approx(0.5 + 1 / 64 + 4 / (64 * 256), rel=1e-3)


def test_activations_grow_linearly_with_micro_batch():
    config = transformers.LlamaConfig(**SMOLLM2_135M)
    one, four = (plan_memory(config, "lora", 512, mb).activations for mb in (1, 4))
    assert four == pytest.approx(4 * one, rel=1e-6)


def test_bad_requests_report_every_problem():
    config = transformers.LlamaConfig(**TINY)
    with pytest.raises(InvalidInput) as err:
        plan_memory(config, "adapters", 0, 1, dtype="int4", lora_targets=["wq"])
    fields = {v.field for v in err.value.violations}
    assert fields == {"method", "dtype", "lora_targets"}
    with pytest.raises(InvalidInput) as err:
        plan_memory(config, "full", 0, 1, 1, zero_stage=0, offload_optimizer=True, offload_params=True)
    assert {v.field for v in err.value.violations} == {"offload_optimizer", "offload_params", "seq_len"}


def test_unsupported_architecture_names_the_model_type():
    with pytest.raises(InvalidInput, match="gpt2"):
        count_parameters(transformers.GPT2Config())


def test_recommend_picks_full_when_it_fits_and_falls_back_with_reasons():
    config = transformers.LlamaConfig(**SMOLLM2_135M)
    roomy = recommend(config, 2048, 1, 80 * GIB)
    assert roomy.plan.method is Method.FULL and roomy.plan.zero_stage == 0
    assert roomy.plan.micro_batch >= 4
    assert roomy.plan.fits(80 * GIB)
    # A 2 GiB GPU cannot hold full fine-tuning states (20 B x 135M = 2.5 GiB) without offload.
    small = recommend(config, 512, 1, 2 * GIB)
    assert small.plan.fits(2 * GIB)
    assert small.plan.method is not Method.FULL or small.plan.offload_optimizer
    assert any("needs" in r for r in small.reasons)
    bigger = plan_memory(config, small.plan.method, 512, small.plan.micro_batch * 2, 1, 2 * GIB,
                         small.plan.zero_stage, offload_optimizer=small.plan.offload_optimizer,
                         offload_params=small.plan.offload_params,
                         gradient_checkpointing=small.plan.gradient_checkpointing)
    assert small.plan.micro_batch == 64 or not bigger.fits(2 * GIB)


def test_recommend_uses_zero_on_many_gpus():
    config = _scaled_config(7_000_000_000)
    rec = recommend(config, 4096, 8, 80 * GIB, methods=["full"])
    assert rec.plan.zero_stage >= 1
    assert rec.plan.fits(80 * GIB)


def test_recommend_raises_when_nothing_fits():
    config = transformers.LlamaConfig(**SMOLLM2_135M)
    with pytest.raises(ResourceExhausted, match="smallest needs"):
        recommend(config, 4096, 1, GIB // 8)
