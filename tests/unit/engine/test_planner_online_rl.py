"""The online RL memory plan: the update's plan plus the reference copy, the value model, the
generation's cache and the rollout buffers, each where it applies."""

from __future__ import annotations

from tuneforge.engine.planner import plan_memory, plan_online_rl

LLAMA_1B = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True}
SHAPE = {"prompt_len": 256, "max_new_tokens": 256, "prompts": 2, "num_generations": 8}


def test_reference_value_model_and_rollout_add_up() -> None:
    update = plan_memory(LLAMA_1B, "full", 512, 16)
    plain = plan_online_rl(LLAMA_1B, "full", **SHAPE, reference=False)
    with_ref = plan_online_rl(LLAMA_1B, "full", **SHAPE, reference=True)
    ppo = plan_online_rl(LLAMA_1B, "full", **SHAPE, reference=True, value_model=True)
    assert plain.total > update.total  # rollout buffers at least
    assert with_ref.total - plain.total == 2 * update.params  # a bf16 frozen copy
    assert ppo.total - with_ref.total == update.model_states + 16 * 256 * 4  # a second trained model + its values
    assert any("online RL: 16 sequences of 512 tokens" in n for n in plain.notes)


def test_adapters_need_no_reference_copy_and_zero3_partitions_it() -> None:
    lora = plan_online_rl(LLAMA_1B, "lora", **SHAPE, reference=True)
    lora_no_ref = plan_online_rl(LLAMA_1B, "lora", **SHAPE, reference=False)
    assert lora.total == lora_no_ref.total
    z3 = plan_online_rl(LLAMA_1B, "full", **SHAPE, reference=True, num_gpus=4, zero_stage=3)
    z3_no_ref = plan_online_rl(LLAMA_1B, "full", **SHAPE, reference=False, num_gpus=4, zero_stage=3)
    assert z3.total - z3_no_ref.total == 2 * z3.params // 4


def test_long_generations_are_bounded_by_the_kv_cache() -> None:
    short = plan_online_rl(LLAMA_1B, "lora", prompt_len=64, max_new_tokens=64, prompts=1, num_generations=64,
                           reference=False, gradient_checkpointing=True)
    long = plan_online_rl(LLAMA_1B, "lora", prompt_len=64, max_new_tokens=4096, prompts=1, num_generations=64,
                          reference=False, gradient_checkpointing=True)
    kv_long = 2 * 16 * 8 * 64 * (64 + 4096) * 64 * 2
    assert long.total - short.total >= kv_long // 2
