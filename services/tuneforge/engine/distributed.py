"""Run a recipe on N Ray Train workers (TorchTrainer): DeepSpeed ZeRO 1-3, or DDP at stage 0.

Ray is started with explicit limits (CPUs, a small object store, no dashboard, a temp dir) or
joined by ``resources.ray_address``. Worker 0's events travel to the caller through a small
actor; cancellation travels back the same way. A failed worker group is restarted by Ray up to
``resources.max_failures`` times and the recipe resumes from the latest complete checkpoint.
"""

from __future__ import annotations

import contextvars
import logging
import os
import tempfile
import threading
import time
from typing import Any

import ray

from tuneforge.common import tracing
from tuneforge.common.errors import Internal, InvalidInput, TuneforgeError, Unavailable
from tuneforge.common.logging import configure_logging, current_log_context, log_context
from tuneforge.common.ray_connection import LOCK, RAY_UNREACHABLE, forget, lost
from tuneforge.engine.spec import TrainingSpec
from tuneforge.engine.train.events import EngineEvent, EventCallback, TrainingResult
from tuneforge.engine.train.faults import FAULT_ENV

# Driver environment variables the workers need (Ray workers do not inherit the driver's).
_FORWARDED_ENV = (FAULT_ENV, "TUNEFORGE_LOG_JSON", "TUNEFORGE_LOG_LEVEL")
STORAGE_ENV = "TUNEFORGE_RAY_STORAGE_PATH"
RAY_CONNECT_ATTEMPTS = 3
RAY_CONNECT_BACKOFF_S = 2.0

log = logging.getLogger(__name__)


@ray.remote(num_cpus=0)
class _Channel:
    """Events from worker 0 to the driver; the cancel flag from the driver to the workers."""

    def __init__(self) -> None:
        self.events: list[EngineEvent] = []
        self.cancelled = False
        self.result: TrainingResult | None = None

    def put(self, event: EngineEvent) -> None:
        self.events.append(event)

    def drain(self) -> list[EngineEvent]:
        out, self.events = self.events, []
        return out

    def cancel(self) -> None:
        self.cancelled = True

    def is_cancelled(self) -> bool:
        return self.cancelled

    def set_result(self, result: TrainingResult) -> None:
        self.result = result

    def get_result(self) -> TrainingResult | None:
        return self.result


class _RemoteCancel:
    """Looks like a ``threading.Event`` to the loop; asks the channel actor."""

    def __init__(self, channel: Any) -> None:
        self._channel = channel

    def is_set(self) -> bool:
        return bool(ray.get(self._channel.is_cancelled.remote()))


def _worker(config: dict[str, Any]) -> None:
    import ray.train

    from tuneforge.engine.api import recipe_for
    from tuneforge.engine.spec import load_spec

    os.environ.update(config["env"])
    spec = load_spec(config["spec"])
    channel = config["channel"]
    rank = ray.train.get_context().get_world_rank()
    # The worker's log lines carry the job's correlation fields (tenant, job id, the run's trace id) too.
    configure_logging(json_lines=os.environ.get("TUNEFORGE_LOG_JSON", "").lower() in ("1", "true"),
                      level=os.environ.get("TUNEFORGE_LOG_LEVEL", "INFO").upper())
    with log_context(**config.get("log", {})), tracing.continued(
            tracing.extract(config.get("trace", {})), "training.worker", {"tuneforge.rank": rank}):
        result = recipe_for(spec)(
            spec, on_event=lambda e: channel.put.remote(e), cancel=_RemoteCancel(channel)
        )
    if rank == 0:
        ray.get(channel.set_result.remote(result))


def ensure_ray(spec: TrainingSpec) -> None:
    """Join ``resources.ray_address`` or start a local Ray with explicit, small limits.

    Raises:
        Unavailable: (reason ``RAY_UNREACHABLE``) the cluster refused or did not answer
            ``RAY_CONNECT_ATTEMPTS`` connection attempts.
    """
    with LOCK:  # jobs of one service start together (after a drop, all at once): one connects
        if ray.is_initialized():
            return
        res = spec.resources
        if res.ray_address:
            _connect(res.ray_address)
            return
        _start_local_ray(res)


