"""Training metrics, taken where the job events are recorded (no change to the run or the engine).

``ObservedJobRepository`` wraps the ``JobRepository`` and turns the events every run already
appends into series: STATUS events into transitions and the queue wait, METRICS events into loss,
tokens/s, step and step time, CHECKPOINT events into a count. ``JobCountCollector`` reads jobs by
tenant and status from the database at scrape time (exact after restarts and across replicas).

Per-job gauges (``job_id`` label) of an ended job stay for the ``KEEP_ENDED`` most recently ended
jobs (a dashboard shows their final loss), then are removed: their number stays bounded.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.common.db import session_scope
from tuneforge.common.metrics import ServiceMetrics
from tuneforge.training.adapters.tables import jobs
from tuneforge.training.domain.model import EventKind, JobEvent, JobStatus, Lease
from tuneforge.training.domain.ports import JobRepository

# Seconds a job waits in the queue, and per optimizer step (tiny CPU models to large GPU runs).
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
STEP_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
KEEP_ENDED = 50
_PER_JOB = {"loss": ("tuneforge_training_loss", "Latest training loss of a running job."),
            "tokens_per_s": ("tuneforge_training_tokens_per_second", "Training throughput of a running job."),
            "peak_memory_bytes": ("tuneforge_training_peak_memory_bytes", "Peak accelerator memory of a job."),
            "step": ("tuneforge_training_step", "Latest step of a running job.")}


class ObservedJobRepository:
    """A ``JobRepository`` that records training metrics from the events appended through it."""

    def __init__(self, inner: JobRepository, metrics: ServiceMetrics) -> None:
        self._inner = inner
        self._transitions = metrics.counter("tuneforge_training_job_transitions_total",
                                            "Jobs entering a status.", ("tenant", "status"))
        self._wait = metrics.histogram("tuneforge_training_queue_wait_seconds", "From job creation to its run "
                                       "starting.", ("tenant",), buckets=WAIT_BUCKETS)
        self._steps = metrics.counter("tuneforge_training_steps_total", "Optimizer steps reported.", ("tenant",))
        self._step_time = metrics.histogram("tuneforge_training_step_seconds", "Wall time per optimizer step "
                                            "(between reported steps).", ("tenant",), buckets=STEP_BUCKETS)
        self._checkpoints = metrics.counter("tuneforge_training_checkpoints_total", "Checkpoints registered by "
                                            "jobs.", ("tenant",))
        self._gauges = {key: metrics.gauge(name, doc, ("tenant", "job_id")) for key, (name, doc) in _PER_JOB.items()}
        self._last: dict[str, tuple[float, float]] = {}  # job id -> (monotonic time, step) of its last METRICS
        self._ended: OrderedDict[tuple[str, str], None] = OrderedDict()  # (tenant, job id), oldest first
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def add_event(self, tenant: str, job_id: str, kind: EventKind, data: Mapping[str, Any],
                  lease: Lease | None = None) -> JobEvent:
        """Append through the wrapped repository, then record the event's metrics."""
        event = self._inner.add_event(tenant, job_id, kind, data, lease)
        if kind is EventKind.STATUS:
            self._status(tenant, job_id, str(data.get("status", "")))
        elif kind is EventKind.METRICS:
            self._metrics(tenant, job_id, data)
        elif kind is EventKind.CHECKPOINT:
            self._checkpoints.labels(tenant).inc()
        return event

    def _status(self, tenant: str, job_id: str, status: str) -> None:
        self._transitions.labels(tenant, status).inc()
        if status == JobStatus.RUNNING.name:
            job = self._inner.get(tenant, job_id)
            started = job.started_at or datetime.now(UTC)
            self._wait.labels(tenant).observe(max(0.0, (started - job.created_at).total_seconds()))
        elif status in {s.name for s in JobStatus if s.terminal} or status == JobStatus.QUEUED.name:
            with self._lock:
                self._last.pop(job_id, None)
                self._ended[(tenant, job_id)] = None
                evicted = []
                while len(self._ended) > KEEP_ENDED:
                    evicted.append(self._ended.popitem(last=False)[0])
            for labels in evicted:
                for gauge in self._gauges.values():
                    with contextlib.suppress(KeyError):  # the job never reported that series
                        gauge.remove(*labels)

    def _metrics(self, tenant: str, job_id: str, data: Mapping[str, Any]) -> None:
        with self._lock:
            self._ended.pop((tenant, job_id), None)  # running again (resumed after a re-queue)
        for key, gauge in self._gauges.items():
            value = data.get(key)
            if isinstance(value, int | float) and math.isfinite(value):
                gauge.labels(tenant, job_id).set(value)
        step = data.get("step")
        if "loss" not in data or not isinstance(step, int | float):
            return  # an evaluation event, not a training step
        now = time.monotonic()
        with self._lock:
            last = self._last.get(job_id)
            self._last[job_id] = (now, float(step))
        if last is not None and step > last[1]:
            steps = step - last[1]
            self._steps.labels(tenant).inc(steps)
            per_step = (now - last[0]) / steps
            self._step_time.labels(tenant).observe(per_step)


class JobCountCollector:
    """``tuneforge_training_jobs{tenant,status}`` and ``tuneforge_training_queue_depth``, counted in the
    database at scrape time (one grouped query on the indexed status column)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def describe(self) -> list[GaugeMetricFamily]:
        """No samples at registration (the database is read only when scraped)."""
        return [GaugeMetricFamily("tuneforge_training_jobs", "Jobs by tenant and status.", labels=("tenant", "status")),
                GaugeMetricFamily("tuneforge_training_queue_depth", "Jobs waiting to run (QUEUED).")]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Count jobs by tenant and status."""
        by_status = GaugeMetricFamily("tuneforge_training_jobs", "Jobs by tenant and status.",
                                      labels=("tenant", "status"))
        queued = 0
        q = select(jobs.c.tenant, jobs.c.status, func.count()).group_by(jobs.c.tenant, jobs.c.status)
        with session_scope(self._sessions) as s:
            for tenant, status, count in s.execute(q):
                by_status.add_metric((tenant, status), count)
                queued += count if status == JobStatus.QUEUED.name else 0
        yield by_status
        yield GaugeMetricFamily("tuneforge_training_queue_depth", "Jobs waiting to run (QUEUED).", value=queued)
