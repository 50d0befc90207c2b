"""KTO trains the tiny model through ``run_training`` on labelled records (single process, CPU), and
refuses records of another kind naming the rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.unit.engine._train_support import QA, make_spec
from tuneforge.common.errors import InvalidInput
from tuneforge.engine.api import recipe_for, run_training
from tuneforge.engine.data.records import RecordKind, records_from_dicts
from tuneforge.engine.data.tokenize import tokenize_labelled
from tuneforge.engine.recipes import _common
from tuneforge.engine.spec import load_spec
from tuneforge.engine.train.events import EngineEvent, EventKind, RunStatus


def labelled_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        good = i % 2 == 0
        rows.append({"kind": "labelled", "prompt": [{"role": "user", "content": q}],
                     "completion": a if good else "I do not know.", "label": good})
    return rows


@pytest.mark.parametrize("method", ["lora", "full"])
def test_kto_trains_desirable_up_and_undesirable_down(tiny_model_dir: Path, tmp_path: Path, method: str) -> None:
    spec = make_spec(tiny_model_dir, tmp_path, objective="kto", method=method, rows=labelled_rows(16),
                     hyperparameters={"learning_rate": 1e-2 if method == "lora" else 2e-3, "max_steps": 6})
    raw = spec.resolved_dict()
    raw["objective"]["kto"] |= {"beta": 0.5, "undesirable_weight": 1.5}
    spec = load_spec(raw)
    assert spec.objective.kto.reference.value == ("adapter_disabled" if method == "lora" else "model_copy")
    assert recipe_for(spec).__module__ == "tuneforge.engine.recipes.kto"
    events: list[EngineEvent] = []
    result = run_training(spec, on_event=events.append)

    assert result.status is RunStatus.COMPLETED and result.steps == 6
    steps = [e.metrics for e in events if e.kind is EventKind.STEP]
    losses = [m["loss"] for m in steps]
    assert all(math.isfinite(x) for x in losses) and min(losses[-2:]) < losses[0], losses
    # Implied rewards start at 0 (policy == reference) and move apart.
    gap = [m["rewards_desirable"] - m["rewards_undesirable"] for m in steps]
    assert gap[0] == pytest.approx(0.0, abs=1e-4) and gap[-1] > gap[0], gap


def test_kto_rows_split_prompt_and_completion(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(tiny_model_dir, tmp_path, objective="kto", method="lora", rows=labelled_rows(2))
    _model, tokenizer = _common.load_model(spec, torch.device("cpu"))
    records, _ = _common.read_splits(spec)
    rows = tokenize_labelled(records, tokenizer, max_len=64)
    assert [r["desirable"] for r in rows] == [True, False]
    assert "I do not know." in tokenizer.decode(rows[1]["completion_ids"])
    assert "I do not know." not in tokenizer.decode(rows[1]["prompt_ids"])
    with pytest.raises(InvalidInput) as info:
        tokenize_labelled(records_from_dicts([{"kind": "text", "text": "hello"}]), tokenizer, max_len=64)
    assert [v.field for v in info.value.violations] == ["train[0].kind"]


def test_labelled_record_validation_names_fields() -> None:
    with pytest.raises(InvalidInput) as info:
        records_from_dicts([{"kind": "labelled", "prompt": [{"role": "user", "content": "q"}], "completion": "a",
                             "label": "yes"},
                            {"kind": "labelled", "prompt": [{"role": "user", "content": "q"}], "label": True}])
    assert [v.field for v in info.value.violations] == ["train[0].label", "train[1].completion"]
    ok = records_from_dicts([{"kind": "labelled", "prompt": [{"role": "user", "content": "q"}], "completion": "a",
                              "label": False}])[0]
    assert ok.kind is RecordKind.LABELLED and ok.label is False and ok.completion[0].role == "assistant"
