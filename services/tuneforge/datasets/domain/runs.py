"""Curation runs: long operations in a background thread pool, with a progress event stream.

``start`` records the run (QUEUED) and returns at once; a worker runs the pipeline, publishes
the output version and records SUCCEEDED, or FAILED with the error's code, message and field.
Events are sequence-numbered per run and persisted in the catalog before watchers see them, so a
watch resumes from a cursor (``after_sequence``) in this process or after a restart. Runs that
were in flight at a restart are marked failed at start-up (their staging is gone), with a final
event saying so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tuneforge.common import tracing
from tuneforge.common.db import utcnow
from tuneforge.common.errors import InvalidInput, NotFound, TuneforgeError, Unavailable
from tuneforge.common.logging import ContextThreadPoolExecutor
from tuneforge.common.public_text import echo, public_message
from tuneforge.common.streams import follow
from tuneforge.datasets.domain import config as cfg
from tuneforge.datasets.domain.model import Run, RunEvent, RunState, new_id
from tuneforge.datasets.domain.pipeline import StepCount, run_pipeline
from tuneforge.datasets.domain.service import DatasetCatalogService, Staged
from tuneforge.datasets.domain.steps_gen import check_models

log = logging.getLogger(__name__)
_TERMINAL = (RunState.SUCCEEDED, RunState.FAILED)


@dataclass
class _Events:
    items: list[RunEvent] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)


class CurationRuns:
    """Starts, tracks and streams curation runs."""

    def __init__(self, service: DatasetCatalogService, max_workers: int = 2) -> None:
        self.service = service
        self.catalog = service.catalog
        # runs log with the tenant, request and trace ids of the call that started them
        self.pool = ContextThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="curation")
        self._events: dict[str, _Events] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        message = "the service restarted during the run: start it again"
        failed = self.catalog.fail_unfinished_runs(message)
        for run in failed:
            last = self.catalog.run_events(run.tenant, run.id, 0)
            sequence = last[-1].sequence + 1 if last else 1
            self.catalog.add_run_event(run.tenant, run.id, RunEvent(sequence, utcnow(), run.state, None, f"failed: {message}"))
        if failed:
            log.warning("marked %d interrupted curation runs as failed", len(failed))

    def shutdown(self) -> None:
        """Stop accepting runs, ask running ones to stop at their next step, and wait for them.

        Queued runs are dropped (the next start-up marks them failed); a running run ends FAILED
        ("the service stopped") at its next step boundary. When this returns, no run writes to storage.
        """
        self._stopping.set()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _emit(self, run: Run, message: str, step: dict[str, Any] | None = None) -> None:
        with self._lock:
            events = self._events.setdefault(run.id, _Events())
        with events.cond:
            event = RunEvent(len(events.items) + 1, utcnow(), run.state, step, message)
            self.catalog.add_run_event(run.tenant, run.id, event)  # persisted before anyone sees it
            events.items.append(event)
            events.cond.notify_all()

    def start(self, tenant: str, version_id: str, config: cfg.PipelineConfig) -> Run:
        """Validate, record and queue a run (request ids: ``common.idempotency``, in the servicer)."""
        cfg.check_pipeline(config)
        check_models(config, self.service.generators)
        version = self.service.get_version(tenant, version_id)
        run = Run(new_id("run"), tenant, version.id, RunState.QUEUED, utcnow(), None,
                  {"config": config.to_dict(), "steps": []})
        self.catalog.save_run(run)
        self._emit(run, "queued")
        self.pool.submit(tracing.in_span(self._execute, "datasets.curation.run", {
            "tuneforge.tenant": tenant, "tuneforge.run_id": run.id, "tuneforge.version_id": version.id}), run, config)
        return run

    def _execute(self, run: Run, config: cfg.PipelineConfig) -> None:
        if self._stopping.is_set():
            return  # the next start-up marks it failed, with an event saying so
        run.state = RunState.RUNNING
        self.catalog.save_run(run)
        self._emit(run, "running")
        staging = self.service.staging()
        try:
            version = self.service.get_version(run.tenant, run.input_version_id)
            shards, _ = self.service.local_files(version)

            def progress(count: StepCount) -> None:
                if self._stopping.is_set():
                    raise Unavailable("the service stopped during the run: start it again")
                run.document["steps"].append(count.as_dict())
                self.catalog.save_run(run)
                self._emit(run, f"step {count.step}: {count.rows_in} -> {count.rows_out} rows", count.as_dict())

            result = run_pipeline(shards, config, staging, progress=progress, generators=self.service.generators,
                                  eval_records=lambda ids: self.service.eval_records(run.tenant, ids))
            document = {"pipeline": config.to_dict(), "steps": [c.as_dict() for c in result.steps], "run_id": run.id}
            staged = Staged(result.shards, result.rejected_path, result.rejected_count, document, version.id)
            dataset = self.service.catalog.find_dataset(run.tenant, version.dataset_id)
            assert dataset is not None
            _, output = self.service.publish(run.tenant, dataset.name, "", staged)
            run.output_version_id = output.id
            run.state = RunState.SUCCEEDED
            message = f"succeeded: version {output.id} with {output.row_count} rows"
        except TuneforgeError as exc:
            run.state = RunState.FAILED
            public = public_message(exc.message)  # stored and shown to the caller: bounded, no server path
            run.document["error"] = {"code": exc.family.value, "message": public, "field": exc.field or ""}
            message = f"failed: {public}"
        except Exception:
            log.exception("curation run %s failed", run.id)
            run.state = RunState.FAILED
            run.document["error"] = {"code": "INTERNAL", "message": "internal error: see the service log", "field": ""}
            message = "failed: internal error"
        finally:
            self.service.discard(staging)
        run.ended_at = utcnow()
        self.catalog.save_run(run)
        self._emit(run, message)
        tracing.outcome(run.state.name, failed=run.state is RunState.FAILED, message=message)

    def get(self, tenant: str, run_id: str) -> Run:
        """One run; NotFound otherwise."""
        run = self.catalog.get_run(tenant, run_id) if run_id else None
        if run is None:
            raise NotFound(f"curation run {echo(run_id)} not found: check the id returned by CurateDataset")
        return run

    def watch(self, tenant: str, run_id: str, after: int = 0,
              is_active: Callable[[], bool] = lambda: True) -> Iterator[RunEvent]:
        """Yield events after ``after`` until the run's final event (``common.streams.follow``): a
        cursor beyond the last event of a finished run ends at once, and a client that went away
        (``is_active``) is noticed within a tick."""
        if after < 0:
            raise InvalidInput.field_error("after_sequence", f"is {after}: use 0 (from the start) or a sequence seen")
        run = self.get(tenant, run_id)
        with self._lock:
            events = self._events.get(run.id)
        if events is None:  # a run of an earlier process: it has ended, its events are stored
            stored = self.catalog.run_events(tenant, run.id, after)
            if stored or after:
                yield from stored
            else:  # stored by a version of the service that kept events in memory only
                yield RunEvent(1, run.ended_at or run.created_at, run.state, None, f"run is {run.state.value}")
            return
        live = events

        def fetch(cursor: int) -> list[RunEvent]:
            with live.cond:
                return live.items[cursor:]

        def ended() -> bool:
            with live.cond:
                return bool(live.items) and _is_final(live.items[-1])

        def wait(seconds: float) -> None:
            with live.cond:
                live.cond.wait(seconds)

        yield from follow(fetch, cursor=after, sequence=lambda e: e.sequence, is_final=_is_final,
                          subject_ended=ended, is_active=is_active, wait=wait)


def _is_final(event: RunEvent) -> bool:
    return event.state in _TERMINAL and event.message.startswith(("succeeded", "failed"))
