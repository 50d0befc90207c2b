"""A job's measured pace (rates and estimated finish) survives the SQL repository, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from tests.unit.training.test_repository import T0, _job, repo  # noqa: F401 - the fixture
from tuneforge.training.adapters.sql import SqlJobRepository
from tuneforge.training.domain.model import JobStatus


def test_the_pace_is_saved_and_read_back_and_old_rows_have_none(repo: SqlJobRepository) -> None:  # noqa: F811
    job = repo.add(_job(1, status=JobStatus.RUNNING))
    assert (job.steps_per_second, job.tokens_per_second, job.estimated_finish) == (0.0, 0.0, None)
    job.steps_per_second, job.tokens_per_second, job.estimated_finish = 2.5, 640.0, T0 + timedelta(hours=1)
    assert repo.save(job, expected=(JobStatus.RUNNING,))
    again = repo.get("acme", job.id)
    assert (again.steps_per_second, again.tokens_per_second) == (2.5, 640.0)
    assert again.estimated_finish == T0 + timedelta(hours=1)
    assert again.suffix == "s" and again.labels == job.labels  # the description shares the column
    again.move_to(JobStatus.CANCELLED)
    repo.save(again)
    done = repo.get("acme", job.id)
    assert done.estimated_finish is None and done.steps_per_second == 2.5  # the last measure stays
