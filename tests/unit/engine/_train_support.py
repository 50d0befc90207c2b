"""Shared helpers for the engine training tests: tiny data files and specs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.engine.spec import TrainingSpec, load_spec

QA = [
    ("What is two plus two?", "Four."),
    ("Name a colour.", "Blue."),
    ("Say hello.", "Hello!"),
    ("What is the capital of France?", "Paris is the capital of France."),
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def chat_rows(n: int, task: str | None = None) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        row = {"kind": "chat", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        if task:
            row["task"] = task
        out.append(row)
    return out


def text_rows(n: int) -> list[dict[str, Any]]:
    return [{"kind": "text", "text": f"the cat reads a book. the robot counts {i % 5} numbers."} for i in range(n)]


def preference_rows(n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        out.append({
            "kind": "preference",
            "prompt": [{"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": a}],
            "rejected": [{"role": "assistant", "content": "I do not know."}],
        })
    return out


def make_spec(model_dir: Path, tmp: Path, *, objective: str = "sft", method: str = "lora",
              rows: list[dict[str, Any]] | None = None, lora_dropout: float = 0.0,
              **overrides: Any) -> TrainingSpec:
    """A small, fast spec over a jsonl file; ``overrides`` are merged per section."""
    if rows is None:
        rows = {"sft": chat_rows, "pretrain": text_rows, "dpo": preference_rows, "orpo": preference_rows,
                "simpo": preference_rows}[objective](16)
    data_file = write_jsonl(tmp / "data" / "train.jsonl", rows)
    raw: dict[str, Any] = {
        "tenant": "test",
        "model": {"path": str(model_dir)},
        "data": {"train": {"path": str(data_file)}, "max_seq_length": 64},
        "method": {"kind": method, "lora": {"r": 8, "alpha": 16, "dropout": lora_dropout},
                   "prefix": {"num_virtual_tokens": 4}},
        "objective": {"kind": objective},
        "hyperparameters": {"learning_rate": 1e-2 if method != "full" else 2e-3, "max_steps": 6,
                            "micro_batch_size": 2, "gradient_accumulation_steps": 2,
                            "lr_scheduler": "constant", "warmup_steps": 0, "seed": 7},
        "output": {"checkpoint_uri": f"file://{tmp}/ckpt", "run_name": "run"},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(raw.get(section), dict):
            raw[section] = {**raw[section], **values}
        else:
            raw[section] = values
    return load_spec(raw)
