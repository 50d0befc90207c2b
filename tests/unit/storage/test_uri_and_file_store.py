"""URI parsing (no server needed), the file store's own rules, and manifest parsing."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tuneforge.common.errors import AlreadyExists, FailedPrecondition, IntegrityError, InvalidInput
from tuneforge.common.storage import open_object_store
from tuneforge.common.storage.artifacts import Manifest, ManifestFile
from tuneforge.common.storage.file import FileObjectStore


def test_file_uri_opens_a_file_store(tmp_path: Path) -> None:
    store = open_object_store(f"file://{tmp_path}/objects")

    assert isinstance(store, FileObjectStore)
    assert store.root == tmp_path / "objects"
    assert (tmp_path / "objects").is_dir()


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("", "no supported scheme"),
        ("http://example.com/x", "no supported scheme"),
        ("/just/a/path", "no supported scheme"),
        ("file://relative/dir", "three slashes"),
        ("file:///", "absolute folder"),
        ("s3://bucket/prefix", "no endpoint"),
        ("s3://Bad_Bucket?endpoint=h:1", "bucket name"),
        ("s3://bucket?endpoint=h:1&secure=maybe", "secure must be"),
        ("s3://bucket?endpoint=h:1&colour=blue", "unknown parameter"),
        ("s3://bucket/../x?endpoint=h:1&secure=false", r"'\.\.'"),
    ],
)
def test_bad_uris_name_the_setting(uri: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why) as err:
        open_object_store(uri, field="TUNEFORGE_OBJECT_STORE_URI")
    assert err.value.field == "TUNEFORGE_OBJECT_STORE_URI"


def test_credentials_in_the_uri_are_refused_without_echoing_them() -> None:
    with pytest.raises(InvalidInput, match="credentials") as err:
        open_object_store("s3://AKIAXX:topsecret@bucket?endpoint=h:1")
    assert "topsecret" not in str(err.value)


def test_unusable_root_fails_at_start_up_naming_the_setting(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"")  # a root below a regular file can never be created

    with pytest.raises(InvalidInput, match="not writable") as err:
        open_object_store(f"file://{tmp_path}/a-file/store", field="TUNEFORGE_OBJECT_STORE_URI")
    assert err.value.field == "TUNEFORGE_OBJECT_STORE_URI"


def test_key_cannot_be_both_object_and_prefix_in_file_store(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "s")
    store.put_bytes("a/b", b"1")

    with pytest.raises(AlreadyExists, match="prefix"):
        store.put_bytes("a", b"2")
    store.put_bytes("c", b"3")
    with pytest.raises(AlreadyExists, match="already an object"):
        store.put_bytes("c/d", b"4")


def test_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "s")
    (tmp_path / "outside").mkdir()
    (tmp_path / "s" / "evil").symlink_to(tmp_path / "outside")

    with pytest.raises(InvalidInput, match="outside the store root"):
        store.put_bytes("evil/x", b"1")
    assert not (tmp_path / "outside" / "x").exists()


def test_writes_leave_no_temp_files(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "s")
    store.put_bytes("k", b"v")
    with pytest.raises(InvalidInput):
        store.put_stream("k2", open(tmp_path / "s" / "k", "rb"), size=5)  # noqa: SIM115

    assert list((tmp_path / "s" / ".tmp").iterdir()) == []
    assert not store.exists("k2")


def test_importing_storage_does_not_load_the_s3_sdk() -> None:
    code = "import sys, tuneforge.common.storage.artifacts as a; print('minio' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": "services"},
    )
    assert out.stdout.strip() == "False"


def _manifest() -> Manifest:
    return Manifest(files=(ManifestFile("a", 1, "0" * 64),), created_at=datetime.now(UTC), extra={"step": 3})


def test_manifest_round_trips_and_pickles() -> None:
    m = _manifest()
    back = Manifest.from_json("k", m.to_json())

    assert back == m
    assert back.same_content(pickle.loads(pickle.dumps(m)))


def test_newer_manifest_schema_asks_for_an_upgrade() -> None:
    data = _manifest().to_json().replace(b'"schema_version": 1', b'"schema_version": 99')
    with pytest.raises(FailedPrecondition, match="upgrade"):
        Manifest.from_json("ck/MANIFEST.json", data)


@pytest.mark.parametrize("data", [b"not json", b"{}", b'{"schema_version": 1, "files": [{}]}'])
def test_damaged_manifest_is_an_integrity_error(data: bytes) -> None:
    with pytest.raises(IntegrityError, match=r"ck/MANIFEST\.json"):
        Manifest.from_json("ck/MANIFEST.json", data)
