"""METRIC_REWARD_ACCURACY: a reward model (a full sequence-classifier folder, or a reward model's LoRA
adapter on its causal-LM base) scores both answers of each preference pair exactly as transformers/peft
do; the domain turns the scores into pairwise accuracy (Wilson interval) and mean margin; a causal LM,
or other metrics beside it, are refused naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from tuneforge.common.errors import InvalidInput  # noqa: E402
from tuneforge.engine.evaluate.chat import render_chat  # noqa: E402
from tuneforge.engine.evaluate.job import run_task  # noqa: E402
from tuneforge.evaluation.domain.examples import to_examples  # noqa: E402
from tuneforge.evaluation.domain.model import DatasetRef, EvaluationSpec, Limits, Metric, ModelRef, Role  # noqa: E402
from tuneforge.evaluation.domain.scoring import score  # noqa: E402

RECORDS = [{"kind": "preference", "prompt": [{"role": "user", "content": f"What colour is the {x}?"}],
            "chosen": f"The {x} is {c}.", "rejected": "No idea."}
           for x, c in [("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black")]]


def _perturb(model, seed: int) -> None:
    """Move the trainable parameters (all of a plain model; the adapter and score head of a peft one)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)


@pytest.fixture(scope="module")
def reward_folder(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path_factory.mktemp("rm") / "model"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    _perturb(model, 1)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _manual(model, tokenizer, record: dict, answer: str) -> float:
    text = render_chat(tokenizer, [*record["prompt"], {"role": "assistant", "content": answer}])
    with torch.no_grad():
        return float(model(**tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0])


def test_full_reward_model_scores_equal_transformers(reward_folder: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    raw = run_task(model_dir=str(reward_folder), adapter_dir=None, examples=to_examples(RECORDS, max_samples=0),
                   metrics=["reward_accuracy"], generation={}, prefer_gpu=False)
    model = AutoModelForSequenceClassification.from_pretrained(reward_folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(reward_folder)
    want_chosen = [_manual(model, tokenizer, r, r["chosen"]) for r in RECORDS]
    want_rejected = [_manual(model, tokenizer, r, r["rejected"]) for r in RECORDS]
    assert raw["reward_pairs"]["chosen"] == pytest.approx(want_chosen, abs=1e-5)
    assert raw["reward_pairs"]["rejected"] == pytest.approx(want_rejected, abs=1e-5)

    results = score(raw, [Metric.REWARD_ACCURACY], Role.MODEL, "dsv_1")
    by_name = {r.name: r for r in results}
    right = sum(c > r for c, r in zip(want_chosen, want_rejected, strict=True))
    assert by_name["reward_accuracy"].value == right / 4 and by_name["reward_accuracy"].count == 4
    assert by_name["reward_accuracy"].ci_low <= right / 4 <= by_name["reward_accuracy"].ci_high
    margin = sum(c - r for c, r in zip(want_chosen, want_rejected, strict=True)) / 4
    assert by_name["reward_margin_mean"].value == pytest.approx(margin)


def test_reward_lora_adapter_is_applied_on_a_sequence_classifier_base(tiny_model_dir: Path, tmp_path: Path) -> None:
    import peft
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    base.config.pad_token_id = tokenizer.pad_token_id
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS",
                                                     init_lora_weights=False))
    _perturb(lora, 2)
    assert any("score" in n for n, p in lora.named_parameters() if p.requires_grad)  # the head trains
    lora.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    lora.eval()

    raw = run_task(model_dir=str(tiny_model_dir), adapter_dir=str(tmp_path / "adapter"),
                   examples=to_examples(RECORDS, max_samples=0), metrics=["reward_accuracy"], generation={},
                   prefer_gpu=False)
    assert raw["reward_pairs"]["chosen"] == pytest.approx([_manual(lora, tokenizer, r, r["chosen"]) for r in RECORDS],
                                                          abs=1e-5)


def test_causal_lm_cannot_compute_reward_accuracy_and_a_reward_model_nothing_else(tiny_model_dir: Path,
                                                                                  reward_folder: Path) -> None:
    examples = to_examples(RECORDS, max_samples=0)
    with pytest.raises(InvalidInput) as info:
        run_task(model_dir=str(tiny_model_dir), adapter_dir=None, examples=examples, metrics=["reward_accuracy"],
                 generation={}, prefer_gpu=False)
    assert info.value.violations[0].field == "metrics" and "OBJECTIVE_REWARD_MODEL" in info.value.message
    with pytest.raises(InvalidInput) as info:
        run_task(model_dir=str(reward_folder), adapter_dir=None, examples=examples, metrics=["perplexity"],
                 generation={}, prefer_gpu=False)
    assert info.value.violations[0].field == "metrics" and "PERPLEXITY" in info.value.message


def test_reward_accuracy_is_requested_on_its_own() -> None:
    spec = EvaluationSpec(model=ModelRef(checkpoint_id="ckpt_1"), datasets=(DatasetRef("dsv_1"),),
                          metrics=(Metric.REWARD_ACCURACY, Metric.PERPLEXITY))
    with pytest.raises(InvalidInput) as info:
        spec.validate(Limits())
    assert [v.field for v in info.value.violations] == ["metrics"]
    assert "METRIC_PERPLEXITY" in info.value.violations[0].description


def test_win_rate_pairs_answers_by_prompt_and_counts_ties_as_half() -> None:
    from tuneforge.evaluation.domain.scoring import answer_pairs, win_rate

    prompt = [{"role": "user", "content": "q"}]
    gens = [{"dataset_version_id": "dsv_1", "index": i, "role": role, "prompt": prompt, "text": f"{role} {i}"}
            for role in ("model", "baseline") for i in range(3)]
    gens.append({"dataset_version_id": "dsv_1", "index": 9, "role": "model", "prompt": prompt, "text": "alone"})
    pairs = answer_pairs(gens)
    assert [p["choices"] for p in pairs["dsv_1"]] == [["model 0", "baseline 0"], ["model 1", "baseline 1"],
                                                      ["model 2", "baseline 2"]]
    assert all(p["gold"] == 0 and p["mc_prompt"] == prompt for p in pairs["dsv_1"])
    results = {r.name: r for r in win_rate({"chosen": [2.0, 1.0, 0.0], "rejected": [1.0, 1.0, 3.0]}, "dsv_1")}
    assert results["reward_win_rate"].value == pytest.approx(0.5) and results["reward_win_rate"].count == 3
    assert results["reward_mean_model"].value == pytest.approx(1.0)
    assert results["reward_mean_baseline"].value == pytest.approx(5 / 3)


def test_win_rate_needs_a_baseline_and_a_reward_model() -> None:
    spec = EvaluationSpec(model=ModelRef(checkpoint_id="ckpt_1"), datasets=(DatasetRef("dsv_1"),),
                          metrics=(Metric.REWARD_WIN_RATE,))
    with pytest.raises(InvalidInput) as info:
        spec.validate(Limits())
    assert sorted(v.field for v in info.value.violations) == ["baseline", "reward_model"]
    assert Metric.REWARD_WIN_RATE.needs_generation
