"""SQL implementation of the ``Catalog`` port (SQLite or PostgreSQL through SQLAlchemy Core)."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import CursorResult, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import sessionmaker

from tuneforge.common import db
from tuneforge.common.errors import AlreadyExists
from tuneforge.common.public_text import echo
from tuneforge.datasets.adapters import tables as t
from tuneforge.datasets.domain.model import Dataset, Run, RunEvent, RunState, Version


def _dataset(row: Any, latest: str) -> Dataset:
    return Dataset(row.id, row.tenant, row.name, row.description, row.kind, row.created_at, dict(row.labels or {}), latest)


def _version(row: Any) -> Version:
    return Version(row.id, row.tenant, row.dataset_id, row.content_hash, row.parent_version_id, row.row_count,
                   row.kind, row.prefix, row.created_at, row.request_id, dict(row.document))


def _run(row: Any) -> Run:
    return Run(row.id, row.tenant, row.input_version_id, RunState(row.state), row.created_at, row.request_id,
               dict(row.document), row.output_version_id, row.ended_at)


# Prebuilt: ListDatasets runs these per call (and _latest per dataset listed); building a statement
# costs more than running it on SQLite.
_LATEST = (select(t.versions.c.id)
           .where(t.versions.c.tenant == bindparam("tenant"), t.versions.c.dataset_id == bindparam("dataset_id"))
           .order_by(t.versions.c.created_at.desc(), t.versions.c.id.desc()).limit(1))
_LIST_DATASETS = (select(t.datasets).where(t.datasets.c.tenant == bindparam("tenant")).order_by(t.datasets.c.name)
                  .offset(bindparam("offset")).limit(bindparam("limit")))


class SqlCatalog:
    """Datasets, versions, runs and leases in SQL tables; every query filters on tenant."""

    def __init__(self, sessions: sessionmaker) -> None:
        self._sessions = sessions

    def _latest(self, session: Any, tenant: str, dataset_id: str) -> str:
        row = session.execute(_LATEST, {"tenant": tenant, "dataset_id": dataset_id}).first()
        return row.id if row else ""

    def find_dataset(self, tenant: str, ref: str) -> Dataset | None:
        with db.session_scope(self._sessions, read_only=True) as s:
            row = s.execute(select(t.datasets).where(
                t.datasets.c.tenant == tenant, (t.datasets.c.id == ref) | (t.datasets.c.name == ref))).first()
            return _dataset(row, self._latest(s, tenant, row.id)) if row else None

    def get_or_create_dataset(self, dataset: Dataset) -> Dataset:
        existing = self.find_dataset(dataset.tenant, dataset.name)
        if existing:
            return existing
        try:
            with db.session_scope(self._sessions) as s:
                s.execute(insert(t.datasets).values(
                    id=dataset.id, tenant=dataset.tenant, name=dataset.name, description=dataset.description,
                    kind=dataset.kind, labels=dataset.labels, created_at=dataset.created_at))
        except SqlIntegrityError:  # a concurrent create won the race
            pass
        found = self.find_dataset(dataset.tenant, dataset.name)
        assert found is not None
        return found

    def list_datasets(self, tenant: str, offset: int, limit: int) -> list[Dataset]:
        with db.read_scope(self._sessions) as c:  # a hot read: Core, prebuilt statements
            rows = c.execute(_LIST_DATASETS, {"tenant": tenant, "offset": offset, "limit": limit}).all()
            return [_dataset(r, self._latest(c, tenant, r.id)) for r in rows]

    def delete_dataset(self, tenant: str, dataset_id: str) -> None:
        with db.session_scope(self._sessions) as s:
            s.execute(delete(t.versions).where(t.versions.c.tenant == tenant, t.versions.c.dataset_id == dataset_id))
            s.execute(delete(t.datasets).where(t.datasets.c.tenant == tenant, t.datasets.c.id == dataset_id))

    def add_version(self, version: Version) -> None:
        try:
            with db.session_scope(self._sessions) as s:
                s.execute(insert(t.versions).values(
                    id=version.id, tenant=version.tenant, dataset_id=version.dataset_id,
                    content_hash=version.content_hash, parent_version_id=version.parent_version_id,
                    row_count=version.row_count, kind=version.kind, prefix=version.prefix,
                    request_id=version.request_id, document=version.document, created_at=version.created_at))
        except SqlIntegrityError as exc:
            raise AlreadyExists(f"request_id {echo(version.request_id)} was already used: use a new request_id") from exc

    def get_version(self, tenant: str, version_id: str) -> Version | None:
        with db.session_scope(self._sessions, read_only=True) as s:
            row = s.execute(select(t.versions).where(t.versions.c.tenant == tenant, t.versions.c.id == version_id)).first()
            return _version(row) if row else None

    def list_versions(self, tenant: str, dataset_id: str, offset: int, limit: int) -> list[Version]:
        with db.session_scope(self._sessions, read_only=True) as s:
            rows = s.execute(select(t.versions).where(t.versions.c.tenant == tenant, t.versions.c.dataset_id == dataset_id)
                             .order_by(t.versions.c.created_at.desc(), t.versions.c.id.desc())
                             .offset(offset).limit(limit)).all()
            return [_version(r) for r in rows]

    def delete_version(self, tenant: str, version_id: str) -> None:
        with db.session_scope(self._sessions) as s:
            s.execute(delete(t.versions).where(t.versions.c.tenant == tenant, t.versions.c.id == version_id))

    def save_run(self, run: Run) -> None:
        values = dict(tenant=run.tenant, input_version_id=run.input_version_id, state=run.state.value,
                      request_id=run.request_id, document=run.document, output_version_id=run.output_version_id,
                      created_at=run.created_at, ended_at=run.ended_at)
        try:
            with db.session_scope(self._sessions) as s:
                done = s.execute(update(t.runs).where(t.runs.c.id == run.id, t.runs.c.tenant == run.tenant).values(**values))
                if cast(CursorResult[Any], done).rowcount == 0:
                    s.execute(insert(t.runs).values(id=run.id, **values))
        except SqlIntegrityError as exc:
            raise AlreadyExists(f"request_id {echo(run.request_id)} was already used: use a new request_id") from exc

    def get_run(self, tenant: str, run_id: str) -> Run | None:
        with db.session_scope(self._sessions) as s:
            row = s.execute(select(t.runs).where(t.runs.c.tenant == tenant, t.runs.c.id == run_id)).first()
            return _run(row) if row else None

    def add_run_event(self, tenant: str, run_id: str, event: RunEvent) -> None:
        with db.session_scope(self._sessions) as s:
            s.execute(insert(t.run_events).values(tenant=tenant, run_id=run_id, sequence=event.sequence, time=event.time,
                                                  state=event.state.value, step=event.step, message=event.message))

    def run_events(self, tenant: str, run_id: str, after: int) -> list[RunEvent]:
        e = t.run_events.c
        with db.session_scope(self._sessions) as s:
            rows = s.execute(select(t.run_events).where(e.tenant == tenant, e.run_id == run_id, e.sequence > after)
                             .order_by(e.sequence)).all()
            return [RunEvent(r.sequence, r.time, RunState(r.state), r.step, r.message) for r in rows]

    def fail_unfinished_runs(self, message: str) -> list[Run]:
        with db.session_scope(self._sessions) as s:
            rows = s.execute(select(t.runs).where(t.runs.c.state.in_([RunState.QUEUED.value, RunState.RUNNING.value]))).all()
            failed = []
            for row in rows:
                document = {**row.document, "error": {"code": "ABORTED", "message": message, "field": ""}}
                ended = db.utcnow()
                s.execute(update(t.runs).where(t.runs.c.id == row.id).values(
                    state=RunState.FAILED.value, document=document, ended_at=ended))
                run = _run(row)
                run.state, run.document, run.ended_at = RunState.FAILED, document, ended
                failed.append(run)
            return failed

    def add_lease(self, tenant: str, version_id: str, holder: str) -> None:
        try:
            with db.session_scope(self._sessions) as s:
                s.execute(insert(t.leases).values(tenant=tenant, version_id=version_id, holder=holder, created_at=db.utcnow()))
        except SqlIntegrityError:
            pass  # already held by this holder: acquiring twice is fine

    def remove_lease(self, tenant: str, version_id: str, holder: str) -> bool:
        with db.session_scope(self._sessions) as s:
            done = s.execute(delete(t.leases).where(t.leases.c.tenant == tenant, t.leases.c.version_id == version_id,
                                                    t.leases.c.holder == holder))
            return bool(cast(CursorResult[Any], done).rowcount)

    def leases(self, tenant: str, version_ids: list[str]) -> dict[str, list[str]]:
        if not version_ids:
            return {}
        with db.session_scope(self._sessions) as s:
            rows = s.execute(select(t.leases).where(t.leases.c.tenant == tenant, t.leases.c.version_id.in_(version_ids))).all()
        out: dict[str, list[str]] = {}
        for row in rows:
            out.setdefault(row.version_id, []).append(row.holder)
        return out
