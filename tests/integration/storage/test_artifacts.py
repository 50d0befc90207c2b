"""Manifest-last artifacts and the shared checkpoint writer, on both backends."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tuneforge.common.errors import AlreadyExists, IntegrityError, InvalidInput, NotFound
from tuneforge.common.storage import ObjectStore
from tuneforge.common.storage.artifacts import (
    MANIFEST_NAME,
    ArtifactWriter,
    gc_orphans,
    list_artifacts,
    read_manifest,
    verify_artifact,
)
from tuneforge.common.storage.checkpoint_writer import CheckpointWriter

PARENT = "tenants/acme/checkpoints/"


def test_artifact_is_invisible_until_the_manifest_is_committed(object_store: ObjectStore) -> None:
    writer = ArtifactWriter(object_store, PARENT + "ck-1")
    writer.add_bytes("config.json", b"{}")
    writer.add_stream("model.safetensors", io.BytesIO(b"w" * 5000))

    assert list_artifacts(object_store, PARENT) == []
    with pytest.raises(NotFound, match="ck-1"):
        read_manifest(object_store, PARENT + "ck-1/")

    manifest = writer.commit({"step": 100, "metrics": {"loss": 1.5}})

    assert list_artifacts(object_store, PARENT) == [PARENT + "ck-1/"]
    assert read_manifest(object_store, PARENT + "ck-1").same_content(manifest)
    assert [(f.path, f.size) for f in manifest.files] == [("config.json", 2), ("model.safetensors", 5000)]
    doc = json.loads(object_store.get_bytes(PARENT + "ck-1/" + MANIFEST_NAME))
    assert doc["schema_version"] == 1
    assert doc["extra"] == {"step": 100, "metrics": {"loss": 1.5}}
    assert doc["created_at"]


def test_committed_artifact_cannot_be_rewritten(object_store: ObjectStore) -> None:
    writer = ArtifactWriter(object_store, PARENT + "ck-1/")
    writer.add_bytes("a", b"1")
    writer.commit({})

    with pytest.raises(AlreadyExists, match="ck-1"):
        ArtifactWriter(object_store, PARENT + "ck-1/")
    with pytest.raises(InvalidInput, match="MANIFEST"):
        ArtifactWriter(object_store, PARENT + "ck-2/").add_bytes(MANIFEST_NAME, b"{}")


def test_verify_artifact_names_the_corrupt_file(object_store: ObjectStore, flip_byte) -> None:
    writer = ArtifactWriter(object_store, PARENT + "ck-1/")
    writer.add_bytes("ok.bin", b"a" * 100)
    writer.add_bytes("bad.bin", b"b" * 100)
    writer.commit({})
    assert len(verify_artifact(object_store, PARENT + "ck-1/").files) == 2

    flip_byte(object_store, PARENT + "ck-1/bad.bin")

    with pytest.raises(IntegrityError, match=r"bad\.bin") as err:
        verify_artifact(object_store, PARENT + "ck-1/")
    assert err.value.reason == "CHECKSUM_MISMATCH"

    object_store.delete(PARENT + "ck-1/bad.bin")
    with pytest.raises(IntegrityError, match=r"bad\.bin.*missing"):
        verify_artifact(object_store, PARENT + "ck-1/")


def test_gc_orphans_removes_only_stale_uncommitted_prefixes(object_store: ObjectStore) -> None:
    committed = ArtifactWriter(object_store, PARENT + "done/")
    committed.add_bytes("w", b"1")
    committed.commit({})
    ArtifactWriter(object_store, PARENT + "crashed/").add_bytes("w", b"partial")

    later = datetime.now(UTC) + timedelta(hours=2)
    assert gc_orphans(object_store, PARENT, timedelta(hours=3), now=later) == []  # not stale yet
    assert gc_orphans(object_store, PARENT, timedelta(hours=1), now=later) == [PARENT + "crashed/"]

    assert [i.key for i in object_store.list(PARENT)] == [PARENT + "done/MANIFEST.json", PARENT + "done/w"]
    assert list_artifacts(object_store, PARENT) == [PARENT + "done/"]


def _checkpoint(folder: Path, weights: bytes = b"\x00\x01" * 4096) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text('{"hidden": 64}')
    (folder / "sub" / "tokenizer.json").write_text('{"vocab": {}}')
    return folder


def test_checkpoint_writer_uploads_all_files_and_is_idempotent(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    local = _checkpoint(tmp_path / "ck")
    writer = CheckpointWriter(object_store)

    first = writer.write(local, PARENT + "step-10", {"step": 10})

    assert [f.path for f in first.files] == ["config.json", "model.safetensors", "sub/tokenizer.json"]
    assert verify_artifact(object_store, PARENT + "step-10").same_content(first)
    again = writer.write(local, PARENT + "step-10/", {"step": 10})
    assert again.created_at == first.created_at  # the existing manifest: nothing was rewritten

    (local / "model.safetensors").write_bytes(b"different")
    with pytest.raises(AlreadyExists, match=r"model\.safetensors"):
        writer.write(local, PARENT + "step-10/", {"step": 10})
    with pytest.raises(AlreadyExists, match="fields differ"):
        writer.write(_checkpoint(tmp_path / "ck2"), PARENT + "step-10/", {"step": 11})


def test_checkpoint_writer_adopts_files_of_an_interrupted_attempt(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    local = _checkpoint(tmp_path / "ck")
    object_store.put_file(PARENT + "step-5/model.safetensors", local / "model.safetensors")  # crashed run
    object_store.put_bytes(PARENT + "step-5/config.json", b"stale bytes")

    manifest = CheckpointWriter(object_store).write(local, PARENT + "step-5/", {})

    assert object_store.get_bytes(PARENT + "step-5/config.json") == b'{"hidden": 64}'
    assert verify_artifact(object_store, PARENT + "step-5/").same_content(manifest)


def test_checkpoint_writer_refuses_symlinks_and_empty_folders(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="no files"):
        CheckpointWriter(object_store).write(tmp_path / "empty", PARENT + "x/", {})

    local = _checkpoint(tmp_path / "ck")
    (local / "link").symlink_to("/etc/passwd")
    with pytest.raises(InvalidInput, match="symlink"):
        CheckpointWriter(object_store).write(local, PARENT + "x/", {})


def test_a_retried_commit_finds_its_own_manifest(object_store: ObjectStore) -> None:
    first, retry, other = (ArtifactWriter(object_store, PARENT + "ck-9/") for _ in range(3))
    for writer in (first, retry, other):
        writer.add_bytes("w", b"same bytes")
    committed = first.commit({"step": 9})

    assert retry.commit({"step": 9}).created_at == committed.created_at
    with pytest.raises(AlreadyExists, match="ck-9"):
        other.commit({"step": 10})
