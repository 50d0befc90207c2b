"""The ObjectStore contract, run on both backends (``object_store`` is parametrized file / s3)."""

from __future__ import annotations

import hashlib
import random
import tracemalloc
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from tuneforge.common.errors import IntegrityError, InvalidInput, NotFound
from tuneforge.common.storage import ObjectStore
from tuneforge.common.storage.s3 import S3ObjectStore


class LazyStream:
    """``size`` pseudo-random bytes produced on demand (never held whole), not seekable."""

    def __init__(self, size: int, seed: int = 7) -> None:
        self.remaining = size
        self._rng = random.Random(seed)
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        n = self.remaining if n is None or n < 0 else min(n, self.remaining)
        data = self._rng.randbytes(n)
        self.remaining -= n
        self.digest.update(data)
        return data


def test_put_get_round_trip_records_sha256(object_store: ObjectStore) -> None:
    data = b"hello tuneforge\n" * 100
    info = object_store.put_bytes("tenants/a/x.bin", data)

    assert (info.key, info.size, info.sha256) == (
        "tenants/a/x.bin",
        len(data),
        hashlib.sha256(data).hexdigest(),
    )
    assert object_store.get_bytes("tenants/a/x.bin") == data
    assert object_store.stat("tenants/a/x.bin").sha256 == hashlib.sha256(data).hexdigest()
    assert object_store.exists("tenants/a/x.bin")
    assert not object_store.exists("tenants/a/y.bin")


def test_put_file_get_file_and_offset_reads(object_store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 40)
    object_store.put_file("f/src.bin", src)

    dest = tmp_path / "out" / "copy.bin"
    info = object_store.get_file("f/src.bin", dest)

    assert dest.read_bytes() == src.read_bytes()
    assert info.size == src.stat().st_size
    assert b"".join(object_store.iter_chunks("f/src.bin", offset=10_000)) == src.read_bytes()[10_000:]


def test_streams_20mb_without_holding_it_whole(
    object_store: ObjectStore, request: pytest.FixtureRequest
) -> None:
    size = 20 * 1024 * 1024
    stream = LazyStream(size)
    tracemalloc.start()
    try:
        info = object_store.put_stream("big/blob.bin", stream, size=size)  # type: ignore[arg-type]
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        read_digest = hashlib.sha256()
        for chunk in object_store.iter_chunks("big/blob.bin", chunk_size=256 * 1024):
            read_digest.update(chunk)
        _, get_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert info.size == size
    assert info.sha256 == stream.digest.hexdigest() == read_digest.hexdigest()
    assert put_peak < size * 0.8, f"upload held {put_peak} of {size} bytes at once"
    assert get_peak < 4 * 1024 * 1024, f"download held {get_peak} bytes at once"
    if isinstance(object_store, S3ObjectStore):
        raw = request.getfixturevalue("s3_server").client().stat_object(object_store.bucket, "big/blob.bin")
        assert raw.etag.endswith("-4"), f"expected a 4-part multipart upload, etag {raw.etag}"


def test_flipped_byte_raises_integrity_error_naming_key(
    object_store: ObjectStore, flip_byte, tmp_path: Path
) -> None:
    object_store.put_bytes("t/weights.bin", bytes(1000))
    flip_byte(object_store, "t/weights.bin")

    with pytest.raises(IntegrityError, match=r"t/weights\.bin") as err:
        object_store.get_bytes("t/weights.bin")
    assert err.value.reason == "CHECKSUM_MISMATCH"
    with pytest.raises(IntegrityError, match=r"t/weights\.bin"):
        object_store.get_file("t/weights.bin", tmp_path / "w.bin")
    assert not (tmp_path / "w.bin").exists()
    assert len(object_store.get_bytes("t/weights.bin", verify=False)) == 1000


def test_data_lost_behind_its_record_is_an_integrity_error(object_store: ObjectStore, drop_data) -> None:
    object_store.put_bytes("t/lost.bin", b"x" * 10)
    drop_data(object_store, "t/lost.bin")

    with pytest.raises(IntegrityError, match=r"t/lost\.bin") as err:
        object_store.get_bytes("t/lost.bin")
    assert err.value.reason == "DATA_MISSING"


def test_declared_size_mismatch_is_rejected_and_invisible(object_store: ObjectStore) -> None:
    with pytest.raises(InvalidInput, match="size"):
        object_store.put_stream("s/x", LazyStream(100), size=99)  # type: ignore[arg-type]

    assert not object_store.exists("s/x")


def test_list_delete_and_delete_prefix(object_store: ObjectStore) -> None:
    for key in ("p/b", "p/a/2", "p/a/1", "p-x", "q/1"):
        object_store.put_bytes(key, key.encode())

    assert [i.key for i in object_store.list("p/")] == ["p/a/1", "p/a/2", "p/b"]
    assert [i.key for i in object_store.list("p")] == ["p-x", "p/a/1", "p/a/2", "p/b"]
    assert [i.sha256 for i in object_store.list("q/")] == [hashlib.sha256(b"q/1").hexdigest()]
    assert list(object_store.list_prefixes("")) == ["p/", "q/"]
    assert list(object_store.list_prefixes("p/")) == ["p/a/"]

    object_store.delete("p/b")
    object_store.delete("p/does-not-exist")
    assert object_store.delete_prefix("p/a/") == 2

    assert [i.key for i in object_store.list()] == ["p-x", "q/1"]
    with pytest.raises(NotFound, match="p/b"):
        object_store.get_bytes("p/b")


TRAVERSAL_KEYS = [
    "../etc/passwd",
    "a/../../b",
    "%2e%2e/secret",
    "a%2fb",
    "%252e%252e/x",
    "/abs/path",
    "a\\b",
    "a\x00b",
    "a\nb",
    "a\x1bb",
    "",
    "a//b",
    ".meta/x",
    "x" * 1025,
]


@pytest.mark.parametrize("key", TRAVERSAL_KEYS, ids=repr)
def test_unsafe_keys_are_rejected_everywhere(object_store: ObjectStore, key: str) -> None:
    for call in (
        lambda: object_store.put_bytes(key, b"x"),
        lambda: object_store.get_bytes(key),
        lambda: object_store.stat(key),
        lambda: object_store.delete(key),
    ):
        with pytest.raises(InvalidInput, match="key"):
            call()


def test_presigned_url_reads_the_object(object_store: ObjectStore) -> None:
    object_store.put_bytes("u/report.json", b'{"ok": true}')

    url = object_store.presigned_get_url("u/report.json", timedelta(minutes=5))

    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b'{"ok": true}'
    with pytest.raises(NotFound):
        object_store.presigned_get_url("u/missing.json", timedelta(minutes=5))
