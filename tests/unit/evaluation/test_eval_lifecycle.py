"""Evaluation lifecycle and A/B pairs on the real adapters (SQLite; PostgreSQL under `integration`).

A restart fails orphaned runs, cancel works without the run that started the evaluation, the
hidden side of a pair cannot be recomputed, a re-export keeps the ratings, and every SQL query
stays inside its tenant.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError as SqlIntegrityError

from tuneforge.common import db
from tuneforge.common.errors import NotFound
from tuneforge.common.settings import load_settings
from tuneforge.common.storage.file import FileObjectStore
from tuneforge.evaluation.adapters.objects import StoreReportStore
from tuneforge.evaluation.adapters.sql import SqlEvaluationRepository
from tuneforge.evaluation.app import MIGRATIONS_DIR, VERSION_TABLE, build_service
from tuneforge.evaluation.domain import pairs as ab
from tuneforge.evaluation.domain.model import DatasetRef, Evaluation, EvaluationSpec, Metric, ModelRef, State
from tuneforge.evaluation.domain.service import EvaluationService, new_evaluation_id
from tuneforge.evaluation.settings import EvaluationSettings

SPEC = EvaluationSpec(model=ModelRef(checkpoint_id="ckpt_1"), baseline=ModelRef(base_model="tiny"),
                      datasets=(DatasetRef("dsv_1"),), metrics=(Metric.ROUGE,))


@dataclass
class Env:
    """A repository on a migrated database, its data folder, and a way to start the service on it."""

    repo: SqlEvaluationRepository
    settings: EvaluationSettings
    hooks: list

    def start(self) -> EvaluationService:
        """Start the service as its process does (``app.build_service``)."""
        service, hooks = build_service(self.settings)
        self.hooks.extend(hooks)
        return service

    def seed(self, tenant: str, state: State, **kw: object) -> Evaluation:
        """An evaluation stored as an earlier process left it."""
        evaluation = Evaluation(new_evaluation_id(), tenant, SPEC, state, datetime.now(UTC), **kw)  # type: ignore[arg-type]
        return self.repo.add(evaluation)


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> Iterator[Env]:
    engine = db.create_db_engine(db_url)
    db.run_migrations(engine, MIGRATIONS_DIR, VERSION_TABLE)
    settings = load_settings(EvaluationSettings, environ={
        "TUNEFORGE_AUTH_DISABLED": "true", "TUNEFORGE_DATA_DIR": str(tmp_path / "data"),
        "TUNEFORGE_DATABASE_URL": db_url})
    e = Env(SqlEvaluationRepository(db.make_sessionmaker(engine)), settings, [])
    yield e
    for hook in e.hooks:
        hook()
    engine.dispose()


# ---------------------------------------------------------------------------------- restart / cancel

def test_a_restart_fails_the_evaluations_it_orphaned_and_leaves_finished_ones(env: Env) -> None:
    queued, running = env.seed("acme", State.QUEUED), env.seed("acme", State.RUNNING)
    other = env.seed("globex", State.RUNNING)
    done = env.seed("acme", State.SUCCEEDED)
    service = env.start()
    for tenant, e in (("acme", queued), ("acme", running), ("globex", other)):
        got = service.get(tenant, e.id)
        assert got.state is State.FAILED, e.id
        assert got.error is not None and got.error.code == "ABORTED"
        assert "create the evaluation again" in got.error.message
        assert got.ended_at is not None
        assert service.wait_events(tenant, e.id, 0, 0)[-1].state is State.FAILED
    assert service.get("acme", done.id).state is State.SUCCEEDED


def test_cancel_ends_an_evaluation_no_run_of_this_process_holds(env: Env) -> None:
    service = env.start()
    # Left RUNNING by a process that is gone (another replica, or a crash after start-up).
    orphan = env.seed("acme", State.RUNNING)
    cancelled = service.cancel("acme", orphan.id)
    assert cancelled.state is State.CANCELLED
    assert cancelled.ended_at is not None
    assert service.wait_events("acme", orphan.id, 0, 0)[-1].state is State.CANCELLED
    with pytest.raises(NotFound):
        service.cancel("globex", orphan.id)


def test_a_cancel_cannot_overwrite_a_state_reached_meanwhile(env: Env) -> None:
    stored = env.seed("acme", State.QUEUED)
    started = replace(stored, state=State.RUNNING)
    assert env.repo.save(started, expected=(State.QUEUED,))
    # The cancel read QUEUED before the run started; its QUEUED -> CANCELLED must not apply now.
    stale = replace(stored, state=State.CANCELLED, ended_at=datetime.now(UTC))
    assert not env.repo.save(stale, expected=(State.QUEUED,))
    assert env.repo.get("acme", stored.id).state is State.RUNNING
    finished = replace(stored, state=State.SUCCEEDED, ended_at=datetime.now(UTC))
    assert env.repo.save(finished, expected=(State.QUEUED, State.RUNNING))
    assert not env.repo.save(stale, expected=(State.QUEUED, State.RUNNING))
    assert env.repo.get("acme", stored.id).state is State.SUCCEEDED


# ---------------------------------------------------------------------------------- A/B pairs

def _generations(n: int) -> tuple[list[dict], list[dict]]:
    model = [{"dataset_version_id": "dsv_1", "index": i, "prompt": f"q{i}", "text": f"model {i}"} for i in range(n)]
    base = [{**g, "text": f"base {i}"} for i, g in enumerate(model)]
    return model, base


def test_the_hidden_side_cannot_be_recomputed_from_the_evaluation_id_and_seed() -> None:
    model, base = _generations(64)
    first = ab.build_pairs("eval_1", model, base, seed=7)
    again = ab.build_pairs("eval_1", model, base, seed=7)
    for p in first:
        assert (p["left"].startswith("model")) == p["left_is_model"]
        assert (p["right"].startswith("model")) != p["left_is_model"]
    # Same inputs, same ids and order...
    assert [p["pair_id"] for p in first] == [p["pair_id"] for p in again]
    # ...but the sides are drawn afresh (64 equal coin flips by chance: 2**-64).
    assert [p["left_is_model"] for p in first] != [p["left_is_model"] for p in again]
    # The old derivation from caller-known values no longer predicts them.
    rng = random.Random("eval_1:7")
    predicted = [rng.random() < 0.5 for _ in model]
    by_index = {int(p["prompt"][1:]): p["left_is_model"] for p in first}
    assert [by_index[i] for i in range(64)] != predicted


def _finished_comparison(env: Env, tenant: str, n: int) -> Evaluation:
    model, base = _generations(n)
    evaluation = env.seed(tenant, State.SUCCEEDED)
    gens = [{**g, "role": "model"} for g in model] + [{**g, "role": "baseline"} for g in base]
    reports = StoreReportStore(FileObjectStore(env.settings.data_dir / "objects"))
    evaluation.report_key, evaluation.report_uri = reports.put_report(tenant, evaluation.id, {"generations": gens})
    env.repo.save(evaluation)
    assert env.repo.get(tenant, evaluation.id).report_key == evaluation.report_key
    return evaluation


def test_exporting_again_returns_the_same_pairs_and_keeps_the_ratings(env: Env) -> None:
    service = env.start()
    evaluation = _finished_comparison(env, "acme", 8)
    first = service.export_pairs("acme", evaluation.id, seed=1)
    ratings = [{"pair_id": p["pair_id"], "rater": "ann", "preference": "left"} for p in first]
    assert service.record_ratings("acme", evaluation.id, ratings) == 8
    before = service.win_rates("acme", evaluation.id)
    again = service.export_pairs("acme", evaluation.id, seed=2)
    assert again == first  # same ids, order, texts and hidden sides
    assert len(env.repo.get_ratings("acme", evaluation.id)) == 8
    assert service.win_rates("acme", evaluation.id) == before


# ---------------------------------------------------------------------------------- tenancy

def test_events_and_updates_stay_inside_the_tenant(env: Env) -> None:
    acme = env.seed("acme", State.RUNNING)
    env.repo.add_event("acme", acme.id, State.RUNNING, 1, 2, "half way")
    with pytest.raises(NotFound):
        env.repo.add_event("globex", acme.id, State.RUNNING, 2, 2, "forged")
    assert env.repo.events_after("globex", acme.id, 0) == []
    assert [e.message for e in env.repo.events_after("acme", acme.id, 0)] == ["half way"]
    forged = replace(acme, tenant="globex", state=State.SUCCEEDED)
    assert not env.repo.save(forged)
    assert env.repo.get("acme", acme.id).state is State.RUNNING


def test_a_rating_of_another_tenant_or_evaluation_is_never_replaced(env: Env) -> None:
    evaluation = _finished_comparison(env, "acme", 2)
    env.repo.save_pairs("acme", evaluation.id, ab.build_pairs(evaluation.id, *_generations(2), seed=0))
    pair = env.repo.get_pairs("acme", evaluation.id)[0]
    env.repo.save_ratings("acme", evaluation.id, [{"pair_id": pair["pair_id"], "rater": "ann", "preference": "left"}])
    other = env.seed("globex", State.SUCCEEDED)
    forged = [{"pair_id": pair["pair_id"], "rater": "ann", "preference": "right"}]
    with pytest.raises(SqlIntegrityError):  # the delete half of the upsert must not reach acme's row
        env.repo.save_ratings("globex", other.id, forged)
    assert env.repo.get_ratings("acme", evaluation.id) == [
        {"pair_id": pair["pair_id"], "rater": "ann", "preference": "left"}]


def test_samples_put_each_examples_generations_side_by_side():
    from tuneforge.evaluation.domain.pairs import side_by_side

    gens = [{"role": "baseline", "dataset_version_id": "dsv_b", "index": 0, "prompt": "p0", "text": "base b0"},
            {"role": "model", "dataset_version_id": "dsv_a", "index": 1, "prompt": [{"role": "user", "content": "hi"}],
             "text": "model a1", "reference": "ref a1"},
            {"role": "model", "dataset_version_id": "dsv_b", "index": 0, "prompt": "p0", "text": "model b0"},
            {"role": "baseline", "dataset_version_id": "dsv_a", "index": 1, "prompt": "x", "text": "base a1"}]
    assert side_by_side(gens) == [
        {"dataset_version_id": "dsv_a", "index": 1, "prompt": "user: hi", "model_output": "model a1",
         "baseline_output": "base a1", "reference": "ref a1"},
        {"dataset_version_id": "dsv_b", "index": 0, "prompt": "p0", "model_output": "model b0",
         "baseline_output": "base b0", "reference": ""}]
