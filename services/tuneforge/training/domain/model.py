"""The training domain's types: a job, its request, its status machine, its events and checkpoints.

The Enums mirror the API's enums by value (``JobStatus.RUNNING.value == JOB_STATUS_RUNNING``), so the
servicer converts with ``Enum(value)``. Nothing here imports grpc, sqlalchemy or ray.
"""

from __future__ import annotations

import enum
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tuneforge.common.errors import FailedPrecondition


class JobStatus(enum.Enum):
    """Where a job is in its life; SUCCEEDED, FAILED and CANCELLED are final."""

    VALIDATING = 1
    QUEUED = 2
    RUNNING = 3
    SUCCEEDED = 4
    FAILED = 5
    CANCELLED = 6

    @property
    def terminal(self) -> bool:
        """Whether the job has ended (nothing moves it any more)."""
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

# VALIDATING -> QUEUED -> RUNNING -> SUCCEEDED/FAILED/CANCELLED. RUNNING -> QUEUED is the re-queue of a
# job whose process stopped (it resumes from its latest checkpoint); any live state may fail or be cancelled.
TRANSITIONS: Mapping[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.RUNNING: frozenset({JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def check_transition(current: JobStatus, new: JobStatus) -> None:
    """Raise unless ``current -> new`` is a legal move.

    Raises:
        FailedPrecondition: an illegal transition (e.g. out of a final state), naming both states.
    """
    if new not in TRANSITIONS[current]:
        raise FailedPrecondition(
            f"a job cannot go from {current.name} to {new.name}: "
            + ("it has ended" if current.terminal else f"allowed next states are {sorted(s.name for s in TRANSITIONS[current])}"),
            reason="ILLEGAL_TRANSITION")


class Method(enum.Enum):
    """Fine-tuning method (API ``Method``)."""

    UNSPECIFIED = 0
    FULL = 1
    LORA = 2
    QLORA = 3
    PREFIX = 4
    PROMPT = 5


class Objective(enum.Enum):
    """Training objective (API ``Objective``)."""

    UNSPECIFIED = 0
    SFT = 1
    DPO = 2
    PRETRAIN = 3


class LrScheduler(enum.Enum):
    """Learning-rate schedule (API ``LrScheduler``); UNSPECIFIED means LINEAR."""

    UNSPECIFIED = 0
    LINEAR = 1
    COSINE = 2
    CONSTANT = 3


class Precision(enum.Enum):
    """Training precision (API ``Precision``); UNSPECIFIED means FP32 on CPU, BF16 on GPUs."""

    UNSPECIFIED = 0
    FP32 = 1
    FP16 = 2
    BF16 = 3


@dataclass(frozen=True)
class Hyperparameters:
    """As requested: zero values take the defaults documented in the proto (see ``specmap``)."""

    learning_rate: float = 0.0
    lr_scheduler: LrScheduler = LrScheduler.UNSPECIFIED
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    epochs: int = 0
    max_steps: int = 0
    micro_batch_size: int = 0
    gradient_accumulation_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0
    max_seq_length: int = 0
    packing: bool = False
    seed: int = 0
    lora_r: int = 0
    lora_alpha: float = 0.0
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] = ()
    dpo_beta: float = 0.0
    precision: Precision = Precision.UNSPECIFIED
    gradient_checkpointing: bool = False
    qlora_quant_type: str = ""
    num_virtual_tokens: int = 0


@dataclass(frozen=True)
class Resources:
    """Compute for a job (zero values: 1 worker, ZeRO 0, 3 restarts)."""

    num_workers: int = 0
    use_gpu: bool = False
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_params: bool = False
    max_failures: int = 0


@dataclass(frozen=True)
class Schedule:
    """Evaluation and checkpoint cadence (zero values: at the end only; keep best 2, latest 1)."""

    eval_every_steps: int = 0
    early_stopping_patience: int = 0
    save_every_steps: int = 0
    keep_best_n: int = 0
    keep_latest_n: int = 0
    best_metric: str = ""


@dataclass(frozen=True)
class TaskMixture:
    """One weighted component of a multi-task job."""

    dataset_version_id: str
    weight: float
    task: str = ""


@dataclass(frozen=True)
class JobSpec:
    """What the caller asked for (a ``CreateJobRequest``), before defaults."""

    base_model: str
    method: Method
    objective: Objective
    dataset_version_id: str = ""
    validation_dataset_version_id: str = ""
    mixture: tuple[TaskMixture, ...] = ()
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    resources: Resources = field(default_factory=Resources)
    schedule: Schedule = field(default_factory=Schedule)
    suffix: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def dataset_versions(self) -> tuple[str, ...]:
        """Every dataset version the job reads (training, validation, mixture), once each, in order."""
        ids = [self.dataset_version_id, self.validation_dataset_version_id,
               *(m.dataset_version_id for m in self.mixture)]
        return tuple(dict.fromkeys(i for i in ids if i))


@dataclass(frozen=True)
class ErrorInfo:
    """Why a job failed: a status code name, cause and fix, and the field when one is at fault."""

    code: str
    message: str
    field: str = ""


@dataclass
class Job:
    """A fine-tuning job of one tenant.

    ``run_name`` names the engine run (its checkpoint folder under the tenant's checkpoint area):
    it never changes, so a re-queued job resumes from its own latest complete checkpoint.
    ``request_digest`` fingerprints the request for idempotency (same key, different body: conflict).
    """

    id: str
    tenant: str
    spec: JobSpec
    status: JobStatus
    created_at: datetime
    run_name: str
    idempotency_key: str = ""
    request_digest: str = ""
    resolved: Mapping[str, Any] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    trained_tokens: int = 0
    current_step: int = 0
    total_steps: int = 0
    result_checkpoint_id: str = ""
    error: ErrorInfo | None = None
    restarts: int = 0

    def move_to(self, new: JobStatus) -> None:
        """Change status through the state machine (``FailedPrecondition`` on an illegal move)."""
        check_transition(self.status, new)
        self.status = new


class EventKind(enum.Enum):
    """What a job event carries."""

    STATUS = "status"
    METRICS = "metrics"
    LOG = "log"
    CHECKPOINT = "checkpoint"


class LogLevel(enum.Enum):
    """Severity of a log event (API ``LogLevel``)."""

    DEBUG = 1
    INFO = 2
    WARNING = 3
    ERROR = 4


@dataclass(frozen=True)
class JobEvent:
    """One entry of a job's event log; ``sequence`` is monotonic per job (the streaming cursor).

    ``data`` by kind: STATUS ``{"status": name}``; METRICS ``{"step", "loss", ...}``; LOG
    ``{"level": name, "message"}``; CHECKPOINT ``{"checkpoint_id", "step"}``.
    """

    sequence: int
    time: datetime
    kind: EventKind
    data: Mapping[str, Any]


@dataclass(frozen=True)
class JobCheckpoint:
    """A checkpoint the job registered with the checkpoint service."""

    checkpoint_id: str
    step: int
    metrics: Mapping[str, float]
    created_at: datetime
    uri: str = ""


@dataclass(frozen=True)
class JobFilter:
    """ListJobs filters: empty means all."""

    statuses: frozenset[JobStatus] = frozenset()
    method: Method = Method.UNSPECIFIED
    labels: Mapping[str, str] = field(default_factory=dict)


def new_job_id() -> str:
    """A time-ordered id: ``job_<ms timestamp hex><random hex>`` (also a valid engine run name)."""
    return f"job_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"
