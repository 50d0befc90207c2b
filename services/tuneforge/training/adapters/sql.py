"""SQLAlchemy repository of training jobs, their event logs and checkpoints (SQLite or PostgreSQL)."""

from __future__ import annotations

import builtins
import functools
import json
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    RowMapping,
    Select,
    and_,
    bindparam,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.common.db import read_scope, session_scope
from tuneforge.common.errors import NotFound
from tuneforge.engine.spec import TrainingSpec
from tuneforge.training.adapters.tables import checkpoints, events, jobs, labels
from tuneforge.training.domain.dispatch import Candidate, Decision, Running
from tuneforge.training.domain.model import (
    ErrorInfo,
    EventKind,
    Job,
    JobCheckpoint,
    JobEvent,
    JobFilter,
    JobStatus,
    Lease,
)
from tuneforge.training.domain.ports import Claim, LeaseLost

_LIVE = [JobStatus.VALIDATING.name, JobStatus.QUEUED.name, JobStatus.RUNNING.name]
# Every replica's dispatch decision runs under this transaction-scoped PostgreSQL advisory lock, so
# cross-row rules (tenant quotas, the cluster cap) hold across replicas; SKIP LOCKED alone guards rows.
_DISPATCH_LOCK = 0x7475_6E65_0001  # "tune" + 1
_CANDIDATES = 1000  # queued jobs a decision looks at (oldest and highest priority first)


