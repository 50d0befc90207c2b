"""The demo's training stage: run the engine, then register its checkpoints with the service.

This is what the training service will do for a job: build a ``TrainingSpec``, let the engine write
checkpoints straight into the tenant's checkpoint area of the object store (manifest last), and
register each committed checkpoint (sizes and sha256 from the engine's manifest) with the
checkpoint service, which verifies them before listing them.
"""

from __future__ import annotations

import os
from pathlib import Path

from google.protobuf import struct_pb2

from tuneforge.checkpoints.v1 import checkpoints_pb2 as ck
from tuneforge.client import Client
from tuneforge.common.storage import open_object_store
from tuneforge.common.storage.artifacts import list_artifacts, read_manifest

RUN_NAME = "demo-lora"


def say(step: str, text: str = "") -> None:
    """Print one demo line."""
    print(f"[demo] {step}{': ' if text else ''}{text}", flush=True)


def _spec(base_dir: Path, train: Path, val: Path, store_uri: str, prefix: str, steps: int) -> dict[str, object]:
    return {
        "tenant": "default",
        "model": {"path": str(base_dir)},
        "data": {"train": {"path": str(train)}, "validation": {"path": str(val)}, "max_seq_length": 96},
        "method": {"kind": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
        "objective": {"kind": "sft"},
        "hyperparameters": {"learning_rate": 2e-3, "max_steps": steps, "micro_batch_size": 4,
                            "lr_scheduler": "cosine", "warmup_steps": 2, "seed": 7},
        "schedule": {"eval_every_steps": max(steps // 2, 1), "save_every_steps": max(steps // 2, 1),
                     "keep_best_n": 1, "keep_latest_n": 1},
        "output": {"checkpoint_uri": store_uri, "checkpoint_prefix": prefix, "run_name": RUN_NAME},
    }


def train_and_register(client: Client, version_id: str, train: Path, val: Path, base_name: str,
                       models_dir: Path, run_dir: Path, steps: int) -> ck.Manifest:
    """Fine-tune with LoRA, register every committed checkpoint, return the last one's manifest."""
    from tuneforge.engine.api import EngineEvent, run_training
    from tuneforge.engine.spec import load_spec

    store_uri = os.environ.get("TUNEFORGE_OBJECT_STORE_URI") or f"file://{run_dir / 'data' / 'objects'}"
    prefix = "tenants/default/checkpoints/"
    spec = load_spec(_spec(models_dir / base_name, train, val, store_uri, prefix, steps))

    def on_event(event: EngineEvent) -> None:
        kind = event.kind.value
        if kind == "eval" or (kind == "step" and event.step % 5 == 0):
            shown = {k: round(v, 4) for k, v in event.metrics.items() if k in {"loss", "lr", "eval_loss"}}
            say("  train", f"step {event.step:>3} {kind:<4} {shown}")

    result = run_training(spec, on_event=on_event)
    say("train", f"{result.status.value} after {result.steps} steps; metrics {result.metrics}")
    store = open_object_store(store_uri)
    manifest = None
    for folder in list_artifacts(store, f"{prefix}{RUN_NAME}/"):
        engine_manifest = read_manifest(store, folder)
        extra = engine_manifest.extra
        config = struct_pb2.Struct()
        config.update(extra.get("spec", {}) if isinstance(extra.get("spec"), dict) else {})
        req = ck.RegisterCheckpointRequest(
            job_id=RUN_NAME, step=int(extra.get("step", 0)), kind=ck.CHECKPOINT_KIND_LORA,
            prefix=folder.removeprefix(prefix).rstrip("/"),
            files=[ck.FileEntry(path=f.path, size=f.size, sha256=f.sha256) for f in engine_manifest.files],
            metrics={k: float(v) for k, v in (extra.get("metrics") or {}).items()
                     if isinstance(v, int | float)},
            config=config,
            lineage=ck.Lineage(job_id=RUN_NAME, dataset_version_id=version_id, base_model=base_name))
        manifest = client.checkpoints.RegisterCheckpoint(req).manifest
        say("register", f"checkpoint {manifest.checkpoint_id} (step {manifest.step}, {len(manifest.files)} files)")
    if manifest is None:
        raise RuntimeError("the engine committed no checkpoint")
    return manifest
