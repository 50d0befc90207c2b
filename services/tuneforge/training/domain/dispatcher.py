"""One replica's dispatch loop: claim queued jobs under leases, keep the leases alive, hand jobs back.

Every training replica runs one ``Dispatcher``. Jobs wait QUEUED in the database; the loop claims
the next one (``JobRepository.claim_next`` with the ``dispatch.decide`` policy: quotas, fair share,
priority, age) while this replica has a free slot, and starts a ``JobRun`` under the lease. It wakes
on a local CreateJob, when one of its runs ends, and every ``poll_s`` (jobs created on other
replicas, leases that expired).

A second thread renews the leases of the runs every ``heartbeat_s``. A renewal that finds the lease
gone (another replica claimed the job after it expired, or a cancel ended it), or no successful
renewal within the lease's TTL (the database unreachable: another replica may take the job once it
expires), stops the run at once (``JobRun.lose``); its writes are fenced by the lease anyway, so a
job never has two live runs writing to it. A replica that dies simply stops renewing: its leases
expire and other replicas claim the jobs, which resume from their latest complete checkpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from tuneforge.common import tracing
from tuneforge.common.logging import log_context
from tuneforge.training.domain.dispatch import Candidate, Decision, Quotas, Running, decide
from tuneforge.training.domain.model import Job
from tuneforge.training.domain.ports import JobRepository
from tuneforge.training.domain.run import JobRun

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DispatchSettings:
    """How one replica dispatches: its name, how many jobs it runs at once, lease timing, quotas."""

    replica_id: str
    slots: int = 1
    lease_ttl_s: float = 30.0
    heartbeat_s: float = 10.0
    poll_s: float = 2.0
    quotas: Quotas = field(default_factory=Quotas)


# What the service does with a claimed job: a run to start and the trace context it continues (from
# ``tracing.carry`` at CreateJob; None: a new trace), or None
# when it ended the job itself (e.g. no identity of the tenant to act as).
Launch = Callable[[Job], tuple[JobRun, Any] | None]
# Told once per change of a waiting job's reason: (tenant, job id, reason).
OnReason = Callable[[str, str, str], None]


class Dispatcher:
    """Claims jobs for this replica and keeps their leases; see the module docstring."""

    def __init__(self, repository: JobRepository, executor: Executor, settings: DispatchSettings,
                 launch: Launch, on_reason: OnReason) -> None:
        self._repo, self._executor, self._s = repository, executor, settings
        self._launch, self._on_reason = launch, on_reason
        self._runs: dict[str, JobRun] = {}
        self._renewed: dict[str, float] = {}  # job id -> monotonic time its lease was last renewed (or claimed)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._claiming = True
        self._threads: list[threading.Thread] = []

    @property
    def replica_id(self) -> str:
        """This replica's name (the lease owner)."""
        return self._s.replica_id

    def start(self) -> None:
        """Start the dispatch loop and the heartbeat."""
        for name, target in (("training-dispatch", self._loop), ("training-heartbeat", self._beat)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def wake(self) -> None:
        """Look for work now (a job was created here, or a slot freed)."""
        self._wake.set()

    def run_of(self, job_id: str) -> JobRun | None:
        """The run of ``job_id`` on this replica, if any."""
        with self._lock:
            return self._runs.get(job_id)

    def stop_claiming(self) -> list[JobRun]:
        """Claim nothing more (graceful stop); returns the runs still going, for the caller to interrupt."""
        with self._lock:
            self._claiming = False
            return list(self._runs.values())

    def close(self) -> None:
        """Stop both threads (after the runs ended and handed their jobs back)."""
        self._closed.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=10)

    # ------------------------------------------------------------------ claiming

    def _choose(self, candidates: list[Candidate], running: list[Running]) -> Decision:
        return decide(candidates, running, self._s.quotas)

    def _loop(self) -> None:
        while not self._closed.is_set():
            try:
                self.dispatch_once()
            except Exception:  # a database hiccup: the next round retries
                log.exception("dispatch round failed; retrying in %.1fs", self._s.poll_s)
            self._wake.wait(self._s.poll_s)
            self._wake.clear()

    def _free_slots(self) -> int:
        with self._lock:
            return self._s.slots - len(self._runs) if self._claiming else 0

    def dispatch_once(self) -> int:
        """Claim and start jobs while this replica has free slots; returns how many it started."""
        started = 0
        while self._free_slots() > 0:
            claim = self._repo.claim_next(self._s.replica_id, self._s.lease_ttl_s, self._choose)
            for job_id, (tenant, reason) in claim.reasons.items():
                self._on_reason(tenant, job_id, reason)
            if claim.job is None:
                break
            started += self._start(claim.job)
        return started

    def _start(self, job: Job) -> int:
        assert job.lease is not None
        claimed_at = time.monotonic()
        made = self._launch(job)
        if made is None:
            return 0
        run, trace = made
        with self._lock:
            if not self._claiming:  # the service began stopping during the claim: give the job back untouched
                self._repo.release(job.lease)
                return 0
            self._runs[job.id] = run
            self._renewed[job.id] = claimed_at
        self._executor.submit(self._guarded, run, trace)
        return 1

    def _guarded(self, run: JobRun, trace: Any) -> None:
        try:
            with tracing.continued(trace, "training.job.run", {"tuneforge.tenant": run.tenant,
                                                               "tuneforge.job_id": run.job_id}), \
                    log_context(tenant=run.tenant, job_id=run.job_id, replica=self._s.replica_id,
                                lease_epoch=str(run.lease.epoch)):
                run.execute()
        except Exception:  # execute records failures itself; this guards the executor thread
            log.exception("job %s: unexpected error outside the run", run.job_id)
        finally:
            with self._lock:
                # Only this run's own entries: a job it re-queued may already run again here as a new run.
                if self._runs.get(run.job_id) is run:
                    del self._runs[run.job_id]
                    self._renewed.pop(run.job_id, None)
            self.wake()  # a slot is free

    # ------------------------------------------------------------------ heartbeat

    def _beat(self) -> None:
        while not self._closed.wait(self._s.heartbeat_s):
            self.heartbeat_once()

    def heartbeat_once(self) -> None:
        """Renew every lease of this replica; stop the runs whose lease is gone."""
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            began = time.monotonic()
            try:
                renewed = self._repo.renew(run.lease, self._s.lease_ttl_s)
            except Exception as exc:  # noqa: BLE001 - e.g. the database unreachable: the lease holds for its TTL
                with self._lock:
                    last = self._renewed.get(run.job_id, began)
                if began - last < self._s.lease_ttl_s:
                    log.warning("job %s: lease renewal failed (%s); retrying", run.job_id, exc)
                    continue
                renewed = None
            if renewed is None and run.ending:
                continue  # the run ended its job (or handed it back) and is leaving
            if renewed is None:
                log.warning("job %s: lease epoch %d is no longer this replica's (%s): stopping the run now",
                            run.job_id, run.lease.epoch, self._s.replica_id)
                run.lose()
                continue
            with self._lock:
                if run.job_id in self._renewed:
                    self._renewed[run.job_id] = began

