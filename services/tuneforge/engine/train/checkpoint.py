"""Checkpoints: save, retain (best N + latest), find the latest complete one and resume from it.

Layout of one checkpoint, ``<checkpoint_uri>/<run_name>/step-<N>/`` (manifest written last by the
shared ``CheckpointWriter``, so a partial upload is never mistaken for a checkpoint):

    model/                    safetensors weights (full) or adapter folder (peft), tokenizer
    training_state*.pt        optimizer, scheduler, grad scaler (torch.save of tensors/numbers)
    deepspeed/state/*.pt      DeepSpeed runs: DeepSpeed's own checkpoint (each worker's ZeRO partition
                              of fp32 master weights and Adam moments), loaded weights_only
    rng_state_rank<R>.pt      python, numpy, torch RNG streams of each worker
    trainer_state.json        step, data position, early stopping, retained checkpoints, metrics
    spec.json                 the resolved training spec
    metrics.json              the metrics at this step

Every worker calls ``save`` and ``resume``; worker 0 uploads and decides. Workers write into one
local staging folder, which must therefore be on a filesystem they share (one node, or a shared
volume); restore downloads per worker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.engine.train import _artifacts
from tuneforge.engine.train.runtime import Runtime
from tuneforge.engine.train.state import TrainerState, load_rng, save_rng

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d+)$")
MODEL_DIR = "model"


class CheckpointManager:
    """Saves and restores a run's checkpoints in an object store.

    Args:
        checkpoint_uri: store URI (``file:///...`` or ``s3://...``) holding every run's checkpoints.
        run_name: this run's folder under ``checkpoint_uri``; re-running with the same name resumes.
        key_prefix: a folder inside the store above the run's folder (e.g. the tenant's checkpoint
            area ``tenants/<tenant>/checkpoints/``), so that the checkpoint service sees the files.
        keep_best: keep this many checkpoints with the best score (lower is better; the loop passes
            the metric negated when greater is better).
        keep_latest: and this many of the newest.
        spec: the resolved spec, saved as ``spec.json`` beside each checkpoint.
        save_extra: writes extra files into the model folder (e.g. the tokenizer) on worker 0.
        staging_dir: local scratch space (a temp folder when None).
        store_options: passed to ``open_object_store`` (credentials for s3).
    """

    def __init__(
        self,
        checkpoint_uri: str,
        run_name: str,
        *,
        key_prefix: str = "",
        keep_best: int = 1,
        keep_latest: int = 1,
        spec: dict[str, Any] | None = None,
        save_extra: Callable[[Path], None] | None = None,
        staging_dir: Path | None = None,
        store_options: dict[str, Any] | None = None,
    ) -> None:
        self.store = _artifacts.open_store(checkpoint_uri, store_options or {})
        self.base_uri = checkpoint_uri.rstrip("/")
        self.run_name = run_name
        self.run_root = f"{key_prefix.strip('/')}/{run_name}" if key_prefix.strip("/") else run_name
        self.keep_best = keep_best
        self.keep_latest = max(1, keep_latest)
        self.spec = spec or {}
        self.save_extra = save_extra
        # Workers of one run must agree on the folder: derive it from the run's identity.
        digest = hashlib.sha256(f"{self.base_uri}/{self.run_root}".encode()).hexdigest()[:16]
        self.staging = Path(staging_dir or Path(tempfile.gettempdir()) / "tuneforge-staging" / digest)
        self.resumed_uri = ""

    def prefix(self, step: int) -> str:
        """Store prefix of the checkpoint at ``step``."""
        return f"{self.run_root}/step-{step}"

    def uri(self, step: int) -> str:
        """Full URI of the checkpoint at ``step``."""
        return f"{self.base_uri}/{self.prefix(step)}/"

    def steps(self) -> list[int]:
        """Steps with a checkpoint folder in the store (complete or not), ascending."""
        found = set()
        for name in _artifacts.child_dirs(self.store, f"{self.run_root}/"):
            m = _STEP_DIR.match(name)
            if m:
                found.add(int(m.group(1)))
        return sorted(found)

    def latest_complete(self) -> int | None:
        """The newest step whose checkpoint has a manifest and verifies; damaged ones are skipped."""
        for step in reversed(self.steps()):
            try:
                _artifacts.verify(self.store, self.prefix(step))
            except TuneforgeError as exc:
                log.warning("skipping checkpoint %s: %s", self.uri(step), exc)
                continue
            return step
        return None

    # -- save ---------------------------------------------------------------------------------

    def save(self, runtime: Runtime, state: TrainerState, metric: float | None) -> str:
        """Write the checkpoint of ``state.global_step`` (all workers call this); returns its URI."""
        step = state.global_step
        local = self.staging / f"step-{step}"
        if runtime.rank == 0:
            shutil.rmtree(local, ignore_errors=True)
            local.mkdir(parents=True)
        runtime.barrier()
        runtime.save_model(local / MODEL_DIR)
        runtime.save_training_state(local)
        save_rng(local, runtime.rank)
        if runtime.rank == 0:
            state.checkpoints = [c for c in state.checkpoints if c["step"] != step]
            state.checkpoints.append({"step": step, "metric": metric})
            self._write_metadata(local, state)
        runtime.barrier()
        if runtime.rank == 0:
            extra = {"step": step, "metrics": state.metrics, "run_name": self.run_name}
            _artifacts.write(self.store, local, self.prefix(step), extra)
            shutil.rmtree(local, ignore_errors=True)
            self._prune(state)
        runtime.barrier()
        return self.uri(step)

    def _write_metadata(self, local: Path, state: TrainerState) -> None:
        if self.save_extra is not None:
            self.save_extra(local / MODEL_DIR)
        state.save(local)
        (local / "spec.json").write_text(json.dumps(self.spec, indent=1, sort_keys=True, default=str))
        (local / "metrics.json").write_text(json.dumps(state.metrics, indent=1, sort_keys=True))

    def _keep(self, state: TrainerState) -> set[int]:
        newest = sorted((c["step"] for c in state.checkpoints), reverse=True)[: self.keep_latest]
        scored = sorted((c["metric"], c["step"]) for c in state.checkpoints if c["metric"] is not None)
        return set(newest) | {s for _m, s in scored[: self.keep_best]}

    def _prune(self, state: TrainerState) -> None:
        keep = self._keep(state)
        state.checkpoints = [c for c in state.checkpoints if c["step"] in keep]
        for step in self.steps():
            if step not in keep:
                _artifacts.delete(self.store, self.prefix(step))

    def best_uri(self, state: TrainerState) -> str:
        """URI of the retained checkpoint with the best score ('' when none was evaluated)."""
        scored = [(c["metric"], c["step"]) for c in state.checkpoints if c["metric"] is not None]
        return self.uri(min(scored)[1]) if scored else ""

    # -- resume -------------------------------------------------------------------------------

    def resume(self, runtime: Runtime) -> TrainerState | None:
        """Restore weights, optimizer, scheduler, scaler, RNG and data position from the latest
        complete checkpoint (all workers call this); None when there is none."""
        found = self.latest_complete() if runtime.rank == 0 else None
        # Worker 0 decides; the others learn the step through a sum (they contribute 0).
        (agreed,) = runtime.all_reduce_sum([float(found + 1) if found is not None else 0.0])
        if agreed == 0:
            return None
        step = int(agreed) - 1
        local = self.staging / f"restore-{step}-rank{runtime.rank}"
        shutil.rmtree(local, ignore_errors=True)
        _artifacts.download(self.store, self.prefix(step), local)
        runtime.load_model(local / MODEL_DIR)
        runtime.load_training_state(local)
        load_rng(local, runtime.rank)
        state = TrainerState.load(local)
        shutil.rmtree(local, ignore_errors=True)
        self.resumed_uri = self.uri(step)
        log.info("resumed from %s (step %d)", self.resumed_uri, step)
        return state

    def cleanup(self) -> None:
        """Remove the local staging folder."""
        shutil.rmtree(self.staging, ignore_errors=True)
