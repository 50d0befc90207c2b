"""What the engine tells its caller while it trains: events carrying metrics, and the final result.

The training service turns ``EngineEvent``s into job events; ``python -m tuneforge.engine`` prints
them as JSON lines. Both types hold only plain values so that they pickle across Ray workers.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


class EventKind(enum.Enum):
    """What happened."""

    STARTED = "started"
    STEP = "step"
    EVAL = "eval"
    CHECKPOINT = "checkpoint"
    RESUMED = "resumed"
    EARLY_STOPPED = "early_stopped"
    FINISHED = "finished"


@dataclass(frozen=True)
class EngineEvent:
    """One progress report.

    Attributes:
        kind: what happened.
        step: optimizer steps completed so far.
        metrics: numbers for this event (``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``,
            ``samples_per_s``, ``peak_memory_bytes``, ``eval_loss``, ``eval_perplexity`` ...).
        message: a short human-readable note (never a secret).
        uri: the checkpoint URI for CHECKPOINT and RESUMED events.
    """

    kind: EventKind
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    uri: str = ""

    def to_json(self) -> str:
        """One JSON line (what the command-line entry point prints)."""
        data = asdict(self)
        data["kind"] = self.kind.value
        return json.dumps(data, sort_keys=True)


class RunStatus(enum.Enum):
    """How a run ended."""

    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class TrainingResult:
    """The outcome of ``run_training``.

    Attributes:
        status: completed, early-stopped or cancelled.
        steps: optimizer steps completed.
        metrics: the last step's metrics plus the last evaluation's.
        last_checkpoint_uri: the newest complete checkpoint ('' when none was written).
        best_checkpoint_uri: the checkpoint with the best eval metric ('' without evaluation).
        resumed_from_uri: the checkpoint this run resumed from ('' for a fresh start).
    """

    status: RunStatus
    steps: int
    metrics: dict[str, float]
    last_checkpoint_uri: str = ""
    best_checkpoint_uri: str = ""
    resumed_from_uri: str = ""


EventCallback = Callable[[EngineEvent], None]
