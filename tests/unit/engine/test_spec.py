"""TrainingSpec: valid specs load and round-trip; bad ones report every problem at once."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneforge.common.errors import InvalidInput
from tuneforge.engine.spec import (
    DpoReference,
    MethodKind,
    ObjectiveKind,
    Precision,
    QuantType,
    TrainingSpec,
    load_spec,
)

BASE: dict[str, Any] = {
    "tenant": "team-a",
    "model": {"path": "/models/tiny"},
    "data": {"train": {"path": "/data/train.jsonl"}, "max_seq_length": 256},
    "output": {"checkpoint_uri": "file:///tmp/ckpt", "run_name": "run-1"},
}


def spec_with(**sections: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def test_minimal_spec_gets_defaults() -> None:
    spec = load_spec(BASE)
    assert spec.method.kind is MethodKind.LORA
    assert spec.objective.kind is ObjectiveKind.SFT
    assert spec.precision is Precision.FP32
    assert spec.hyperparameters.epochs == 1 and spec.hyperparameters.max_steps is None
    assert spec.data.assistant_only_loss is True
    assert spec.method.lora.target_modules is None


def test_yaml_round_trip(tmp_path: Path) -> None:
    raw = spec_with(
        method={"kind": "qlora", "qlora": {"quant_type": "fp4", "double_quant": False}},
        objective={"kind": "dpo", "dpo": {"beta": 0.2, "loss_type": "ipo"}},
        hyperparameters={"learning_rate": 1e-4, "max_steps": 10, "warmup_ratio": 0.1},
        schedule={"eval_every_steps": 5, "early_stopping_patience": 2},
        data={"validation_split_ratio": 0.1},
        precision="bf16",
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(path)
    assert spec.method.qlora.quant_type is QuantType.FP4
    assert spec.objective.dpo.reference is DpoReference.ADAPTER_DISABLED  # resolved for adapters
    resolved = spec.resolved_dict()
    (tmp_path / "resolved.yaml").write_text(yaml.safe_dump(resolved))
    again = load_spec(tmp_path / "resolved.yaml")
    assert again == spec
    assert again.resolved_dict() == resolved
    assert load_spec(yaml.safe_dump(raw)) == spec  # YAML text works too


def test_dpo_full_resolves_model_copy_reference() -> None:
    spec = load_spec(spec_with(method={"kind": "full"}, objective={"kind": "dpo"}))
    assert spec.objective.dpo.reference is DpoReference.MODEL_COPY


BAD_CASES = [
    pytest.param(
        {
            "hyperparameters": {
                "learning_rate": 0,
                "warmup_steps": 5,
                "warmup_ratio": 0.1,
                "micro_batch_size": 0,
            }
        },
        {
            "hyperparameters.learning_rate": "typical LoRA values are 1e-4..3e-4",
            "hyperparameters.warmup_ratio": "not both",
            "hyperparameters.micro_batch_size": "must be > 0",
        },
        id="hyperparameters",
    ),
    pytest.param(
        {"hyperparamters": {}, "model": {"path": "/m", "trust_remote_code": True}},
        {"hyperparamters": "did you mean 'hyperparameters'?", "model.trust_remote_code": "never runs code"},
        id="unknown-keys",
    ),
    pytest.param(
        {"data": {"train": {"path": "/d"}, "max_seq_lenght": 9}, "method": {"kind": "lora2"}},
        {"data.max_seq_lenght": "did you mean 'max_seq_length'?", "method.kind": "must be one of"},
        id="typo-and-enum",
    ),
    pytest.param(
        {"precision": "fp16", "resources": {"offload_params": True, "zero_stage": 2}},
        {"precision": "use bf16 or fp32", "resources.offload_params": "needs ZeRO stage 3"},
        id="cpu-fp16-and-offload",
    ),
    pytest.param(
        {"method": {"kind": "qlora", "lora": {"target_modules": []}}, "resources": {"zero_stage": 3}},
        {"method.lora.target_modules": "is empty", "resources.zero_stage": "QLoRA does not support ZeRO-3"},
        id="qlora",
    ),
    pytest.param(
        {
            "objective": {"kind": "dpo", "dpo": {"reference": "adapter_disabled", "beta": -1}},
            "method": {"kind": "full"},
            "data": {"train": {"path": "/d"}, "packing": True},
        },
        {"objective.dpo.beta": "must be > 0", "data.packing": "DPO"},
        id="dpo",
    ),
    pytest.param(
        {
            "method": {"kind": "prefix", "prefix": {"num_virtual_tokens": 300}},
            "data": {"train": {"path": "/d"}, "packing": True, "max_seq_length": 256},
        },
        {"method.prefix.num_virtual_tokens": "smaller than data.max_seq_length", "data.packing": "attend"},
        id="prefix-too-long",
    ),
    pytest.param(
        {"method": {"kind": "prompt"}, "data": {"train": {"path": "/d"}, "packing": True}},
        {"data.packing": "attend to each other"},
        id="prompt-packing",
    ),
    pytest.param(
        {"objective": {"kind": "dpo", "dpo": {"reference": "adapter_disabled"}}, "method": {"kind": "full"}},
        {"objective.dpo.reference": "needs an adapter method"},
        id="dpo-reference",
    ),
    pytest.param(
        {
            "schedule": {"eval_every_steps": 10, "greater_is_better": True},
            "tenant": "Team A",
            "output": {"checkpoint_uri": "ftp://x", "run_name": "ok"},
        },
        {
            "schedule.eval_every_steps": "needs validation data",
            "schedule.greater_is_better": "worst",
            "tenant": "invalid format",
            "output.checkpoint_uri": "s3://",
        },
        id="schedule-and-output",
    ),
    pytest.param(
        {
            "data": {
                "train": {"path": "/d", "dataset_version": "v1"},
                "mixture": [{"source": {"path": "/x"}, "weight": 0}],
            }
        },
        {"data.train": "exactly one of path", "data.mixture[0].weight": "must be > 0"},
        id="data-sources",
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_CASES)
def test_every_problem_reported_at_once(overrides: dict[str, Any], expected: dict[str, str]) -> None:
    with pytest.raises(InvalidInput) as info:
        load_spec(spec_with(**overrides))
    found = {v.field: v.description for v in info.value.violations}
    for field, fragment in expected.items():
        assert field in found, f"{field} not reported; got {found}"
        assert fragment in found[field], f"{field}: {found[field]!r} lacks {fragment!r}"
    assert len(found) == len(expected), found


def test_missing_sections_are_named() -> None:
    with pytest.raises(InvalidInput) as info:
        load_spec({"model": {"path": "/m"}})
    assert {v.field for v in info.value.violations} == {"data", "output", "tenant"}


@pytest.mark.parametrize("text", ["model: [unclosed", "- just\n- a list\n"])
def test_bad_yaml_is_invalid_input(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        load_spec(text)
    assert info.value.field == "spec"


def test_direct_construction_also_runs_cross_checks() -> None:
    raw = spec_with(resources={"offload_params": True})
    with pytest.raises(ValueError, match="needs ZeRO stage 3"):
        TrainingSpec.model_validate(raw)


@pytest.mark.parametrize(("method", "expected"), [("lora", DpoReference.ADAPTER_DISABLED),
                                                  ("full", DpoReference.MODEL_COPY)])
def test_kto_reference_defaults_like_dpo(method: str, expected: DpoReference) -> None:
    spec = load_spec(spec_with(method={"kind": method}, objective={"kind": "kto"}))
    assert spec.objective.kto.reference is expected and spec.objective.kto.beta == 0.1


@pytest.mark.parametrize(("sections", "expected"), [
    ({"objective": {"kind": "kto"}, "data": {"train": {"path": "/d"}, "packing": True}}, {"data.packing": "KTO"}),
    ({"objective": {"kind": "kto", "kto": {"reference": "adapter_disabled"}}, "method": {"kind": "full"}},
     {"objective.kto.reference": "use model_copy"}),
    ({"objective": {"kind": "kto", "kto": {"desirable_weight": 0, "undesirable_weight": 101}}},
     {"objective.kto.desirable_weight": "must be > 0", "objective.kto.undesirable_weight": "must be <= 100"}),
    ({"objective": {"kind": "reward_model"}, "method": {"kind": "prefix"}}, {"method.kind": "score head"}),
    ({"objective": {"kind": "reward_model", "reward_model": {"margin": -1}}, "data": {"train": {"path": "/d"},
                                                                                        "packing": True}},
     {"objective.reward_model.margin": "must be >= 0", "data.packing": "REWARD_MODEL"}),
])
def test_kto_and_reward_model_problems_name_the_field(sections: dict[str, Any], expected: dict[str, str]) -> None:
    with pytest.raises(InvalidInput) as info:
        load_spec(spec_with(**sections))
    found = {v.field: v.description for v in info.value.violations}
    assert set(found) == set(expected), found
    for field, fragment in expected.items():
        assert fragment in found[field], (field, found[field])
