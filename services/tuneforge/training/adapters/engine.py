"""The engine as the training domain sees it: ``tuneforge.engine.api.run_training`` in this process.

One worker trains in the calling thread (a worker thread of the service's bounded job pool); more
workers, or a configured Ray address, go through the engine's Ray path (Ray Train ``TorchTrainer``
with DeepSpeed ZeRO; ``resources.max_failures`` becomes Ray's ``FailureConfig``). The engine is
imported lazily, so the service starts without loading torch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tuneforge.engine.spec import TrainingSpec
from tuneforge.training.domain.ports import Outcome, Progress


class EngineRunner:
    """Implements ``TrainingEngine``."""

    def run(self, spec: TrainingSpec, on_progress: Callable[[Progress], None],
            cancel: threading.Event) -> Outcome:
        """Train; resumes from the run's latest complete checkpoint when there is one."""
        from tuneforge.engine.api import EngineEvent, run_training

        def forward(event: EngineEvent) -> None:
            on_progress(Progress(event.kind.value, event.step, dict(event.metrics), event.message, event.uri))

        result = run_training(spec, on_event=forward, cancel=cancel)
        return Outcome(result.status.value, result.steps, dict(result.metrics), result.last_checkpoint_uri,
                       result.best_checkpoint_uri)
