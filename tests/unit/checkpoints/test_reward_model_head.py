"""Reward-model checkpoints: the manifest's head comes from the training spec, and exports of a reward
model (full re-save, or LoRA merged into its causal-LM base) are sequence classifiers that score like
the trained model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.checkpoints.domain.model import ModelHead, head_of

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize(("config", "head"), [
    ({"objective": {"kind": "reward_model"}}, ModelHead.REWARD_MODEL),
    ({"objective": {"kind": "dpo"}}, ModelHead.CAUSAL_LM),
    ({"objective": {"kind": "kto"}}, ModelHead.CAUSAL_LM),
    ({}, ModelHead.UNSPECIFIED),
    ({"objective": "garbage"}, ModelHead.UNSPECIFIED),
])
def test_head_of_the_resolved_spec(config: dict, head: ModelHead) -> None:
    assert head_of(config) is head


def _scores(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_full_reward_model_export_is_a_sequence_classifier(tiny_model_dir: Path, tmp_path: Path) -> None:
    from tuneforge.engine.export import export_full

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    torch.nn.init.normal_(model.score.weight, std=0.5)
    model.save_pretrained(tmp_path / "ckpt" / "model")
    files = export_full(tmp_path / "ckpt", tmp_path / "out")

    assert Path("model.safetensors") in files
    loaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out", use_safetensors=True)
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(_scores(loaded.eval(), ids), _scores(model.eval(), ids), atol=1e-6)


def test_reward_lora_merged_export_keeps_the_trained_score_head(tiny_model_dir: Path, tmp_path: Path) -> None:
    import peft

    from tuneforge.engine.export import export_merged

    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_model_dir)
    base = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    base.config.pad_token_id = tokenizer.pad_token_id
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS",
                                                     init_lora_weights=False))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if p.requires_grad and "score" in name:
                p.add_(0.3)
    lora.save_pretrained(tmp_path / "ckpt" / "model")
    tokenizer.save_pretrained(tmp_path / "ckpt" / "model")
    export_merged(tiny_model_dir, tmp_path / "ckpt", tmp_path / "out")

    merged = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "out", use_safetensors=True)
    assert merged.config.num_labels == 1 and merged.config.pad_token_id == tokenizer.pad_token_id
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.allclose(_scores(merged.eval(), ids), _scores(lora.eval(), ids), atol=1e-5)
