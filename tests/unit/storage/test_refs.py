"""Stored folders by reference (what Ray tasks get instead of paths): fetch once, check every file."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest

from tuneforge.common.errors import IntegrityError, InvalidInput
from tuneforge.common.storage import open_object_store
from tuneforge.common.storage.refs import StoredFile, StoredFolder, fetch_folder


def _folder(tmp_path: Path, files: dict[str, bytes]) -> tuple[object, StoredFolder]:
    store = open_object_store((tmp_path / "objects").as_uri())
    for name, data in files.items():
        store.put_bytes(f"tenants/acme/checkpoints/j/step-2/{name}", data)
    refs = tuple(StoredFile(n, len(d), hashlib.sha256(d).hexdigest()) for n, d in files.items())
    return store, StoredFolder(store.uri, "tenants/acme/checkpoints/j/step-2/", refs)


def test_a_folder_is_fetched_once_into_a_cache_named_by_its_file_list(tmp_path: Path) -> None:
    store, folder = _folder(tmp_path, {"adapter_config.json": b"{}", "weights/a.safetensors": b"x" * 100})
    assert pickle.loads(pickle.dumps(folder)) == folder  # crosses Ray as plain data

    got = fetch_folder(store, folder, tmp_path / "cache")

    assert got == tmp_path / "cache" / folder.digest
    assert (got / "weights" / "a.safetensors").read_bytes() == b"x" * 100
    mtime = (got / "adapter_config.json").stat().st_mtime_ns
    assert fetch_folder(store, folder, tmp_path / "cache") == got
    assert (got / "adapter_config.json").stat().st_mtime_ns == mtime  # verified, not downloaded again


def test_a_stored_file_that_differs_from_the_reference_is_refused(tmp_path: Path) -> None:
    store, folder = _folder(tmp_path, {"config.json": b"{}"})
    store.put_bytes("tenants/acme/checkpoints/j/step-2/config.json", b"{ }")  # replaced after the reference
    with pytest.raises(IntegrityError, match="replaced or is corrupt"):
        fetch_folder(store, folder, tmp_path / "cache")
    assert not (tmp_path / "cache" / folder.digest / "config.json").exists()


@pytest.mark.parametrize("path", ["../escape.json", "/etc/passwd", "a/../../b"])
def test_paths_leaving_the_folder_are_refused(tmp_path: Path, path: str) -> None:
    store, folder = _folder(tmp_path, {"config.json": b"{}"})
    bad = StoredFolder(folder.store_uri, folder.prefix, (StoredFile(path, 2, folder.files[0].sha256),))
    with pytest.raises(InvalidInput, match="not a path inside the folder"):
        fetch_folder(store, bad, tmp_path / "cache")