class SqlJobRepository:
    """Implements ``JobRepository``; every tenant-facing query filters on the tenant."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        # Appends of this process are serialised (a run's thread and a CancelJob may append at once);
        # appends of other processes sharing the database are resolved by the retry below.
        self._append = threading.Lock()

    def add(self, job: Job) -> Job:
        """Insert with its labels; an existing (tenant, idempotency_key) returns the stored job instead."""
        resources = job.spec.resources
        try:
            with session_scope(self._sessions) as s:
                s.execute(insert(jobs).values(**_row(job), id=job.id, tenant=job.tenant, priority=job.priority,
                                              workers=resources.num_workers,
                                              gpus=resources.num_workers if resources.use_gpu else 0,
                                              idempotency_key=job.idempotency_key or None,
                                              request_digest=job.request_digest, method=job.spec.method.kind.name,
                                              spec=job.spec.resolved_dict(), run_name=job.run_name,
                                              created_at=job.created_at))
                if job.labels:
                    s.execute(insert(labels), [{"job_id": job.id, "key": k, "value": v}
                                               for k, v in job.labels.items()])
        except SqlIntegrityError:
            found = self.find_by_key(job.tenant, job.idempotency_key) if job.idempotency_key else None
            if found is None:
                raise
            return found  # a concurrent create with the same key won
        return job

    def get(self, tenant: str, job_id: str) -> Job:
        """One job; ``NotFound`` for another tenant's."""
        with read_scope(self._sessions) as c:  # the API's hottest read: Core, a prebuilt statement
            row = c.execute(_GET_JOB, {"tenant": tenant, "job_id": job_id}).mappings().first()
        if row is None:
            raise NotFound(f"job {job_id!r} not found: list jobs to see the ids you can read")
        return _from_row(row)

    def find_by_key(self, tenant: str, idempotency_key: str) -> Job | None:
        """The tenant's job created with ``idempotency_key``."""
        q = select(jobs).where(jobs.c.tenant == tenant, jobs.c.idempotency_key == idempotency_key)
        with session_scope(self._sessions, read_only=True) as s:
            row = s.execute(q).mappings().first()
        return _from_row(row) if row else None

    def list(self, tenant: str, filters: JobFilter, *, limit: int, offset: int) -> builtins.list[Job]:
        """Newest first, filtered by status, method and labels (all given labels must match)."""
        if not (filters.statuses or filters.method is not None or filters.labels):  # the usual page: prebuilt
            with read_scope(self._sessions) as c:
                rows = c.execute(_LIST_JOBS, {"tenant": tenant, "limit": limit, "offset": offset}).mappings()
                return [_from_row(r) for r in rows]
        q: Select[Any] = select(jobs).where(jobs.c.tenant == tenant)
        if filters.statuses:
            q = q.where(jobs.c.status.in_(sorted(s.name for s in filters.statuses)))
        if filters.method is not None:
            q = q.where(jobs.c.method == filters.method.name)
        for key, value in filters.labels.items():
            q = q.where(exists().where(and_(labels.c.job_id == jobs.c.id, labels.c.key == key, labels.c.value == value)))
        q = q.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit).offset(offset)
        with read_scope(self._sessions) as c:
            return [_from_row(r) for r in c.execute(q).mappings()]

    def save(self, job: Job, *, expected: Collection[JobStatus] = (), lease: Lease | None = None) -> bool:
        """Update the mutable columns; with ``expected``, only while the stored status is one of them;
        with ``lease``, only while that lease (owner and epoch) still holds the job.

        A job ended without a lease (a cancel from any replica) gets a new epoch, so the run that may
        still train it elsewhere can write nothing more and stops at its next heartbeat."""
        q = update(jobs).where(jobs.c.tenant == job.tenant, jobs.c.id == job.id)
        if expected:
            q = q.where(jobs.c.status.in_([s.name for s in expected]))
        values = _row(job)
        if lease is not None:
            q = q.where(*_held(lease))
        if job.status.terminal:
            values["lease_expires_at"] = None
            if lease is None:
                values |= {"lease_owner": None, "lease_epoch": jobs.c.lease_epoch + 1}
        with session_scope(self._sessions) as s:
            return bool(cast(CursorResult[Any], s.execute(q.values(**values))).rowcount)

    # ------------------------------------------------------------------ dispatch

    def claim_next(self, owner: str, ttl_s: float,
                   choose: Callable[[builtins.list[Candidate], builtins.list[Running]], Decision]) -> Claim:
        """Claim the job ``choose`` picks among those that may start (QUEUED, or RUNNING under an expired
        lease) for ``owner`` until now + ``ttl_s``, and store the changed queue reasons; one transaction.

        PostgreSQL: under a transaction-scoped advisory lock (one decision at a time across replicas),
        candidates are read ``FOR UPDATE SKIP LOCKED`` and claimed by an UPDATE that bumps the epoch.
        SQLite (one replica): the same conditional UPDATE; its single writer serialises claims.
        """
        with session_scope(self._sessions) as s:
            postgres = s.get_bind().dialect.name == "postgresql"
            if postgres:
                s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _DISPATCH_LOCK})
            now = _now(s)
            running = [Running(r.tenant, r.workers, r.gpus) for r in s.execute(
                select(jobs.c.tenant, jobs.c.workers, jobs.c.gpus).where(
                    jobs.c.status == JobStatus.RUNNING.name, jobs.c.lease_expires_at > now))]
            q = (select(jobs.c.id, jobs.c.tenant, jobs.c.priority, jobs.c.created_at, jobs.c.workers, jobs.c.gpus,
                        jobs.c.queue_reason).where(_claimable(now))
                 .order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.id).limit(_CANDIDATES))
            if postgres:
                q = q.with_for_update(skip_locked=True, of=jobs)
            found = [Candidate(r.id, r.tenant, r.priority, r.created_at, r.workers, r.gpus, r.queue_reason)
                     for r in s.execute(q)]
            decision = choose(found, running)
            tenants = {c.job_id: c.tenant for c in found}
            for job_id, reason in decision.reasons.items():
                s.execute(update(jobs).where(jobs.c.id == job_id).values(queue_reason=reason))
            reasons = {job_id: (tenants[job_id], reason) for job_id, reason in decision.reasons.items()}
            if decision.job_id is None:
                return Claim(None, reasons)
            expires = now + timedelta(seconds=ttl_s)
            claimed = s.execute(
                update(jobs).where(jobs.c.id == decision.job_id, _claimable(now))
                .values(status=JobStatus.RUNNING.name, lease_owner=owner, lease_epoch=jobs.c.lease_epoch + 1,
                        lease_expires_at=expires, queue_reason="",
                        started_at=func.coalesce(jobs.c.started_at, now))
                .returning(jobs.c.lease_epoch)).first()
            if claimed is None:  # SQLite: another process sharing the file took it (PostgreSQL: locked)
                return Claim(None, reasons)
            row = s.execute(select(jobs).where(jobs.c.id == decision.job_id)).mappings().one()
        job = _from_row(row)
        return Claim(job, reasons)

    def renew(self, lease: Lease, ttl_s: float) -> Lease | None:
        """Extend a lease still held (job RUNNING, same owner and epoch) to now + ``ttl_s``; None when lost."""
        with session_scope(self._sessions) as s:
            expires = _now(s) + timedelta(seconds=ttl_s)
            done = s.execute(update(jobs).where(*_held(lease), jobs.c.status == JobStatus.RUNNING.name)
                             .values(lease_expires_at=expires))
            if not cast(CursorResult[Any], done).rowcount:
                return None
        return Lease(lease.job_id, lease.tenant, lease.owner, lease.epoch, expires)

    def release(self, lease: Lease) -> bool:
        """Give a held RUNNING job back (QUEUED, no lease) so another replica claims it at once."""
        q = (update(jobs).where(*_held(lease), jobs.c.status == JobStatus.RUNNING.name)
             .values(status=JobStatus.QUEUED.name, lease_owner=None, lease_expires_at=None))
        with session_scope(self._sessions) as s:
            return bool(cast(CursorResult[Any], s.execute(q)).rowcount)

    def expire_leases(self) -> int:
        """End every lease now (one-replica start-up: any lease held belongs to a process that is gone)."""
        with session_scope(self._sessions) as s:
            done = s.execute(update(jobs).where(jobs.c.lease_expires_at.is_not(None),
                                                jobs.c.status == JobStatus.RUNNING.name)
                             .values(lease_expires_at=_now(s) - timedelta(seconds=1)))
            return int(cast(CursorResult[Any], done).rowcount)

    def unfinished(self) -> builtins.list[Job]:
        """Every tenant's live jobs, oldest first."""
        q = select(jobs).where(jobs.c.status.in_(_LIVE)).order_by(jobs.c.created_at, jobs.c.id)
        with session_scope(self._sessions, read_only=True) as s:
            return [_from_row(r) for r in s.execute(q).mappings()]

    def add_event(self, tenant: str, job_id: str, kind: EventKind, data: Mapping[str, Any],
                  lease: Lease | None = None) -> JobEvent:
        """Append with the next sequence number (retried when a concurrent append took it).

        With ``lease`` the append is fenced: ``LeaseLost`` when the lease no longer holds the job (the
        job row is share-locked meanwhile, so no claim slips in between the check and the insert)."""
        for attempt in range(5):
            try:
                with self._append, session_scope(self._sessions) as s:
                    if lease is None:
                        self._check_owner(s, tenant, job_id)
                    elif s.execute(select(jobs.c.id).where(jobs.c.tenant == tenant, *_held(lease))
                                   .with_for_update(read=True)).first() is None:
                        raise LeaseLost(f"job {job_id}: lease epoch {lease.epoch} of {lease.owner} no longer "
                                        "holds the job (another replica claimed it, or it was cancelled)")
                    seq = (s.execute(select(func.max(events.c.sequence)).where(events.c.job_id == job_id))
                           .scalar() or 0) + 1
                    now = datetime.now(UTC)
                    s.execute(insert(events).values(job_id=job_id, sequence=seq, kind=kind.value, data=dict(data),
                                                    time=now, replica=lease.owner if lease else None,
                                                    lease_epoch=lease.epoch if lease else None))
                return JobEvent(seq, now, kind, dict(data))
            except SqlIntegrityError:
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _check_owner(s: Session, tenant: str, job_id: str) -> None:
        if s.execute(select(jobs.c.id).where(jobs.c.tenant == tenant, jobs.c.id == job_id)).first() is None:
            raise NotFound(f"job {job_id!r} not found: list jobs to see the ids you can read")

    def events_after(self, tenant: str, job_id: str, sequence: int, limit: int = 500) -> builtins.list[JobEvent]:
        """The tenant's job's events after ``sequence``, in order (none for another tenant's job)."""
        q = (select(events).join(jobs, jobs.c.id == events.c.job_id)
             .where(jobs.c.tenant == tenant, events.c.job_id == job_id, events.c.sequence > sequence)
             .order_by(events.c.sequence).limit(limit))
        with session_scope(self._sessions, read_only=True) as s:
            return [JobEvent(r["sequence"], r["time"], EventKind(r["kind"]), r["data"]) for r in s.execute(q).mappings()]

    def add_checkpoint(self, tenant: str, job_id: str, checkpoint: JobCheckpoint) -> None:
        """Record a registered checkpoint; a repeat of the same id is ignored."""
        try:
            with session_scope(self._sessions) as s:
                self._check_owner(s, tenant, job_id)
                s.execute(delete(checkpoints).where(checkpoints.c.job_id == job_id, checkpoints.c.tenant == tenant,
                                                    checkpoints.c.step == checkpoint.step,
                                                    checkpoints.c.checkpoint_id != checkpoint.checkpoint_id))
                s.execute(insert(checkpoints).values(
                    checkpoint_id=checkpoint.checkpoint_id, job_id=job_id, tenant=tenant, step=checkpoint.step,
                    metrics=dict(checkpoint.metrics), uri=checkpoint.uri, created_at=checkpoint.created_at))
        except SqlIntegrityError:
            return  # registered before (a resumed run re-registers the checkpoint it resumed from)

    def checkpoints(self, tenant: str, job_id: str) -> builtins.list[JobCheckpoint]:
        """The job's checkpoints by step."""
        q = (select(checkpoints).where(checkpoints.c.tenant == tenant, checkpoints.c.job_id == job_id)
             .order_by(checkpoints.c.step))
        with session_scope(self._sessions) as s:
            return [JobCheckpoint(r["checkpoint_id"], r["step"], r["metrics"], r["created_at"], r["uri"])
                    for r in s.execute(q).mappings()]


