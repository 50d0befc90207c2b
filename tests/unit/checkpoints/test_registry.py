"""Checkpoint use cases on real adapters: SQLite + the file object store (no fakes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.unit.checkpoints.helpers import draft, make_registry, store_and_register, upload
from tuneforge.checkpoints.adapters.hygiene import CheckpointJanitor
from tuneforge.checkpoints.adapters.objects import CHECKPOINT_MANIFEST, folder_key
from tuneforge.checkpoints.domain.model import BEST, LATEST, CheckpointOrder, FileEntry, RetentionPolicy
from tuneforge.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    NotFound,
)
from tuneforge.common.paging import paginate
from tuneforge.common.storage.file import FileObjectStore


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "objects")


@pytest.fixture
def env(store: FileObjectStore, db_url: str):
    """A registry on SQLite (unit) and PostgreSQL (integration marker), with a file store."""
    registry, repo = make_registry(store, db_url)
    return registry, repo, store


def flip_byte(store: FileObjectStore, key: str, at: int = 10) -> None:
    path = store.root / key
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_nothing_is_listed_until_registered_then_manifest_is_committed(env) -> None:
    registry, _, store = env
    files = upload(store, "acme", "job1/step-1", {"adapter_model.safetensors": b"w" * 1000})
    assert registry.list("acme", "job1") == []
    result = registry.register("acme", draft("job1", 1, files, loss=0.5))
    assert result.created
    assert [m.checkpoint_id for m in registry.list("acme", "job1")] == [result.manifest.checkpoint_id]
    assert store.exists(folder_key("acme", "job1/step-1") + CHECKPOINT_MANIFEST)
    assert set(result.manifest.aliases) == {BEST, LATEST}


def test_reregistering_is_idempotent_and_different_content_conflicts(env) -> None:
    registry, _, store = env
    first = store_and_register(registry, store, "acme", "job1", 1, loss=0.5)
    files = first.manifest.draft.files
    again = registry.register("acme", draft("job1", 1, files, loss=0.5))
    assert (again.created, again.manifest.checkpoint_id) == (False, first.manifest.checkpoint_id)
    with pytest.raises(AlreadyExists, match="step 1 with different content"):
        registry.register("acme", draft("job1", 1, files, loss=0.4))


def test_registration_refused_when_files_are_missing_or_differ(env) -> None:
    registry, _, store = env
    files = upload(store, "acme", "job1/step-1", {"a.safetensors": b"x" * 100})
    bad = (FileEntry("a.safetensors", 99, files[0].sha256), FileEntry("b.safetensors", 5, "0" * 64))
    with pytest.raises(FailedPrecondition) as info:
        registry.register("acme", draft("job1", 1, bad))
    assert {v.field for v in info.value.violations} == {"files[0].size", "files[1].path"}
    assert registry.list("acme", "job1") == []


def test_malformed_registration_reports_every_field(env) -> None:
    registry, _, _ = env
    bad = draft("bad job", -1, (FileEntry("../x", -1, "nothex"),), prefix="/abs")
    with pytest.raises(InvalidInput) as info:
        registry.register("acme", bad)
    assert {v.field for v in info.value.violations} == {
        "job_id", "step", "prefix", "files[0].path", "files[0].size", "files[0].sha256"}


def test_retention_keeps_best_latest_aliased_and_pinned(env) -> None:
    registry, _, store = env
    registry.set_policy("acme", "job1", RetentionPolicy(keep_best_n=1, keep_latest_m=1))
    losses = {1: 0.9, 2: 0.3, 3: 0.8, 4: 0.7, 5: 0.6, 6: 0.5}
    ids: dict[int, str] = {}
    for step, loss in losses.items():
        ids[step] = store_and_register(registry, store, "acme", "job1", step, loss).manifest.checkpoint_id
        if step == 3:
            registry.set_alias("acme", "job1", "production", ids[3])
        if step == 4:
            registry.pin("acme", ids[4], holder="job2")
    kept = {m.step for m in registry.list("acme", "job1")}
    assert kept == {2, 3, 4, 6}  # best (2), latest (6), production (3), pinned (4)
    for step in (1, 5):
        assert not list(store.list(folder_key("acme", f"job1/step-{step}")))
    assert registry.get("acme", "job1@production").step == 3
    assert registry.get("acme", f"job1@{BEST}").step == 2


def test_delete_refused_while_referenced_unless_forced(env) -> None:
    registry, _, store = env
    one = store_and_register(registry, store, "acme", "job1", 1).manifest
    two = store_and_register(registry, store, "acme", "job1", 2).manifest
    registry.set_alias("acme", "job1", "production", one.checkpoint_id)
    with pytest.raises(FailedPrecondition, match="alias 'production'"):
        registry.delete("acme", one.checkpoint_id)
    registry.pin("acme", two.checkpoint_id, "job9")
    with pytest.raises(FailedPrecondition, match="pinned by 'job9'"):
        registry.delete("acme", two.checkpoint_id)
    registry.delete("acme", two.checkpoint_id, force=True)
    assert registry.get("acme", f"job1@{LATEST}").checkpoint_id == one.checkpoint_id
    assert not list(store.list(folder_key("acme", "job1/step-2")))


def test_alias_moves_keep_history_newest_first(env) -> None:
    registry, _, store = env
    a = store_and_register(registry, store, "acme", "job1", 1).manifest.checkpoint_id
    b = store_and_register(registry, store, "acme", "job1", 2).manifest.checkpoint_id
    registry.set_alias("acme", "job1", "production", a)
    moved = registry.set_alias("acme", "job1", "production", b)
    assert moved.checkpoint_id == b
    assert [h.checkpoint_id for h in moved.history] == [b, a]
    with pytest.raises(InvalidInput, match="moved by the service"):
        registry.set_alias("acme", "job1", LATEST, a)
    other = store_and_register(registry, store, "acme", "job2", 1).manifest.checkpoint_id
    with pytest.raises(FailedPrecondition, match="belongs to job 'job2'"):
        registry.set_alias("acme", "job1", "production", other)


def test_best_may_be_moved_explicitly_until_the_next_registration_re_ranks(env) -> None:
    registry, _, store = env
    one = store_and_register(registry, store, "acme", "job1", 1, 0.3).manifest.checkpoint_id
    two = store_and_register(registry, store, "acme", "job1", 2, 0.5).manifest.checkpoint_id
    assert registry.get("acme", f"job1@{BEST}").checkpoint_id == one  # by eval_loss
    moved = registry.set_alias("acme", "job1", BEST, two)  # e.g. an evaluation found step 2 better
    assert moved.checkpoint_id == two and [h.checkpoint_id for h in moved.history] == [two, one]
    assert registry.get("acme", f"job1@{BEST}").checkpoint_id == two
    with pytest.raises(InvalidInput, match="moved by the service"):
        registry.set_alias("acme", "job1", LATEST, one)
    store_and_register(registry, store, "acme", "job1", 3, 0.9)
    assert registry.get("acme", f"job1@{BEST}").checkpoint_id == one  # registration re-ranks by the metric


def test_read_verifies_resumes_and_names_a_corrupt_file(env) -> None:
    registry, _, store = env
    payload = bytes(range(256)) * 40
    m = store_and_register(registry, store, "acme", "job1", 1, payload=payload).manifest
    path = "adapter_model.safetensors"
    assert b"".join(registry.read_file("acme", m.checkpoint_id, path, chunk_size=1000)) == payload
    assert b"".join(registry.read_file("acme", m.checkpoint_id, path, offset=4321, chunk_size=1000)) == payload[4321:]
    flip_byte(store, folder_key("acme", "job1/step-1") + path)
    received: list[bytes] = []
    with pytest.raises(IntegrityError, match=f"file '{path}' of checkpoint {m.checkpoint_id} is corrupt"):
        received.extend(registry.read_file("acme", m.checkpoint_id, path, chunk_size=1000))
    assert sum(map(len, received)) < len(payload)  # the file never arrives complete


def test_resume_falls_back_to_the_previous_complete_checkpoint(env) -> None:
    registry, _, store = env
    one = store_and_register(registry, store, "acme", "job1", 1).manifest
    store_and_register(registry, store, "acme", "job1", 2)
    assert registry.latest_complete_checkpoint("acme", "job1").step == 2
    flip_byte(store, folder_key("acme", "job1/step-2") + "adapter_model.safetensors")
    assert registry.latest_complete_checkpoint("acme", "job1", deep=False).step == 2  # shallow misses rot
    assert registry.latest_complete_checkpoint("acme", "job1").checkpoint_id == one.checkpoint_id
    flip_byte(store, folder_key("acme", "job1/step-1") + "trainer_state.json", at=2)
    assert registry.latest_complete_checkpoint("acme", "job1") is None


def test_tenants_cannot_see_each_other(env) -> None:
    registry, _, store = env
    m = store_and_register(registry, store, "acme", "job1", 1).manifest
    assert registry.list("acme2", "job1") == []
    with pytest.raises(NotFound):
        registry.get("acme2", m.checkpoint_id)
    with pytest.raises(NotFound):
        registry.read_file("acme2", m.checkpoint_id, "trainer_state.json")
    with pytest.raises(NotFound):
        registry.delete("acme2", m.checkpoint_id, force=True)
    # acme2 registering acme's files by prefix only reaches its own (empty) root
    with pytest.raises(FailedPrecondition):
        registry.register("acme2", draft("job1", 1, m.draft.files))


def test_list_orders_by_metric_and_paginates(env) -> None:
    registry, _, store = env
    for step, loss in ((1, 0.5), (2, 0.2), (3, None), (4, 0.4)):
        store_and_register(registry, store, "acme", "job1", step, loss)
    ordered = registry.list("acme", "job1", CheckpointOrder.METRIC, "eval_loss")
    assert [m.step for m in ordered] == [2, 4, 1, 3]
    page, token = paginate(ordered, 3, "")
    rest, last = paginate(ordered, 3, token)
    assert ([m.step for m in page + rest], last) == ([2, 4, 1, 3], "")
    with pytest.raises(InvalidInput, match="page_token"):
        paginate(ordered, 3, "garbage")


def test_gc_deletes_stale_orphans_only(env) -> None:
    registry, repo, store = env
    store_and_register(registry, store, "acme", "job1", 1)
    upload(store, "acme", "job1/step-2", {"adapter_model.safetensors": b"never registered"})
    janitor = CheckpointJanitor(store, repo, orphan_grace=timedelta(hours=1))
    assert janitor.run_once().orphans_deleted == ()  # too young to collect
    report = janitor.run_once(now=datetime.now(UTC) + timedelta(hours=2))
    assert {k.rsplit("/", 1)[1] for k in report.orphans_deleted} == {"adapter_model.safetensors", "MANIFEST.json"}
    assert not list(store.list(folder_key("acme", "job1/step-2")))
    assert registry.latest_complete_checkpoint("acme", "job1").step == 1