def _start_local_ray(res: Any) -> None:
    ray.init(
        num_cpus=res.num_workers * res.cpus_per_worker + 1,
        object_store_memory=res.object_store_memory_mb * 1024 * 1024,
        include_dashboard=False,
        _temp_dir=os.environ.get("RAY_TMPDIR") or tempfile.mkdtemp(prefix="ray-"),
        log_to_driver=True,
    )


def _connect(address: str) -> None:
    """``ray.init(address)``, tried again after a refused or dropped connection (a Ray head that is
    restarting, its client server busy under memory pressure) before the job is given up on."""
    delay = RAY_CONNECT_BACKOFF_S
    for attempt in range(1, RAY_CONNECT_ATTEMPTS + 1):
        try:
            ray.init(address=address)
            return
        except ConnectionError as exc:
            forget()
            if attempt == RAY_CONNECT_ATTEMPTS:
                raise Unavailable(
                    f"cannot connect to the Ray cluster at {address} ({RAY_CONNECT_ATTEMPTS} attempts; last: "
                    f"{type(exc).__name__}: {str(exc)[:300]}): check that the Ray head is running and that its "
                    "client port is reachable (TUNEFORGE_TRAIN_RAY_ADDRESS)", reason=RAY_UNREACHABLE) from exc
            log.warning("connecting to the Ray cluster at %s failed (%s: %s); attempt %d of %d in %.0fs",
                        address, type(exc).__name__, str(exc)[:300], attempt + 1, RAY_CONNECT_ATTEMPTS, delay)
            time.sleep(delay)  # backoff between connection attempts
            delay *= 2


def run_on_ray(
    spec: TrainingSpec, *, on_event: EventCallback | None = None, cancel: threading.Event | None = None
) -> TrainingResult:
    """Train on ``resources.num_workers`` Ray workers and return worker 0's result.

    Raises:
        Unavailable: (reason ``RAY_UNREACHABLE``) the Ray cluster could not be reached, or the
            connection to it dropped during the run; the caller may run the job again, and it
            resumes from its latest complete checkpoint.
    """
    ensure_ray(spec)
    try:
        return _run_on_ray(spec, on_event=on_event, cancel=cancel)
    except ConnectionError as exc:
        raise lost(spec.resources.ray_address or "", exc, "TUNEFORGE_TRAIN_RAY_ADDRESS", during="during the run") from exc


def _run_on_ray(
    spec: TrainingSpec, *, on_event: EventCallback | None, cancel: threading.Event | None
) -> TrainingResult:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    res = spec.resources
    storage_path, storage_filesystem = _storage()
    channel = _Channel.remote()  # type: ignore[attr-defined]  # @ray.remote adds .remote; ray ships no stub for it
    trace: dict[str, str] = {}
    tracing.inject(trace)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"spec": spec.resolved_dict(), "channel": channel,
                           "env": {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ},
                           "log": current_log_context(), "trace": trace},
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=res.use_gpu,
                                     resources_per_worker={"CPU": res.cpus_per_worker}),
        run_config=RunConfig(name=spec.output.run_name, storage_path=storage_path,
                             storage_filesystem=storage_filesystem,
                             failure_config=FailureConfig(max_failures=res.max_failures)),
    )
    done = threading.Event()
    # The pump hands events to the caller in the caller's context: its log fields and current span.
    pump = threading.Thread(target=contextvars.copy_context().run, args=(_pump, channel, on_event, cancel, done),
                            daemon=True)
    pump.start()
    try:
        _fit(trainer, res.max_failures)
    finally:
        done.set()
        pump.join()
    for event in ray.get(channel.drain.remote()):
        if on_event is not None:
            on_event(event)
    result = ray.get(channel.get_result.remote())
    if result is None:
        raise Internal("the Ray workers finished without a result: see the worker logs")
    return result