def _row(job: Job) -> dict[str, Any]:
    """The mutable columns."""
    return {
        "status": job.status.name, "started_at": job.started_at,
        "finished_at": job.finished_at, "trained_tokens": job.trained_tokens, "current_step": job.current_step,
        "total_steps": job.total_steps, "result_checkpoint_id": job.result_checkpoint_id,
        "error": asdict(job.error) if job.error else None, "restarts": job.restarts,
        # The job's description and its measured pace (JSON: no migration for what only GetJob reads).
        "resolved": {"suffix": job.suffix, "labels": dict(job.labels), "pace": _pace(job)},
    }


def _pace(job: Job) -> dict[str, Any]:
    finish = job.estimated_finish.isoformat() if job.estimated_finish else None
    return {"steps_per_second": job.steps_per_second, "tokens_per_second": job.tokens_per_second,
            "estimated_finish": finish}
def _now(s: Session) -> datetime:
    """The database's clock on PostgreSQL (replicas' clocks may differ; leases compare to one clock)."""
    if s.get_bind().dialect.name == "postgresql":
        return cast(datetime, s.execute(select(func.clock_timestamp())).scalar_one()).astimezone(UTC)
    return datetime.now(UTC)


_GET_JOB = select(jobs).where(jobs.c.tenant == bindparam("tenant"), jobs.c.id == bindparam("job_id"))
_LIST_JOBS = (select(jobs).where(jobs.c.tenant == bindparam("tenant"))
              .order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(bindparam("limit")).offset(bindparam("offset")))


