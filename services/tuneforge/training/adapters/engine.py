"""The engine as the training domain sees it: ``tuneforge.engine.api.run_training`` in this process.

One worker trains in the calling thread (a worker thread of the service's bounded job pool); more
workers, or a configured Ray address, go through the engine's Ray path (Ray Train ``TorchTrainer``
with DeepSpeed ZeRO; ``resources.max_failures`` becomes Ray's ``FailureConfig``). The engine is
imported lazily, so the service starts without loading torch.

The job's integrations (``reporting.integrations``) become the engine's reporters here, where events
arrive: credentials are read from the named secret just before the run and handed to the reporter,
never stored in the spec or logged. TensorBoard writes into the work folder; its event files are
copied to the job's folder in the store (``tensorboard_prefix``) at every checkpoint and when the run
ends.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.engine.spec import IntegrationKind, TrainingSpec
from tuneforge.training.adapters.files import DirIntegrationSecrets, StoreJobFiles
from tuneforge.training.domain.files import tensorboard_prefix
from tuneforge.training.domain.ports import Outcome, Progress

log = logging.getLogger(__name__)


class EngineRunner:
    """Implements ``TrainingEngine``."""

    def __init__(self, files: StoreJobFiles | None = None, secrets: DirIntegrationSecrets | None = None,
                 work_dir: Path | None = None) -> None:
        self._files, self._secrets, self._work = files, secrets or DirIntegrationSecrets(None), work_dir

    def run(self, spec: TrainingSpec, on_progress: Callable[[Progress], None],
            cancel: threading.Event) -> Outcome:
        """Train; resumes from the run's latest complete checkpoint when there is one."""
        from tuneforge.engine.api import EngineEvent, EventKind, run_training

        board = self._board_dir(spec)

        def forward(event: EngineEvent) -> None:
            on_progress(Progress(event.kind.value, event.step, dict(event.metrics), event.message, event.uri))
            if board is not None and event.kind is EventKind.CHECKPOINT:
                self._publish_board(spec, board)

        try:
            result = run_training(spec, on_event=forward, cancel=cancel, reporters=self._reporters(spec, board))
        finally:
            if board is not None:
                self._publish_board(spec, board)
                shutil.rmtree(board, ignore_errors=True)
        return Outcome(result.status.value, result.steps, dict(result.metrics), result.last_checkpoint_uri,
                       result.best_checkpoint_uri)

    def _board_dir(self, spec: TrainingSpec) -> Path | None:
        kinds = {i.kind for i in spec.reporting.integrations}
        if not kinds or self._work is None:
            return None
        return self._work / "reporting" / spec.output.run_name

    def _reporters(self, spec: TrainingSpec, board: Path | None) -> list[Any]:
        from tuneforge.engine.api import ReporterConfig, ReporterKind

        out = []
        for integ in spec.reporting.integrations:
            secret = self._secrets.read(spec.tenant, integ.secret) if integ.secret else {}
            out.append(ReporterConfig(
                ReporterKind(integ.kind.value), integ.run_name or spec.output.run_name, log_dir=board,
                tracking_uri=secret.get("MLFLOW_TRACKING_URI", ""), project=integ.project,
                credentials={k: v for k, v in secret.items() if k.startswith("WANDB_")}))
        return out

    def _publish_board(self, spec: TrainingSpec, board: Path) -> None:
        """Copy the TensorBoard event files to the job's folder in the store (failures are logged)."""
        if self._files is None:
            return
        board_runs = [i.run_name or spec.output.run_name for i in spec.reporting.integrations
                      if i.kind is IntegrationKind.TENSORBOARD]
        prefix = tensorboard_prefix(spec.tenant, spec.output.run_name)
        try:
            for run in (board / name for name in board_runs):
                if run.is_dir():
                    self._files.upload_folder(prefix + run.name + "/", run)
        except (OSError, TuneforgeError) as exc:
            log.warning("could not copy the TensorBoard files of %s to the store: %s", spec.output.run_name, exc)
