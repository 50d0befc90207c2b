"""Helpers for the storage contract tests: tamper with stored bytes behind a store's back."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest

from tuneforge.common.storage.file import FileObjectStore
from tuneforge.common.storage.s3 import S3ObjectStore

Corrupter = Callable[[object, str], None]


@pytest.fixture
def flip_byte(request: pytest.FixtureRequest) -> Corrupter:
    """A function flipping one byte of a stored object's data, keeping its recorded sha256."""

    def flip(store: object, key: str) -> None:
        if isinstance(store, FileObjectStore):
            path = store.root / key
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x01
            path.write_bytes(bytes(data))
        elif isinstance(store, S3ObjectStore):
            client = request.getfixturevalue("s3_server").client()
            resp = client.get_object(store.bucket, key)
            try:
                data = bytearray(resp.read())
            finally:
                resp.close()
                resp.release_conn()
            data[len(data) // 2] ^= 0x01
            # Rewrite only the data object: the sidecar with the original sha256 stays.
            client.put_object(store.bucket, key, io.BytesIO(bytes(data)), len(data))
        else:
            raise TypeError(f"unknown store {store!r}")

    return flip


@pytest.fixture
def drop_data(request: pytest.FixtureRequest) -> Corrupter:
    """A function deleting a stored object's data but not its checksum record."""

    def drop(store: object, key: str) -> None:
        if isinstance(store, FileObjectStore):
            (store.root / key).unlink()
        elif isinstance(store, S3ObjectStore):
            request.getfixturevalue("s3_server").client().remove_object(store.bucket, key)
        else:
            raise TypeError(f"unknown store {store!r}")

    return drop