def _held(lease: Lease) -> tuple[Any, ...]:
    """The conditions under which ``lease`` still holds its job."""
    return (jobs.c.id == lease.job_id, jobs.c.lease_owner == lease.owner, jobs.c.lease_epoch == lease.epoch)


def _claimable(now: datetime) -> Any:
    """A job a replica may claim: QUEUED, or RUNNING under a lease that expired (its replica is gone)."""
    expired = or_(jobs.c.lease_expires_at.is_(None), jobs.c.lease_expires_at <= now)
    return or_(jobs.c.status == JobStatus.QUEUED.name, and_(jobs.c.status == JobStatus.RUNNING.name, expired))


# A job's spec never changes after it is written, and every read of a job (GetJob, each ListJobs row,
# the dispatcher's polls) parsed it anew: about a third of GetJob's CPU. Specs are parsed once per
# distinct text; the instances are shared, so nothing may change a job's spec in place (the service
# assigns a new one, ``job.spec = ...``, and the engine loads its own from ``resolved_dict``).
@functools.lru_cache(maxsize=1024)
def _spec_from_text(text: str) -> TrainingSpec:
    return TrainingSpec.model_validate_json(text)


def _spec_of(stored: Any) -> TrainingSpec:
    return _spec_from_text(json.dumps(stored, sort_keys=True, separators=(",", ":")))


def _from_row(row: RowMapping) -> Job:
    err = row["error"]
    lease = (Lease(row["id"], row["tenant"], row["lease_owner"], row["lease_epoch"], row["lease_expires_at"])
             if row["lease_owner"] and row["lease_expires_at"] else None)
    return Job(
        id=row["id"], tenant=row["tenant"], spec=_spec_of(row["spec"]),
        status=JobStatus[row["status"]], created_at=row["created_at"], run_name=row["run_name"],
        suffix=row["resolved"].get("suffix", ""), labels=dict(row["resolved"].get("labels", {})),
        idempotency_key=row["idempotency_key"] or "", request_digest=row["request_digest"], started_at=row["started_at"],
        finished_at=row["finished_at"], trained_tokens=row["trained_tokens"], current_step=row["current_step"],
        total_steps=row["total_steps"], result_checkpoint_id=row["result_checkpoint_id"],
        error=ErrorInfo(**err) if err else None, restarts=row["restarts"], priority=row["priority"], lease=lease,
        queue_reason=row["queue_reason"], **_pace_of(row["resolved"].get("pace") or {}),
    )


def _pace_of(pace: Mapping[str, Any]) -> dict[str, Any]:
    finish = pace.get("estimated_finish")
    return {"steps_per_second": float(pace.get("steps_per_second") or 0.0),
            "tokens_per_second": float(pace.get("tokens_per_second") or 0.0),
            "estimated_finish": datetime.fromisoformat(finish) if finish else None}
