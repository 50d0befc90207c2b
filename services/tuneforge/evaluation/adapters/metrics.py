"""Evaluation metrics, taken where progress events are recorded (no change to the domain):
``ObservedRepository`` turns each evaluation's progress events into work items done (``rate()`` of
it is the throughput), evaluations ended by state and their durations."""

from __future__ import annotations

import threading
import time
from typing import Any

from tuneforge.common.metrics import ServiceMetrics
from tuneforge.evaluation.domain.model import ProgressEvent, State
from tuneforge.evaluation.domain.ports import EvaluationRepository

DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600)


class ObservedRepository:
    """An evaluation repository that records metrics from the progress events appended through it."""

    def __init__(self, inner: EvaluationRepository, metrics: ServiceMetrics) -> None:
        self._inner = inner
        self._items = metrics.counter("tuneforge_evaluation_items_total", "Evaluation work items done (rate: "
                                      "throughput).", ("tenant",))
        self._ended = metrics.counter("tuneforge_evaluations_total", "Evaluations ended, by state.",
                                      ("tenant", "state"))
        self._seconds = metrics.histogram("tuneforge_evaluation_seconds", "From an evaluation's first progress "
                                          "event to its end.", ("state",), buckets=DURATION_BUCKETS)
        self._seen: dict[str, tuple[float, int]] = {}  # evaluation id -> (first event time, items done)
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def add_event(self, tenant: str, evaluation_id: str, state: State, done: int, total: int,
                  message: str) -> ProgressEvent:
        """Append through the wrapped repository, then record the event's metrics."""
        event = self._inner.add_event(tenant, evaluation_id, state, done, total, message)
        now = time.monotonic()
        with self._lock:
            start, before = self._seen.get(evaluation_id, (now, 0))
            if state.terminal:
                self._seen.pop(evaluation_id, None)
            else:
                self._seen[evaluation_id] = (start, max(before, done))
        if done > before:
            self._items.labels(tenant).inc(done - before)
        if state.terminal:
            self._ended.labels(tenant, state.name).inc()
            self._seconds.labels(state.name).observe(now - start)
        return event
