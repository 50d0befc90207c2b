"""Optional metric reporters: TensorBoard, MLflow, Weights & Biases. Off by default.

Public API:
    ReporterKind, WandbMode, ReporterConfig   what to report to and where
    build_reporter(config) -> Reporter        one reporter (its library imported only then)
    fan_out(on_event, reporters) -> callback  the caller's callback plus every reporter

A reporter is an ``EventCallback`` with ``close()``: STEP metrics go under ``train/``, EVAL
metrics under ``eval/``, each at the event's optimizer step. Reporters run where events arrive
(the driver under Ray), so workers never need the libraries. None of them needs a network:
TensorBoard writes event files (tensorboardX), MLflow logs to the tracking URI it is given
(``file://`` by default), and W&B runs ``offline`` (or ``disabled``) unless told otherwise.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tuneforge.common.errors import FailedPrecondition, InvalidInput
from tuneforge.engine.train.events import EngineEvent, EventCallback, EventKind

log = logging.getLogger(__name__)

_SECTIONS = {EventKind.STEP: "train", EventKind.EVAL: "eval"}


class ReporterKind(enum.Enum):
    """Where metrics go."""

    TENSORBOARD = "tensorboard"
    MLFLOW = "mlflow"
    WANDB = "wandb"


class WandbMode(enum.Enum):
    """W&B modes that need no network (``online`` must be asked for explicitly)."""

    OFFLINE = "offline"
    DISABLED = "disabled"
    ONLINE = "online"


@dataclass(frozen=True)
class ReporterConfig:
    """One reporter.

    Attributes:
        kind: tensorboard, mlflow or wandb.
        run_name: the run's name in the tracking tool.
        log_dir: TensorBoard event folder, W&B's local folder, and MLflow's default store
            (``file://<log_dir>/mlruns``).
        tracking_uri: MLflow tracking URI (overrides the ``log_dir`` default).
        project: MLflow experiment / W&B project.
        wandb_mode: offline (default), disabled, or online.
        credentials: W&B's WANDB_API_KEY, WANDB_BASE_URL, WANDB_ENTITY (from the job's integration
            secret); a given API key makes the run ``online``.
    """

    kind: ReporterKind
    run_name: str
    log_dir: Path | None = None
    tracking_uri: str = ""
    project: str = "tuneforge"
    wandb_mode: WandbMode = WandbMode.OFFLINE
    # W&B's WANDB_API_KEY / WANDB_BASE_URL / WANDB_ENTITY, from a secret: never printed (repr=False).
    credentials: Mapping[str, str] = field(default_factory=dict, repr=False)


class Reporter(Protocol):
    """An event callback that flushes and releases its resources on ``close``."""

    def __call__(self, event: EngineEvent) -> None: ...

    def close(self) -> None: ...


def _scalars(event: EngineEvent) -> dict[str, float] | None:
    section = _SECTIONS.get(event.kind)
    if section is None:
        return None
    return {f"{section}/{k}": float(v) for k, v in event.metrics.items()}


def _import(module: str, package: str, kind: ReporterKind) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FailedPrecondition(
            f"the {kind.value} reporter needs the {package!r} package, which is not installed: "
            f"pip install {package}, or drop the {kind.value} reporter"
        ) from exc


def _need_dir(config: ReporterConfig) -> Path:
    if config.log_dir is None:
        raise InvalidInput.field_error("reporters.log_dir", f"the {config.kind.value} reporter needs a log_dir")
    config.log_dir.mkdir(parents=True, exist_ok=True)
    return config.log_dir


class TensorBoardReporter:
    """Scalars into TensorBoard event files under ``log_dir/run_name`` (tensorboardX)."""

    def __init__(self, config: ReporterConfig) -> None:
        tbx = _import("tensorboardX", "tensorboardX", config.kind)
        self.log_dir = _need_dir(config) / config.run_name
        self._writer = tbx.SummaryWriter(logdir=str(self.log_dir))

    def __call__(self, event: EngineEvent) -> None:
        for tag, value in (_scalars(event) or {}).items():
            self._writer.add_scalar(tag, value, event.step)

    def close(self) -> None:
        self._writer.close()


class MlflowReporter:
    """Metrics into an MLflow run (``file://<log_dir>/mlruns`` unless ``tracking_uri`` is set)."""

    def __init__(self, config: ReporterConfig) -> None:
        self._mlflow = _import("mlflow", "mlflow", config.kind)
        uri = config.tracking_uri or (_need_dir(config) / "mlruns").resolve().as_uri()
        self._mlflow.set_tracking_uri(uri)
        self._mlflow.set_experiment(config.project)
        self._run = self._mlflow.start_run(run_name=config.run_name)

    def __call__(self, event: EngineEvent) -> None:
        values = _scalars(event)
        if values:
            self._mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=event.step)

    def close(self) -> None:
        self._mlflow.end_run()


class WandbReporter:
    """Metrics into a W&B run, offline (files under ``log_dir``) unless ``wandb_mode`` says otherwise."""

    def __init__(self, config: ReporterConfig) -> None:
        wandb = _import("wandb", "wandb", config.kind)
        folder = str(_need_dir(config)) if config.log_dir is not None else None
        creds = config.credentials
        mode = WandbMode.ONLINE if creds.get("WANDB_API_KEY") else config.wandb_mode
        settings = wandb.Settings(**{k: v for k, v in (("api_key", creds.get("WANDB_API_KEY")),
                                                        ("base_url", creds.get("WANDB_BASE_URL"))) if v})
        self._run = wandb.init(project=config.project, name=config.run_name, mode=mode.value, dir=folder,
                               entity=creds.get("WANDB_ENTITY") or None, settings=settings, reinit="create_new")

    def __call__(self, event: EngineEvent) -> None:
        values = _scalars(event)
        if values:
            self._run.log(values, step=event.step)

    def close(self) -> None:
        self._run.finish()


_BUILDERS: dict[ReporterKind, Callable[[ReporterConfig], Reporter]] = {
    ReporterKind.TENSORBOARD: TensorBoardReporter,
    ReporterKind.MLFLOW: MlflowReporter,
    ReporterKind.WANDB: WandbReporter,
}


def build_reporter(config: ReporterConfig) -> Reporter:
    """The reporter ``config`` asks for; its library is imported only now.

    Raises:
        FailedPrecondition: the library is not installed (names the package to install).
        InvalidInput: a reporter that needs ``log_dir`` got none.
    """
    return _BUILDERS[config.kind](config)


def fan_out(on_event: EventCallback | None, reporters: Sequence[Reporter]) -> EventCallback | None:
    """One callback that feeds ``on_event`` and every reporter; a failing reporter is logged, not fatal."""
    if not reporters:
        return on_event

    def emit(event: EngineEvent) -> None:
        if on_event is not None:
            on_event(event)
        for reporter in reporters:
            try:
                reporter(event)
            except Exception:  # a broken dashboard must not kill a training run
                log.exception("reporter %s failed on a %s event", type(reporter).__name__, event.kind.value)

    return emit
