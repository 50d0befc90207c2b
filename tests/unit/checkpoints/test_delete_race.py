"""Deletion against concurrent pins and aliases, on real adapters (SQLite; PostgreSQL under `integration`).

The reference check must happen in the same transaction as the hiding: a pin or alias that lands
after the registry looked must refuse the deletion, never be dropped with the checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.checkpoints.helpers import make_registry, store_and_register
from tuneforge.checkpoints.adapters.objects import StoreCheckpointFiles, folder_key
from tuneforge.checkpoints.adapters.sql import SqlCheckpointRepository
from tuneforge.checkpoints.domain.model import Pin, RetentionPolicy
from tuneforge.checkpoints.domain.service import CheckpointRegistry
from tuneforge.common.errors import FailedPrecondition, NotFound
from tuneforge.common.storage.file import FileObjectStore


class _ReferenceLandsFirst:
    """The real repository; ``land`` runs just before ``begin_delete``, as a concurrent caller would."""

    def __init__(self, repo: SqlCheckpointRepository) -> None:
        self._repo = repo
        self.land: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._repo, name)

    def begin_delete(self, *args: Any, **kwargs: Any) -> Any:
        if self.land is not None:
            self.land()
            self.land = None
        return self._repo.begin_delete(*args, **kwargs)


@pytest.fixture
def env(tmp_path: Path, db_url: str):
    store = FileObjectStore(tmp_path / "objects")
    _, repo = make_registry(store, db_url)
    racy = _ReferenceLandsFirst(repo)
    return CheckpointRegistry(racy, StoreCheckpointFiles(store)), racy, repo, store  # type: ignore[arg-type]


def test_a_pin_that_lands_after_the_check_refuses_the_delete_and_survives(env) -> None:
    registry, racy, repo, store = env
    target = store_and_register(registry, store, "acme", "job1", 1, loss=0.9).manifest
    store_and_register(registry, store, "acme", "job1", 2, loss=0.1)  # now best and latest
    assert not registry.get("acme", target.checkpoint_id).aliases
    racy.land = lambda: repo.add_pin("acme", Pin(target.checkpoint_id, "job9", target.create_time))
    with pytest.raises(FailedPrecondition, match="pinned by 'job9'") as info:
        registry.delete("acme", target.checkpoint_id)
    assert info.value.reason == "CHECKPOINT_REFERENCED"
    assert [p.holder for p in repo.list_pins("acme", [target.checkpoint_id])] == ["job9"]
    assert registry.get("acme", target.checkpoint_id).checkpoint_id == target.checkpoint_id
    assert list(store.list(folder_key("acme", "job1/step-1")))


def test_an_alias_that_lands_after_the_check_refuses_the_delete(env) -> None:
    registry, racy, _, store = env
    first = store_and_register(registry, store, "acme", "job1", 1, loss=0.9).manifest
    store_and_register(registry, store, "acme", "job1", 2, loss=0.1)  # now best and latest
    assert not registry.get("acme", first.checkpoint_id).aliases
    racy.land = lambda: registry.set_alias("acme", "job1", "production", first.checkpoint_id)
    with pytest.raises(FailedPrecondition, match="alias 'production'"):
        registry.delete("acme", first.checkpoint_id)
    assert registry.get("acme", "job1@production").checkpoint_id == first.checkpoint_id


def test_force_drops_pins_and_aliases_and_a_pin_cannot_land_on_a_deleted_checkpoint(env) -> None:
    registry, _, repo, store = env
    one = store_and_register(registry, store, "acme", "job1", 1).manifest
    store_and_register(registry, store, "acme", "job1", 2)
    registry.pin("acme", one.checkpoint_id, "job9")
    registry.set_alias("acme", "job1", "production", one.checkpoint_id)
    registry.delete("acme", one.checkpoint_id, force=True)
    assert repo.list_pins("acme", [one.checkpoint_id]) == []
    assert "production" not in {a.name for a in registry.list_aliases("acme", "job1")}
    assert not list(store.list(folder_key("acme", "job1/step-1")))
    with pytest.raises(NotFound):
        repo.add_pin("acme", Pin(one.checkpoint_id, "job10", one.create_time))


def test_retention_keeps_a_checkpoint_pinned_after_its_plan(env) -> None:
    registry, racy, repo, store = env
    old = [store_and_register(registry, store, "acme", "job1", s, loss=1.0 - s / 10).manifest for s in (1, 2, 3)]
    racy.land = lambda: repo.add_pin("acme", Pin(old[0].checkpoint_id, "job9", old[0].create_time))
    plan = registry.set_policy("acme", "job1", RetentionPolicy(keep_best_n=1, keep_latest_m=1, metric="eval_loss",
                                                               greater_is_better=False))
    assert old[0].checkpoint_id in plan.keep and old[0].checkpoint_id not in plan.delete
    assert plan.delete == (old[1].checkpoint_id,)
    assert [m.step for m in registry.list("acme", "job1")] == [1, 3]
