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
local staging folder; a worker on another node (no shared filesystem, e.g. Ray pods on Kubernetes)
sends what it wrote there (its RNG stream, its ZeRO partition) to worker 0 through the store, under
``<run>/.parts/step-<N>/rank<R>/``, which worker 0 downloads into its folder and removes before it
uploads the checkpoint. Restore downloads per worker.

A run resumes only with the batch geometry that wrote the checkpoint: the same rows per optimizer
step (``num_workers x micro_batch_size x gradient_accumulation_steps``), else the data position
and the batch size would silently change. Another worker count with the same rows per step resumes
weights, scheduler, RNG and data position; optimizer state that cannot be re-split comes back
fresh, which ``resume_note`` says (and the loop reports on its RESUMED event).
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

from tuneforge.common.errors import InvalidInput, TuneforgeError
from tuneforge.engine.train import _artifacts
from tuneforge.engine.train.position import StepPlan
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
        # Checkpoints are named without the store's query (endpoint options), as every service
        # names objects (s3://bucket/key): the query belongs to the store, not inside a key's URI.
        self.base_uri = checkpoint_uri.split("?", 1)[0].rstrip("/")
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
        self.resume_note = ""

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
        # Worker 0's mark beside its folder: a worker that does not see it writes on another node.
        mark = self.staging / f"step-{step}.rank0"
        parts = f"{self.run_root}/.parts/step-{step}/"
        if runtime.rank == 0:
            shutil.rmtree(local, ignore_errors=True)
            local.mkdir(parents=True)
            mark.touch()
            self.store.delete_prefix(parts)
        runtime.barrier()
        elsewhere = runtime.rank != 0 and not mark.exists()
        if elsewhere:
            shutil.rmtree(local, ignore_errors=True)
            local.mkdir(parents=True)
        runtime.save_model(local / MODEL_DIR)
        runtime.save_training_state(local)
        save_rng(local, runtime.rank)
        if elsewhere:
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                self.store.put_file(f"{parts}rank{runtime.rank}/{path.relative_to(local).as_posix()}", path)
            shutil.rmtree(local, ignore_errors=True)
        if runtime.rank == 0:
            state.checkpoints = [c for c in state.checkpoints if c["step"] != step]
            state.checkpoints.append({"step": step, "metric": metric})
            self._write_metadata(local, state)
        runtime.barrier()
        if runtime.rank == 0:
            self._gather_parts(parts, local)
            mark.unlink(missing_ok=True)
            extra = {"step": step, "metrics": state.metrics, "run_name": self.run_name}
            _artifacts.write(self.store, local, self.prefix(step), extra)
            shutil.rmtree(local, ignore_errors=True)
            self._prune(state)
        runtime.barrier()
        return self.uri(step)

    def _gather_parts(self, parts: str, local: Path) -> None:
        """Worker 0: the files other nodes' workers sent through the store, into ``local``."""
        for info in list(self.store.list(parts)):
            rel = info.key[len(parts):].split("/", 1)[1]  # drop rank<R>/
            target = local / rel
            if not target.exists():  # worker 0's own copy of a shared file wins
                target.parent.mkdir(parents=True, exist_ok=True)
                self.store.get_file(info.key, target, verify=True)
        self.store.delete_prefix(parts)

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

    def resume(self, runtime: Runtime, plan: StepPlan | None = None) -> TrainerState | None:
        """Restore weights, optimizer, scheduler, scaler, RNG and data position from the latest
        complete checkpoint (all workers call this); None when there is none.

        Args:
            runtime: this worker's backend.
            plan: this run's step geometry; when given, a checkpoint written with another number
                of rows per optimizer step is refused before anything is loaded.

        Raises:
            InvalidInput: the checkpoint's rows per step differ from ``plan``'s, naming
                ``resources.num_workers`` (or the batch setting that changed) and the fix.
        """
        found = self.latest_complete() if runtime.rank == 0 else None
        # Worker 0 decides; the others learn the step through a sum (they contribute 0).
        (agreed,) = runtime.all_reduce_sum([float(found + 1) if found is not None else 0.0])
        if agreed == 0:
            return None
        step = int(agreed) - 1
        local = self.staging / f"restore-{step}-rank{runtime.rank}"
        shutil.rmtree(local, ignore_errors=True)
        try:
            _artifacts.download(self.store, self.prefix(step), local)
            state = TrainerState.load(local)
            if plan is not None:
                check_geometry(state, plan, self.uri(step))
            runtime.load_model(local / MODEL_DIR)
            self.resume_note = runtime.load_training_state(local) or ""
            load_rng(local, runtime.rank)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        self.resumed_uri = self.uri(step)
        log.info("resumed from %s (step %d)", self.resumed_uri, step)
        if self.resume_note and runtime.rank == 0:
            log.warning("resumed from %s: %s", self.resumed_uri, self.resume_note)
        return state

    def cleanup(self) -> None:
        """Remove the local staging folder."""
        shutil.rmtree(self.staging, ignore_errors=True)


def check_geometry(state: TrainerState, plan: StepPlan, uri: str) -> None:
    """Refuse to resume ``state`` with a plan that consumes another number of rows per step.

    Checkpoints that predate ``rows_per_step`` are checked through their data position.

    Raises:
        InvalidInput: naming ``resources.num_workers`` when the worker count changed (else the
            batch settings), the checkpoint's geometry and the fix.
    """
    saved_rows, saved_world = state.rows_per_step, state.world_size
    if saved_rows:
        if saved_rows == plan.rows_per_step:
            return
    elif plan.position(state.global_step) == state.position:
        return
    was = f"{saved_rows} rows per optimizer step" if saved_rows else f"data position {state.position}"
    if saved_world:
        was += f" on {saved_world} workers"
    fixes = []
    if saved_world and saved_world != plan.world_size:
        fixes.append(f"set resources.num_workers back to {saved_world}")
    per_worker = plan.micro_batch * plan.world_size
    if saved_rows and saved_rows % per_worker == 0:
        fixes.append(f"keep {saved_rows} rows per step with {plan.world_size} workers by setting "
                     f"hyperparameters.gradient_accumulation_steps to {saved_rows // per_worker}")
    fixes.append("or start a new run (another output.run_name)")
    field = ("resources.num_workers" if saved_world != plan.world_size or not saved_world
             else "hyperparameters.gradient_accumulation_steps")
    raise InvalidInput.field_error(
        field,
        f"checkpoint {uri} was written with {was}; this run takes {plan.rows_per_step} (num_workers "
        f"{plan.world_size} x micro_batch_size {plan.micro_batch} x gradient_accumulation_steps "
        f"{plan.grad_accum}), so resuming would change the batch size and skip or repeat data: "
        + "; ".join(fixes),
    )
