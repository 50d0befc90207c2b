"""Where engine tasks run: in this process (small jobs) or as Ray tasks (GPU when there is one).

Both implement ``ModelRunner``. The in-process runner checks for cancellation after every batch;
the Ray runner polls the task and cancels it (``ray.cancel``) when the evaluation is cancelled.
Engine progress inside a Ray task is not streamed back: events mark the task's start and end.

A Ray task gets the model and adapter by store reference (``StoredFolder``), never a path of this
pod: the worker fetches them from the object store into its own cache
(``TUNEFORGE_MODEL_CACHE_DIR``, keyed by the file list's sha256) and checks every file, with its
own credentials (``TUNEFORGE_S3_ACCESS_KEY``/``_SECRET_KEY`` in the Ray pods). The examples (at
most ``TUNEFORGE_EVAL_MAX_SAMPLES`` per dataset) travel in the task itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from tuneforge.common.errors import Cancelled, FailedPrecondition
from tuneforge.common.ray_connection import connect, lost
from tuneforge.common.storage.refs import StoredFolder
from tuneforge.evaluation.domain.ports import ModelTask, ProgressFn

log = logging.getLogger(__name__)

# The engine holds one model at a time per process: tasks of concurrent evaluations queue here.
_ENGINE_LOCK = threading.Lock()


def _task_kwargs(task: ModelTask) -> dict[str, Any]:
    return {
        "model_dir": task.model_dir, "adapter_dir": task.adapter_dir, "examples": task.examples,
        "metrics": task.metrics, "generation": dict(task.generation), "max_length": task.max_length,
        "stride": task.stride, "prefer_gpu": task.prefer_gpu,
    }


class InProcessRunner:
    """Runs the engine in this process, one task at a time."""

    name = "in-process"
    reads_local_folders = True

    def run(self, task: ModelTask, progress: ProgressFn, cancelled: Callable[[], bool]) -> dict[str, Any]:
        """Run the task; ``Cancelled`` is raised from the next batch after a cancel."""
        from tuneforge.engine.evaluate.job import run_task

        def report(done: int, total: int, _phase: str) -> None:
            if cancelled():
                raise Cancelled("cancelled")
            progress(done, total)

        with _ENGINE_LOCK:
            if cancelled():
                raise Cancelled("cancelled")
            return run_task(**_task_kwargs(task), progress=report)


def _ray_entry(kwargs: dict[str, Any], model: StoredFolder, adapter: StoredFolder | None) -> dict[str, Any]:
    """Inside the Ray worker: fetch the folders by reference, then run the engine on them."""
    from tuneforge.engine.evaluate.job import run_task
    from tuneforge.engine.models.registry import fetch_folder

    model_dir = fetch_folder(model, "model")
    adapter_dir = fetch_folder(adapter, "model.adapter") if adapter is not None else None
    return run_task(**kwargs, model_dir=str(model_dir), adapter_dir=str(adapter_dir) if adapter_dir else None)


class RayRunner:
    """Runs each task as a Ray task (``num_gpus`` when the cluster has GPUs)."""

    name = "ray"
    reads_local_folders = False

    def __init__(self, address: str, *, num_cpus: float = 1, num_gpus: float = 0, poll_s: float = 0.5) -> None:
        self._address, self._cpus, self._gpus, self._poll = address, num_cpus, num_gpus, poll_s

    def _connect(self) -> Any:
        return connect(self._address, "TUNEFORGE_EVAL_RAY_ADDRESS")

    def run(self, task: ModelTask, progress: ProgressFn, cancelled: Callable[[], bool]) -> dict[str, Any]:
        """Submit, wait (polling for cancellation), return the task's outputs."""
        if task.model_source is None:
            raise FailedPrecondition(
                "the model is a base model on the evaluation service's own disk (TUNEFORGE_MODELS_DIR), which Ray "
                "workers cannot read: register it in the object store (python -m tuneforge.engine.models import) "
                "or evaluate fewer samples than TUNEFORGE_EVAL_INLINE_THRESHOLD_SAMPLES to run in the service")
        ray = self._connect()
        try:
            return self._run(ray, task, progress, cancelled)
        except ConnectionError as exc:  # the connection broke mid-task: the next evaluation connects anew
            if isinstance(exc, ray.exceptions.RayError):
                raise  # the task's own ConnectionError (ray.get re-raises it as that type): not the link
            raise lost(self._address, exc, "TUNEFORGE_EVAL_RAY_ADDRESS", during="during the evaluation") from exc

    def _run(self, ray: Any, task: ModelTask, progress: ProgressFn, cancelled: Callable[[], bool]) -> dict[str, Any]:
        remote = ray.remote(num_cpus=self._cpus, num_gpus=self._gpus, max_retries=0)(_ray_entry)
        kwargs = {k: v for k, v in _task_kwargs(task).items() if k not in ("model_dir", "adapter_dir")}
        ref = remote.remote({**kwargs, "prefer_gpu": self._gpus > 0}, task.model_source, task.adapter_source)
        progress(0, 1)
        while True:
            ready, _ = ray.wait([ref], timeout=self._poll)
            if ready:
                break
            if cancelled():
                ray.cancel(ref, force=True)
                raise Cancelled("cancelled")
        out = ray.get(ref)
        progress(1, 1)
        return out
