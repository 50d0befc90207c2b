"""Memory planner per objective: a reward model's one-score head (parameters equal the built
``AutoModelForSequenceClassification``), paired sequences, and KTO/DPO's frozen reference."""

from __future__ import annotations

import pytest

from tuneforge.common.errors import InvalidInput
from tuneforge.engine.planner import plan_memory

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TINY = dict(model_type="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, tie_word_embeddings=False)


@pytest.mark.parametrize("tied", [False, True])
def test_reward_model_parameters_equal_the_built_sequence_classifier(tied: bool) -> None:
    config = transformers.LlamaConfig(**{k: v for k, v in TINY.items() if k != "model_type"}, num_labels=1)
    config.tie_word_embeddings = tied
    with torch.device("meta"):
        model = transformers.AutoModelForSequenceClassification.from_config(config)
    plan = plan_memory(config.to_dict(), "full", 128, 2, objective="reward_model")
    assert plan.params == sum(p.numel() for p in model.parameters())
    assert plan.objective == "reward_model"


def test_reward_model_lora_trains_the_score_head_and_has_no_vocabulary_logits() -> None:
    sft = plan_memory(TINY, "lora", 256, 4, dtype="fp32")
    rm = plan_memory(TINY, "lora", 256, 4, dtype="fp32", objective="reward_model")
    dpo = plan_memory(TINY, "lora", 256, 4, dtype="fp32", objective="dpo")
    assert rm.trainable_params == sft.trainable_params + TINY["hidden_size"]
    # Chosen and rejected side by side, but no (tokens x vocab) logits and log-softmax.
    assert sft.activations < rm.activations < dpo.activations


@pytest.mark.parametrize("objective", ["kto", "dpo"])
def test_reference_objectives_pay_a_weight_copy_only_under_full_fine_tuning(objective: str) -> None:
    sft_full = plan_memory(TINY, "full", 256, 4, dtype="bf16")
    ref_full = plan_memory(TINY, "full", 256, 4, dtype="bf16", objective=objective)
    assert ref_full.weights == sft_full.weights + 2 * sft_full.params  # a bf16 frozen copy
    sft_lora = plan_memory(TINY, "lora", 256, 4, dtype="bf16")
    ref_lora = plan_memory(TINY, "lora", 256, 4, dtype="bf16", objective=objective)
    assert ref_lora.weights == sft_lora.weights  # the reference is the base with the adapter disabled
    assert ref_lora.activations > sft_lora.activations  # no-grad reference logits while activations live
    three = plan_memory(TINY, "full", 256, 4, 4, zero_stage=3, dtype="bf16", objective=objective)
    assert three.weights == pytest.approx(ref_full.weights / 4, abs=1)


def test_unknown_objective_is_named() -> None:
    with pytest.raises(InvalidInput) as info:
        plan_memory(TINY, "lora", 128, 1, objective="ppo-ish")
    assert [v.field for v in info.value.violations] == ["objective"]
