"""SQLAlchemy repository of training jobs, their event logs and checkpoints (SQLite or PostgreSQL)."""

from __future__ import annotations

import builtins
import threading
from collections.abc import Collection, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, RowMapping, Select, and_, delete, exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.common.db import session_scope
from tuneforge.common.errors import NotFound
from tuneforge.engine.spec import TrainingSpec
from tuneforge.training.adapters.tables import checkpoints, events, jobs, labels
from tuneforge.training.domain.model import (
    ErrorInfo,
    EventKind,
    Job,
    JobCheckpoint,
    JobEvent,
    JobFilter,
    JobStatus,
)

_LIVE = [JobStatus.VALIDATING.name, JobStatus.QUEUED.name, JobStatus.RUNNING.name]


class SqlJobRepository:
    """Implements ``JobRepository``; every tenant-facing query filters on the tenant."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        # Appends of this process are serialised (a run's thread and a CancelJob may append at once);
        # appends of other processes sharing the database are resolved by the retry below.
        self._append = threading.Lock()

    def add(self, job: Job) -> Job:
        """Insert with its labels; an existing (tenant, idempotency_key) returns the stored job instead."""
        try:
            with session_scope(self._sessions) as s:
                s.execute(insert(jobs).values(**_row(job), id=job.id, tenant=job.tenant,
                                              idempotency_key=job.idempotency_key or None,
                                              request_digest=job.request_digest, method=job.spec.method.kind.name,
                                              spec=job.spec.resolved_dict(), run_name=job.run_name,
                                              resolved={"suffix": job.suffix, "labels": dict(job.labels)},
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
        with session_scope(self._sessions, read_only=True) as s:
            row = s.execute(select(jobs).where(jobs.c.tenant == tenant, jobs.c.id == job_id)).mappings().first()
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
        q: Select[Any] = select(jobs).where(jobs.c.tenant == tenant)
        if filters.statuses:
            q = q.where(jobs.c.status.in_(sorted(s.name for s in filters.statuses)))
        if filters.method is not None:
            q = q.where(jobs.c.method == filters.method.name)
        for key, value in filters.labels.items():
            q = q.where(exists().where(and_(labels.c.job_id == jobs.c.id, labels.c.key == key, labels.c.value == value)))
        q = q.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit).offset(offset)
        with session_scope(self._sessions, read_only=True) as s:
            return [_from_row(r) for r in s.execute(q).mappings()]

    def save(self, job: Job, *, expected: Collection[JobStatus] = ()) -> bool:
        """Update the mutable columns; with ``expected``, only while the stored status is one of them."""
        q = update(jobs).where(jobs.c.tenant == job.tenant, jobs.c.id == job.id)
        if expected:
            q = q.where(jobs.c.status.in_([s.name for s in expected]))
        with session_scope(self._sessions) as s:
            return bool(cast(CursorResult[Any], s.execute(q.values(**_row(job)))).rowcount)

    def unfinished(self) -> builtins.list[Job]:
        """Every tenant's live jobs, oldest first."""
        q = select(jobs).where(jobs.c.status.in_(_LIVE)).order_by(jobs.c.created_at, jobs.c.id)
        with session_scope(self._sessions, read_only=True) as s:
            return [_from_row(r) for r in s.execute(q).mappings()]

    def add_event(self, tenant: str, job_id: str, kind: EventKind, data: Mapping[str, Any]) -> JobEvent:
        """Append with the next sequence number (retried when a concurrent append took it)."""
        for attempt in range(5):
            try:
                with self._append, session_scope(self._sessions) as s:
                    self._check_owner(s, tenant, job_id)
                    seq = (s.execute(select(func.max(events.c.sequence)).where(events.c.job_id == job_id))
                           .scalar() or 0) + 1
                    now = datetime.now(UTC)
                    s.execute(insert(events).values(job_id=job_id, sequence=seq, kind=kind.value, data=dict(data),
                                                    time=now))
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
    }


def _from_row(row: RowMapping) -> Job:
    err = row["error"]
    return Job(
        id=row["id"], tenant=row["tenant"], spec=TrainingSpec.model_validate(row["spec"]),
        status=JobStatus[row["status"]], created_at=row["created_at"], run_name=row["run_name"],
        suffix=row["resolved"].get("suffix", ""), labels=dict(row["resolved"].get("labels", {})),
        idempotency_key=row["idempotency_key"] or "", request_digest=row["request_digest"], started_at=row["started_at"],
        finished_at=row["finished_at"], trained_tokens=row["trained_tokens"], current_step=row["current_step"],
        total_steps=row["total_steps"], result_checkpoint_id=row["result_checkpoint_id"],
        error=ErrorInfo(**err) if err else None, restarts=row["restarts"],
    )
