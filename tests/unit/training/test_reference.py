"""The committed training spec reference is what the spec and the mapping generate."""

from __future__ import annotations

from pathlib import Path

from tuneforge.training.reference import table

DOC = Path(__file__).resolve().parents[3] / "docs" / "training-spec.md"


def test_the_reference_table_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == table(), (
        "docs/training-spec.md is stale: run `python -m tuneforge.training.reference > docs/training-spec.md`")


def test_every_default_appears_once_with_its_api_name() -> None:
    text = table()
    assert "| `hyperparameters.learning_rate` | `hyperparameters.learning_rate` | 0.0002 (2e-05 for method full)" in text
    assert "| `method.lora.r` | `hyperparameters.lora_r` | `16` |" in text
