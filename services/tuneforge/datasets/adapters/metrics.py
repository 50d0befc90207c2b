"""Curation metrics, taken where run events are recorded (no change to the pipeline):
``ObservedCatalog`` wraps the catalog and turns each run's events into rows processed per step
(``rate()`` of it is rows/s), step and run durations, and runs ended by state."""

from __future__ import annotations

import threading
import time
from typing import Any

from tuneforge.common.metrics import ServiceMetrics
from tuneforge.datasets.domain.model import Catalog, RunEvent, RunState

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


class ObservedCatalog:
    """A ``Catalog`` that records curation metrics from the run events appended through it."""

    def __init__(self, inner: Catalog, metrics: ServiceMetrics) -> None:
        self._inner = inner
        self._rows = metrics.counter("tuneforge_curation_rows_total", "Rows that entered a curation step (rate: "
                                     "rows/s).", ("tenant", "step"))
        self._rows_out = metrics.counter("tuneforge_curation_rows_out_total", "Rows a curation step kept.",
                                         ("tenant", "step"))
        self._step = metrics.histogram("tuneforge_curation_step_seconds", "Duration of a curation step.", ("step",),
                                       buckets=DURATION_BUCKETS)
        self._runs = metrics.counter("tuneforge_curation_runs_total", "Curation runs ended, by state.",
                                     ("tenant", "state"))
        self._run = metrics.histogram("tuneforge_curation_run_seconds", "Duration of a curation run (running to "
                                      "end).", ("state",), buckets=DURATION_BUCKETS)
        self._last: dict[str, tuple[float, float]] = {}  # run id -> (start, previous event) monotonic times
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def add_run_event(self, tenant: str, run_id: str, event: RunEvent) -> None:
        """Append through the wrapped catalog, then record the event's metrics."""
        self._inner.add_run_event(tenant, run_id, event)
        now = time.monotonic()
        with self._lock:
            start, previous = self._last.get(run_id, (now, now))
            if event.state in (RunState.SUCCEEDED, RunState.FAILED):
                self._last.pop(run_id, None)
            elif event.state is RunState.RUNNING:
                self._last[run_id] = (start, now)
        if event.step:
            name = str(event.step.get("step", ""))
            self._rows.labels(tenant, name).inc(int(event.step.get("rows_in", 0)))
            self._rows_out.labels(tenant, name).inc(int(event.step.get("rows_out", 0)))
            self._step.labels(name).observe(now - previous)
        elif event.state in (RunState.SUCCEEDED, RunState.FAILED):
            self._runs.labels(tenant, event.state.name).inc()
            self._run.labels(event.state.name).observe(now - start)
