"""The SQL job repository on SQLite and PostgreSQL: migrations, idempotency, tenancy, filters, paging, events."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tuneforge.common import db
from tuneforge.common.errors import InvalidInput, NotFound
from tuneforge.common.paging import next_page_token, page_bounds
from tuneforge.engine.spec import MethodKind, load_spec
from tuneforge.training.adapters.sql import SqlJobRepository
from tuneforge.training.app import MIGRATIONS_DIR, VERSION_TABLE
from tuneforge.training.domain.model import ErrorInfo, EventKind, Job, JobCheckpoint, JobFilter, JobStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def repo(db_url: str) -> Iterator[SqlJobRepository]:
    engine = db.create_db_engine(db_url)
    db.run_migrations(engine, MIGRATIONS_DIR, VERSION_TABLE)
    yield SqlJobRepository(db.make_sessionmaker(engine))
    engine.dispose()


def _job(i: int, tenant: str = "acme", *, key: str = "", method: MethodKind = MethodKind.LORA,
         labels: dict | None = None, status: JobStatus = JobStatus.QUEUED) -> Job:
    spec = load_spec({
        "tenant": tenant, "model": {"name": "tiny"}, "method": {"kind": method.value, "lora": {"target_modules": ["q_proj"]}},
        "data": {"mixture": [{"source": {"dataset_version": f"dsv_{i}"}, "weight": 2.0, "task": "qa"}]},
        "hyperparameters": {"lr_scheduler": "cosine"},
        "output": {"checkpoint_uri": "file:///x", "checkpoint_prefix": f"tenants/{tenant}/checkpoints/",
                   "run_name": f"job_{i:03d}"}})
    return Job(f"job_{i:03d}", tenant, spec, status, T0 + timedelta(seconds=i), f"job_{i:03d}", "s",
               labels or {}, key, f"d{i}")


def test_add_get_save_and_tenant_isolation(repo: SqlJobRepository) -> None:
    job = repo.add(_job(1))
    assert repo.get("acme", job.id) == job
    with pytest.raises(NotFound):
        repo.get("acme2", job.id)
    job.status, job.error, job.current_step = JobStatus.FAILED, ErrorInfo("INTERNAL", "boom", "x"), 3
    assert not repo.save(job, expected=(JobStatus.RUNNING,))  # compare-and-set: stored status is QUEUED
    assert repo.save(job, expected=(JobStatus.QUEUED,))
    again = repo.get("acme", job.id)
    assert again.status is JobStatus.FAILED and again.error == ErrorInfo("INTERNAL", "boom", "x") and again.current_step == 3
    assert repo.unfinished() == []


def test_an_idempotency_key_is_per_tenant(repo: SqlJobRepository) -> None:
    first = repo.add(_job(1, key="k"))
    assert repo.add(_job(2, key="k")).id == first.id  # same tenant, same key: the first job
    assert repo.add(_job(3, "acme2", key="k")).id == "job_003"  # another tenant's key space
    assert repo.find_by_key("acme", "k").id == first.id and repo.find_by_key("acme", "nope") is None


def test_list_filters_and_pages_newest_first(repo: SqlJobRepository) -> None:
    for i in range(7):
        repo.add(_job(i, method=MethodKind.FULL if i % 2 else MethodKind.LORA, labels={"team": "a" if i < 4 else "b"},
                      status=JobStatus.RUNNING if i == 5 else JobStatus.QUEUED))
    repo.add(_job(50, "acme2"))
    ids = [j.id for j in repo.list("acme", JobFilter(), limit=50, offset=0)]
    assert ids == [f"job_{i:03d}" for i in range(6, -1, -1)]
    assert [j.id for j in repo.list("acme", JobFilter(method=MethodKind.FULL), limit=50, offset=0)] == [
        "job_005", "job_003", "job_001"]
    assert [j.id for j in repo.list("acme", JobFilter(labels={"team": "b"}, statuses=frozenset({JobStatus.RUNNING})),
                                    limit=50, offset=0)] == ["job_005"]
    pages, token = [], ""
    while True:  # the servicer's paging: one extra row tells whether a next page exists
        offset, size = page_bounds(3, token)
        items = repo.list("acme", JobFilter(), limit=size + 1, offset=offset)
        pages.append([j.id for j in items[:size]])
        token = next_page_token(offset, size, offset + len(items))
        if not token:
            break
    assert pages == [ids[:3], ids[3:6], ids[6:]]
    with pytest.raises(InvalidInput):
        page_bounds(3, "forged")


def test_events_get_monotonic_sequences_even_when_appended_concurrently(repo: SqlJobRepository) -> None:
    repo.add(_job(1))

    def append(n: int) -> None:
        for k in range(10):
            repo.add_event("acme", "job_001", EventKind.LOG, {"level": "INFO", "message": f"{n}-{k}"})

    threads = [threading.Thread(target=append, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    events = repo.events_after("acme", "job_001", 0)
    assert [e.sequence for e in events] == list(range(1, 31))
    assert [e.sequence for e in repo.events_after("acme", "job_001", 25)] == [26, 27, 28, 29, 30]
    assert repo.events_after("acme2", "job_001", 0) == []
    with pytest.raises(NotFound):
        repo.add_event("acme2", "job_001", EventKind.LOG, {"message": "x"})


def test_checkpoints_are_recorded_once_by_step(repo: SqlJobRepository) -> None:
    repo.add(_job(1))
    for step in (4, 2, 2):
        repo.add_checkpoint("acme", "job_001", JobCheckpoint(f"ckpt_{step}", step, {"loss": 1.0}, T0, f"u{step}"))
    assert [(c.checkpoint_id, c.step) for c in repo.checkpoints("acme", "job_001")] == [("ckpt_2", 2), ("ckpt_4", 4)]
    assert repo.checkpoints("acme2", "job_001") == []
