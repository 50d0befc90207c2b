"""TUNEFORGE_RAY_STORAGE_PATH: a folder as is, or the object store's S3 URI as a pyarrow filesystem."""

from __future__ import annotations

import pytest

from tuneforge.common.errors import InvalidInput
from tuneforge.engine.distributed import STORAGE_ENV, _storage


def test_a_folder_is_passed_as_is(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path))
    assert _storage() == (str(tmp_path), None)


def test_an_s3_uri_becomes_a_filesystem_with_the_service_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from pyarrow import fs as pafs

    key = tmp_path / "secret-key"
    key.write_text("s3cret\n")
    monkeypatch.setenv("TUNEFORGE_S3_ACCESS_KEY", "access")
    monkeypatch.setenv("TUNEFORGE_S3_SECRET_KEY_FILE", str(key))
    monkeypatch.setenv(STORAGE_ENV, "s3://tuneforge/ray-train/?endpoint=s3.ns.svc:9000&secure=false")
    path, filesystem = _storage()
    assert path == "tuneforge/ray-train"
    assert isinstance(filesystem, pafs.S3FileSystem)
    assert filesystem.region == "us-east-1"


def test_an_unknown_s3_option_is_refused_naming_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STORAGE_ENV, "s3://tuneforge/ray?endpoint=h:9000&endpoint_override=x")
    with pytest.raises(InvalidInput, match=STORAGE_ENV):
        _storage()