def _storage_path() -> str:
    """Where Ray Train keeps its run state: ``TUNEFORGE_RAY_STORAGE_PATH`` (a folder every node can
    write, or a bucket), else this machine's temp folder (a one-machine Ray)."""
    return os.environ.get(STORAGE_ENV) or os.path.join(tempfile.gettempdir(), "tuneforge-ray-results")


def _storage() -> tuple[str, Any]:
    """``(storage_path, storage_filesystem)`` for Ray Train's ``RunConfig``.

    A folder as is. An S3 URI in the object store's own form
    (``s3://bucket/prefix?endpoint=host:port&secure=false&region=r``, as ``TUNEFORGE_OBJECT_STORE_URI``)
    becomes a pyarrow S3 filesystem with the credentials of this process's
    ``TUNEFORGE_S3_ACCESS_KEY``/``_SECRET_KEY`` (or ``_FILE``) settings: Ray pods on different
    nodes share no folder, and pyarrow alone would look for ``AWS_*`` variables. Ray pickles the
    filesystem (keys included) to its controller and workers inside the cluster, never into a
    runtime_env or the dashboard.
    """
    from urllib.parse import parse_qs, urlsplit

    path = _storage_path()
    if not path.startswith("s3://"):
        return path, None
    from pyarrow import fs as pafs

    from tuneforge.engine.train._artifacts import _env_secret

    parts = urlsplit(path)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    unknown = set(query) - {"endpoint", "secure", "region"}
    if not parts.netloc or unknown:
        raise InvalidInput.field_error(
            STORAGE_ENV, f"{path.split('?')[0]}: use s3://bucket/prefix?endpoint=host:port[&secure=false][&region=r]"
            + (f" (unknown {sorted(unknown)})" if unknown else ""))
    secure = query.get("secure", "true").lower() not in ("false", "0", "no")
    filesystem = pafs.S3FileSystem(
        access_key=_env_secret("S3_ACCESS_KEY"), secret_key=_env_secret("S3_SECRET_KEY"),
        endpoint_override=query.get("endpoint"), scheme="https" if secure else "http",
        region=query.get("region") or "us-east-1")
    return f"{parts.netloc}{parts.path.rstrip('/')}", filesystem


def _fit(trainer: Any, max_failures: int) -> None:
    """``trainer.fit()``; an engine error from a worker is re-raised as itself, a crash as Unavailable."""
    from ray.train import TrainingFailedError
    from ray.train.v2.api.exceptions import WorkerGroupError

    try:
        trainer.fit()
    except WorkerGroupError as exc:
        for failure in exc.worker_failures.values():
            if isinstance(failure, TuneforgeError):
                raise failure from exc
        raise Unavailable(
            f"Ray training workers failed ({max_failures} restarts allowed): {exc._error_message[:500]}. "
            "Re-run with the same run_name to resume from the latest complete checkpoint, or raise "
            "resources.max_failures"
        ) from exc
    except TrainingFailedError as exc:
        raise Unavailable(f"Ray training failed: {str(exc)[:500]}; re-run with the same run_name to resume") from exc


def _pump(channel: Any, on_event: EventCallback | None, cancel: threading.Event | None, done: threading.Event) -> None:
    try:
        _pump_events(channel, on_event, cancel, done)
    except ConnectionError:  # the Ray connection dropped: the run itself reports it (RAY_UNREACHABLE)
        log.warning("the event pump lost its Ray connection", exc_info=True)


def _pump_events(channel: Any, on_event: EventCallback | None, cancel: threading.Event | None,
                 done: threading.Event) -> None:
    while not done.is_set():
        if cancel is not None and cancel.is_set():
            channel.cancel.remote()
        for event in ray.get(channel.drain.remote()):
            if on_event is not None:
                on_event(event)
        time.sleep(0.2)
