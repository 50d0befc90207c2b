"""Job leases in the SQL repository, on SQLite and PostgreSQL: claim, renew, expiry, fencing, hand-back,
and (PostgreSQL) many replicas claiming at once: each job once, quotas held."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial

import pytest

from tests.unit.training.test_repository import _job
from tuneforge.common import db
from tuneforge.training.adapters.sql import SqlJobRepository
from tuneforge.training.app import MIGRATIONS_DIR, VERSION_TABLE
from tuneforge.training.domain.dispatch import Quotas, TenantQuota, decide
from tuneforge.training.domain.model import EventKind, JobStatus
from tuneforge.training.domain.ports import LeaseLost

ANY = partial(decide, quotas=Quotas())


@pytest.fixture
def repo(db_url: str) -> Iterator[SqlJobRepository]:
    engine = db.create_db_engine(db_url)
    db.run_migrations(engine, MIGRATIONS_DIR, VERSION_TABLE)
    yield SqlJobRepository(db.make_sessionmaker(engine))
    engine.dispose()


def _queued(repo: SqlJobRepository, n: int, tenant: str = "acme", start: int = 1) -> list[str]:
    ids = []
    for i in range(start, start + n):
        job = repo.add(_job(i, tenant))
        ids.append(job.id)
    return ids


def _epochs(repo: SqlJobRepository, job_id: str) -> list[tuple[str | None, int | None]]:
    from sqlalchemy import select

    from tuneforge.common.db import session_scope
    from tuneforge.training.adapters.tables import events
    with session_scope(repo._sessions) as s:
        return [(r.replica, r.lease_epoch) for r in s.execute(
            select(events.c.replica, events.c.lease_epoch).where(events.c.job_id == job_id)
            .order_by(events.c.sequence))]


def test_a_claim_holds_the_job_until_its_lease_expires_then_another_replica_takes_it(repo: SqlJobRepository) -> None:
    [job_id] = _queued(repo, 1)
    first = repo.claim_next("r1", 60, ANY).job
    assert first is not None and first.id == job_id and first.status is JobStatus.RUNNING
    assert first.lease is not None and (first.lease.owner, first.lease.epoch) == ("r1", 1)
    assert repo.claim_next("r2", 60, ANY).job is None  # held by r1
    assert repo.renew(first.lease, 60) is not None
    repo.add_event("acme", job_id, EventKind.LOG, {"level": "INFO", "message": "r1 trains"}, first.lease)

    assert repo.renew(first.lease, 0) is not None  # r1 stops heartbeating: its lease ends now
    second = repo.claim_next("r2", 60, ANY).job
    assert second is not None and second.lease is not None and (second.lease.owner, second.lease.epoch) == ("r2", 2)
    # r1 is fenced out: no renewal, no status write, no event.
    assert repo.renew(first.lease, 60) is None
    first.current_step = 99
    assert not repo.save(first, expected=(JobStatus.RUNNING,), lease=first.lease)
    with pytest.raises(LeaseLost):
        repo.add_event("acme", job_id, EventKind.LOG, {"level": "INFO", "message": "stale"}, first.lease)
    repo.add_event("acme", job_id, EventKind.LOG, {"level": "INFO", "message": "r2 trains"}, second.lease)
    assert _epochs(repo, job_id) == [("r1", 1), ("r2", 2)]
    assert repo.get("acme", job_id).current_step == 0


def test_a_released_job_is_queued_again_and_claimed_at_once(repo: SqlJobRepository) -> None:
    [job_id] = _queued(repo, 1)
    job = repo.claim_next("r1", 60, ANY).job
    assert job is not None and job.lease is not None
    assert repo.release(job.lease)
    stored = repo.get("acme", job_id)
    assert stored.status is JobStatus.QUEUED and stored.lease is None
    again = repo.claim_next("r2", 60, ANY).job
    assert again is not None and again.lease is not None and again.lease.epoch == 2
    assert not repo.release(job.lease)  # r1's old lease gives nothing back


def test_a_cancel_without_the_lease_fences_the_running_replica_out(repo: SqlJobRepository) -> None:
    [job_id] = _queued(repo, 1)
    claimed = repo.claim_next("r1", 60, ANY).job
    assert claimed is not None and claimed.lease is not None
    cancel = repo.get("acme", job_id)
    cancel.move_to(JobStatus.CANCELLED)
    assert repo.save(cancel, expected=(JobStatus.RUNNING,))  # CancelJob on any replica
    assert repo.renew(claimed.lease, 60) is None
    with pytest.raises(LeaseLost):
        repo.add_event("acme", job_id, EventKind.METRICS, {"step": 1.0}, claimed.lease)


def test_expire_leases_frees_every_running_job_at_start_up(repo: SqlJobRepository) -> None:
    ids = _queued(repo, 2)
    for _ in ids:
        assert repo.claim_next("dead", 600, ANY).job is not None
    assert repo.claim_next("new", 600, ANY).job is None
    assert repo.expire_leases() == 2
    assert {repo.claim_next("new", 600, ANY).job.id for _ in ids} == set(ids)  # type: ignore[union-attr]


def test_quota_reasons_are_stored_once_and_cleared_by_the_claim(repo: SqlJobRepository) -> None:
    ids = _queued(repo, 3)
    one_each = partial(decide, quotas=Quotas(default=TenantQuota(max_running_jobs=1)))
    claim = repo.claim_next("r1", 60, one_each)
    assert claim.job is not None and claim.job.id == ids[0] and claim.reasons == {}  # decided before the claim
    claim = repo.claim_next("r1", 60, one_each)
    assert claim.job is None and set(claim.reasons) == set(ids[1:])
    assert "maximum of 1 jobs" in repo.get("acme", ids[1]).queue_reason
    assert repo.claim_next("r1", 60, one_each).reasons == {}  # unchanged: nothing to report again
    first = repo.get("acme", ids[0])
    first.move_to(JobStatus.SUCCEEDED)
    assert repo.save(first, lease=first.lease)
    claim = repo.claim_next("r1", 60, one_each)
    assert claim.job is not None and claim.job.id == ids[1] and claim.job.queue_reason == ""


@pytest.mark.integration
def test_replicas_claiming_at_once_take_each_job_once_and_hold_the_quotas(postgres_url: str) -> None:
    engine = db.create_db_engine(postgres_url)
    db.run_migrations(engine, MIGRATIONS_DIR, VERSION_TABLE)
    repo = SqlJobRepository(db.make_sessionmaker(engine))
    ids = _queued(repo, 6, "a") + _queued(repo, 6, "b", start=7)
    quotas = partial(decide, quotas=Quotas(default=TenantQuota(max_running_jobs=2), max_running_jobs=3))
    claimed: list[tuple[str, str]] = []
    barrier = threading.Barrier(8)

    def replica(n: int) -> None:
        barrier.wait()
        for _ in range(3):
            job = repo.claim_next(f"r{n}", 60, quotas).job
            if job is not None:
                claimed.append((job.id, job.tenant))

    threads = [threading.Thread(target=replica, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == 3 and len({job_id for job_id, _ in claimed}) == 3  # the cluster cap, each job once
    tenants = [t for _, t in claimed]
    assert max(tenants.count("a"), tenants.count("b")) == 2  # fair share: 2 + 1, never 3 of one tenant
    assert {job_id for job_id, _ in claimed} <= set(ids)
    engine.dispose()
