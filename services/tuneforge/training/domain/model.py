"""The training domain's types: a job, its request, its status machine, its events and checkpoints.

A job's training settings are the engine's ``TrainingSpec`` itself (no copy of its fields here).
``JobStatus`` and ``LogLevel`` mirror the API's enums by value (``JobStatus.RUNNING.value ==
JOB_STATUS_RUNNING``). Nothing here imports grpc, sqlalchemy or ray.
"""

from __future__ import annotations

import enum
import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from tuneforge.common.errors import FailedPrecondition, FieldViolation
from tuneforge.engine.spec import MethodKind, TrainingSpec


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


@dataclass(frozen=True)
class JobRequest:
    """What a caller asked for, in the training spec's own terms.

    ``spec`` is the raw mapping of the spec's sections as requested (the same shape as an engine YAML);
    the service adds what it owns (tenant, output, Ray address, default validation data) and validates
    the whole with ``tuneforge.engine.spec.load_spec``, the one validator. ``problems`` are those of the
    wire shape that the mapping found (a required enum left unspecified), reported with the spec's.
    """

    spec: Mapping[str, Any]
    problems: tuple[FieldViolation, ...] = ()
    suffix: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    priority: int = 0

    def digest(self) -> str:
        """A fingerprint of the body (idempotency: the same key with another body is a conflict)."""
        body: dict[str, Any] = {"spec": self.spec, "suffix": self.suffix, "labels": dict(self.labels)}
        if self.priority:  # only when set, so the digests of jobs created before priorities stay the same
            body["priority"] = self.priority
        doc = json.dumps(body, sort_keys=True, default=str)
        return hashlib.sha256(doc.encode()).hexdigest()


def dataset_versions(spec: TrainingSpec) -> tuple[str, ...]:
    """Every dataset version a spec reads (training, validation, mixture), once each, in order."""
    data = spec.data
    sources = [data.train, data.validation, *(m.source for m in data.mixture)]
    return tuple(dict.fromkeys(s.dataset_version for s in sources if s is not None and s.dataset_version))


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
    ``spec`` is the resolved training spec (defaults filled in, inputs as references): what is stored,
    what the engine runs and what a restarted job resumes from.
    """

    id: str
    tenant: str
    spec: TrainingSpec
    status: JobStatus
    created_at: datetime
    run_name: str
    suffix: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str = ""
    request_digest: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    trained_tokens: int = 0
    current_step: int = 0
    total_steps: int = 0
    result_checkpoint_id: str = ""
    error: ErrorInfo | None = None
    restarts: int = 0
    # Measured pace of a running job (see ``Pace``): wall-clock rates and the finish they predict.
    steps_per_second: float = 0.0
    tokens_per_second: float = 0.0
    estimated_finish: datetime | None = None
    priority: int = 0
    # Set by the dispatcher (see ``Lease``): who runs the job, until when, and why a queued job waits.
    lease: Lease | None = None
    queue_reason: str = ""

    def move_to(self, new: JobStatus) -> None:
        """Change status through the state machine (``FailedPrecondition`` on an illegal move).

        Leaving RUNNING clears the estimated finish (a re-queued job measures its pace anew)."""
        check_transition(self.status, new)
        self.status = new
        if new is not JobStatus.RUNNING:
            self.estimated_finish = None


class Pace:
    """A running job's pace from its own step events: wall-clock steps and tokens per second over a
    window of recent steps (evaluations and checkpoints included, so the finish it predicts holds),
    and the estimated finish, ``now + remaining steps / steps per second``.

    Needs two step events to measure; a resumed run starts a new window (restarts skew nothing).
    """

    WINDOW = 32

    def __init__(self) -> None:
        self._points: list[tuple[float, int, int]] = []  # (monotonic time, step, trained tokens)

    def reset(self) -> None:
        """Forget the window (workers restarted, the run resumed)."""
        self._points.clear()

    def observe(self, job: Job, now: datetime, clock: float) -> None:
        """Record the job's step and tokens at ``clock`` (monotonic seconds); update its rates and finish."""
        if self._points and job.current_step <= self._points[-1][1]:
            self._points.clear()  # the step went back: a resume from a checkpoint
        self._points.append((clock, job.current_step, job.trained_tokens))
        del self._points[:-self.WINDOW]
        (t0, s0, k0), (t1, s1, k1) = self._points[0], self._points[-1]
        if len(self._points) < 2 or t1 <= t0 or s1 <= s0:
            return
        job.steps_per_second = (s1 - s0) / (t1 - t0)
        job.tokens_per_second = max(0.0, (k1 - k0) / (t1 - t0))
        remaining = max(0, job.total_steps - job.current_step)
        job.estimated_finish = now + timedelta(seconds=remaining / job.steps_per_second) if job.total_steps else None


@dataclass(frozen=True)
class Lease:
    """A replica's claim on a job: it may run the job (and write its status and events) while it holds it.

    ``epoch`` grows by one at every claim of the job, so a write fenced by (owner, epoch) fails once
    another claim took the job, even a claim by the same replica. ``expires_at`` moves forward with
    each heartbeat; a lease not renewed by then may be claimed by any replica.
    """

    job_id: str
    tenant: str
    owner: str
    epoch: int
    expires_at: datetime


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
    method: MethodKind | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


def new_job_id() -> str:
    """A time-ordered id: ``job_<ms timestamp hex><random hex>`` (also a valid engine run name)."""
    return f"job_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"
