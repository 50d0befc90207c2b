"""Evaluation domain types: what is asked (``EvaluationSpec``) and what is stored (``Evaluation``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tuneforge.common.errors import FieldViolation, InvalidInput

MAX_STOP_STRINGS = 16  # generation stop strings per evaluation


class Metric(enum.Enum):
    """Metric families (the API's ``Metric`` enum, by value)."""

    PERPLEXITY = 1
    BLEU = 2
    ROUGE = 3
    EXACT_MATCH = 4
    TOKEN_F1 = 5
    MULTIPLE_CHOICE = 6
    CLASSIFICATION = 7
    SAFETY = 8
    FORGETTING = 9
    REWARD_ACCURACY = 10
    REWARD_WIN_RATE = 11

    @property
    def needs_generation(self) -> bool:
        """Whether the metric scores generated text."""
        return self in GENERATION_METRICS


GENERATION_METRICS = frozenset(
    {Metric.BLEU, Metric.ROUGE, Metric.EXACT_MATCH, Metric.TOKEN_F1, Metric.CLASSIFICATION, Metric.SAFETY,
     Metric.REWARD_WIN_RATE}
)

LOWER_IS_BETTER = frozenset({"perplexity", "mean_loss", "unsafe_rate", "refusal_rate"})
"""Metric names where a smaller value is the better one (all others: larger is better)."""


class State(enum.Enum):
    """Lifecycle of an evaluation (the API's ``OperationState``, by value)."""

    QUEUED = 1
    RUNNING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5

    @property
    def terminal(self) -> bool:
        """Whether the evaluation has ended."""
        return self in (State.SUCCEEDED, State.FAILED, State.CANCELLED)


class Role(enum.Enum):
    """Which model of an evaluation a result belongs to."""

    MODEL = "model"
    BASELINE = "baseline"


@dataclass(frozen=True)
class ModelRef:
    """A base model (registered name or object-store prefix) or a checkpoint id; exactly one."""

    base_model: str = ""
    checkpoint_id: str = ""

    @property
    def label(self) -> str:
        """A short human label."""
        return f"checkpoint:{self.checkpoint_id}" if self.checkpoint_id else f"base:{self.base_model}"

    def to_dict(self) -> dict[str, str]:
        """JSON form."""
        return {"base_model": self.base_model, "checkpoint_id": self.checkpoint_id}


@dataclass(frozen=True)
class DatasetRef:
    """A dataset version and split to evaluate on.

    An empty ``split`` means the ``test`` split of a version that was split by curation, and
    every row of a version that never was (an evaluation set uploaded on its own).
    """

    version_id: str
    split: str = ""
    max_samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"version_id": self.version_id, "split": self.split, "max_samples": self.max_samples}


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding options (the engine's ``GenerationSettings`` mirrors these)."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    batch_size: int = 8


@dataclass(frozen=True)
class Limits:
    """Server-side caps every evaluation obeys."""

    max_samples: int = 1000
    max_new_tokens: int = 512
    max_datasets: int = 8
    inline_threshold_samples: int = 200
    """Jobs with at most this many examples x models run in-process; larger ones go to Ray (if set)."""


@dataclass(frozen=True)
class EvaluationSpec:
    """What the caller asked for, validated by ``validate``."""

    model: ModelRef
    datasets: tuple[DatasetRef, ...]
    metrics: tuple[Metric, ...]
    baseline: ModelRef | None = None
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    forgetting_dataset: DatasetRef | None = None
    forgetting_threshold: float = 1.1
    mark_best_by: str = ""
    request_id: str = ""
    reward_model: ModelRef | None = None

    def validate(self, limits: Limits) -> None:
        """Raise ``InvalidInput`` listing every problem at once (fields named as in the API)."""
        v: list[FieldViolation] = []
        v += _model_violations("model", self.model)
        if self.baseline is not None:
            v += _model_violations("baseline", self.baseline)
        if not self.datasets and self.metrics != (Metric.FORGETTING,):
            v.append(FieldViolation("datasets", "give at least one dataset version to evaluate on"))
        if len(self.datasets) > limits.max_datasets:
            v.append(FieldViolation("datasets", f"{len(self.datasets)} datasets: at most {limits.max_datasets}"))
        for i, d in enumerate(self.datasets):
            v += _dataset_violations(f"datasets[{i}]", d, limits)
        if not self.metrics:
            v.append(FieldViolation("metrics", "give at least one metric (e.g. METRIC_PERPLEXITY)"))
        v += self._forgetting_violations(limits)
        v += self._win_rate_violations()
        if Metric.REWARD_ACCURACY in self.metrics and len(self.metrics) > 1:
            others = ", ".join(f"METRIC_{m.name}" for m in self.metrics if m is not Metric.REWARD_ACCURACY)
            v.append(FieldViolation("metrics", f"METRIC_REWARD_ACCURACY scores a reward model, which cannot compute "
                                    f"{others}: request it in an evaluation of its own"))
        g = self.generation
        if not 1 <= g.max_new_tokens <= limits.max_new_tokens:
            v.append(FieldViolation("generation.max_new_tokens", f"must be in 1..{limits.max_new_tokens}"))
        if not 1 <= g.batch_size <= 256:
            v.append(FieldViolation("generation.batch_size", "must be in 1..256"))
        if g.do_sample and g.temperature <= 0:
            v.append(FieldViolation("generation.temperature", "must be > 0 when sampling"))
        if not 0 <= g.temperature <= 2:
            v.append(FieldViolation("generation.temperature", "must be in 0..2"))
        if g.seed < 0:
            v.append(FieldViolation("generation.seed", "must be 0 or more"))
        if len(g.stop) > MAX_STOP_STRINGS:
            v.append(FieldViolation("generation.stop", f"{len(g.stop)} stop strings: at most {MAX_STOP_STRINGS}"))
        if not 0 < g.top_p <= 1:
            v.append(FieldViolation("generation.top_p", "must be in (0, 1]"))
        if self.mark_best_by and not self.model.checkpoint_id:
            v.append(FieldViolation("mark_best_by", "only a checkpoint can become 'best': set model.checkpoint_id"))
        if self.mark_best_by and self.baseline is None:
            v.append(FieldViolation("mark_best_by", "'best' moves when the model beats a baseline: set baseline"))
        if v:
            raise InvalidInput.of(v, "evaluation")

    def _win_rate_violations(self) -> list[FieldViolation]:
        if Metric.REWARD_WIN_RATE not in self.metrics:
            return []
        v = []
        if self.baseline is None:
            v.append(FieldViolation("baseline", "METRIC_REWARD_WIN_RATE compares two models: set the base as baseline"))
        if self.reward_model is None:
            v.append(FieldViolation("reward_model", "METRIC_REWARD_WIN_RATE needs a judge: name a reward-model "
                                    "checkpoint (a job with OBJECTIVE_REWARD_MODEL)"))
        else:
            v += _model_violations("reward_model", self.reward_model)
        return v

    def _forgetting_violations(self, limits: Limits) -> list[FieldViolation]:
        if Metric.FORGETTING not in self.metrics:
            return []
        v = []
        if self.baseline is None:
            v.append(FieldViolation("baseline", "METRIC_FORGETTING compares two models: set the base as baseline"))
        if self.forgetting_dataset is None:
            v.append(FieldViolation("forgetting_dataset", "METRIC_FORGETTING needs a general held-out dataset"))
        else:
            v += _dataset_violations("forgetting_dataset", self.forgetting_dataset, limits)
        if not 1 <= self.forgetting_threshold <= 100:
            v.append(FieldViolation("forgetting_threshold", "must be in 1..100 (e.g. 1.1 = 10% worse perplexity)"))
        return v


def _model_violations(name: str, ref: ModelRef) -> list[FieldViolation]:
    if bool(ref.base_model) == bool(ref.checkpoint_id):
        return [FieldViolation(name, "set exactly one of base_model or checkpoint_id")]
    return []


def _dataset_violations(name: str, d: DatasetRef, limits: Limits) -> list[FieldViolation]:
    v = []
    if not d.version_id:
        v.append(FieldViolation(f"{name}.version_id", "is empty: give a dataset version id"))
    if d.max_samples < 0 or d.max_samples > limits.max_samples:
        v.append(FieldViolation(f"{name}.max_samples", f"must be in 0..{limits.max_samples} (0 = server limit)"))
    return v


@dataclass(frozen=True)
class MetricResult:
    """One metric value of one model on one dataset."""

    role: Role
    dataset_version_id: str
    name: str
    value: float
    count: int
    ci_low: float | None = None
    ci_high: float | None = None


@dataclass(frozen=True)
class ErrorInfo:
    """Why an evaluation failed (family code, safe message, offending field)."""

    code: str
    message: str
    field: str = ""


@dataclass
class Evaluation:
    """A stored evaluation."""

    id: str
    tenant: str
    spec: EvaluationSpec
    state: State
    created_at: datetime
    results: list[MetricResult] = field(default_factory=list)
    report_key: str = ""
    report_uri: str = ""
    error: ErrorInfo | None = None
    ended_at: datetime | None = None
    forgetting_flagged: bool = False
    placement: str = ""


@dataclass(frozen=True)
class ProgressEvent:
    """One progress event of an evaluation (sequence numbers start at 1)."""

    sequence: int
    state: State
    done: int
    total: int
    message: str
    time: datetime
