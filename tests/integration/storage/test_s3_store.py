"""S3-only behaviour against the real server: expiring URLs, outages, credentials, maintenance."""

from __future__ import annotations

import io
import logging
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr

from tests.fixtures.s3 import TEST_PART_SIZE, S3Server, new_bucket_name
from tuneforge.common.errors import PermissionDenied, Unavailable
from tuneforge.common.storage import open_object_store
from tuneforge.common.storage.artifacts import verify_artifact
from tuneforge.common.storage.checkpoint_writer import CheckpointWriter
from tuneforge.common.storage.s3 import S3ObjectStore

pytestmark = pytest.mark.integration


def _store(server: S3Server, **options: object) -> S3ObjectStore:
    store = open_object_store(
        server.uri(new_bucket_name()),
        access_key=server.access_key,
        secret_key=server.secret_key,
        part_size=TEST_PART_SIZE,
        **options,
    )
    assert isinstance(store, S3ObjectStore)
    return store


class StopsServerMidway(io.BytesIO):
    """A seekable stream that stops the server once ``at`` bytes were read, restarting it later."""

    def __init__(self, data: bytes, server: S3Server, at: int, restart_after_s: float) -> None:
        super().__init__(data)
        self.server, self.at, self.restart_after_s = server, at, restart_after_s
        self.restarter: threading.Timer | None = None

    def read(self, n: int | None = -1) -> bytes:
        chunk = super().read(n)
        if self.restarter is None and self.tell() >= self.at:
            self.server.stop()
            self.restarter = threading.Timer(self.restart_after_s, self.server.start)
            self.restarter.start()
        return chunk


def test_presigned_url_works_then_expires(s3_store: S3ObjectStore) -> None:
    s3_store.put_bytes("r/eval.json", b"{}")
    # Works without credentials while valid (a generous expiry: no race with a loaded machine).
    with urllib.request.urlopen(s3_store.presigned_get_url("r/eval.json", timedelta(minutes=5)), timeout=10) as resp:
        assert resp.read() == b"{}"
    # A short-lived URL is refused once expired; poll with a deadline instead of trusting one sleep.
    url = s3_store.presigned_get_url("r/eval.json", timedelta(seconds=1))
    deadline, code = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        time.sleep(1.2)
        try:
            urllib.request.urlopen(url, timeout=10).close()
        except urllib.error.HTTPError as err:
            code = err.code
            break
    assert code == 403


def test_upload_survives_a_server_restart_midway(s3_server: S3Server) -> None:
    store = _store(s3_server, parallel_uploads=2, backoff_s=0.5)
    data = bytes(range(256)) * (64 * 1024)  # 16 MiB: four 5 MiB parts
    stream = StopsServerMidway(data, s3_server, at=12 << 20, restart_after_s=1.0)
    try:
        info = store.put_stream("big/shard.bin", stream, size=len(data))
    finally:
        if stream.restarter:
            stream.restarter.join()
        s3_server.start()

    assert stream.restarter is not None, "the server was never stopped: the test proved nothing"
    assert info.size == len(data)
    assert store.get_bytes("big/shard.bin") == data
    # The upload cut short by the stop left parts on the server; the helper cleans them up.
    assert store.abort_incomplete_uploads(older_than=timedelta(0)) >= 1
    assert store.abort_incomplete_uploads(older_than=timedelta(0)) == 0


def test_checkpoint_writer_waits_out_an_outage(s3_server: S3Server, tmp_path: Path) -> None:
    store = _store(s3_server, retries=2, backoff_s=0.2)
    local = tmp_path / "ck"
    local.mkdir()
    for i in range(3):
        (local / f"shard-{i}.safetensors").write_bytes(bytes([i]) * 200_000)
    s3_server.stop()
    restarter = threading.Timer(1.5, s3_server.start)
    restarter.start()
    try:
        manifest = CheckpointWriter(store, retries=4, backoff_s=0.5).write(local, "ck/step-1/", {"step": 1})
    finally:
        restarter.join()
        s3_server.start()

    assert verify_artifact(store, "ck/step-1/").same_content(manifest)


def test_unreachable_server_is_unavailable_without_leaking_secrets(
    s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(s3_server, retries=1, backoff_s=0.1)
    s3_server.stop()
    try:
        with caplog.at_level(logging.DEBUG), pytest.raises(Unavailable, match=s3_server.endpoint) as err:
            store.put_bytes("x/y", b"data")
    finally:
        s3_server.start()

    assert s3_server.secret_key not in str(err.value) + caplog.text + repr(store) + store.uri
    assert s3_server.access_key not in str(err.value) + caplog.text + repr(store) + store.uri


def test_credentials_may_come_as_secret_strings_from_settings(s3_server: S3Server) -> None:
    store = open_object_store(
        s3_server.uri(new_bucket_name()) + "&region=us-east-1",
        access_key=SecretStr(s3_server.access_key),
        secret_key=SecretStr(s3_server.secret_key),
    )
    store.put_bytes("k", b"v")
    assert store.get_bytes("k") == b"v"


def test_wrong_credentials_fail_at_start_up(s3_server: S3Server) -> None:
    with pytest.raises(PermissionDenied, match="credentials"):
        open_object_store(
            s3_server.uri(new_bucket_name()), access_key=s3_server.access_key, secret_key="wrong-secret-key"
        )


def test_abort_incomplete_uploads_respects_the_age_cutoff(
    s3_store: S3ObjectStore, s3_server: S3Server
) -> None:
    client = s3_server.client()
    client._create_multipart_upload(s3_store.bucket, "dangling/part.bin", {})

    assert s3_store.abort_incomplete_uploads(older_than=timedelta(hours=1)) == 0
    assert s3_store.abort_incomplete_uploads(older_than=timedelta(0)) == 1
    assert client._list_multipart_uploads(s3_store.bucket).uploads == []


def test_lifecycle_rule_is_installed_or_reported_unsupported(
    s3_store: S3ObjectStore, s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        installed = s3_store.ensure_abort_incomplete_lifecycle(days=2)

    if installed:
        rules = s3_server.client().get_bucket_lifecycle(s3_store.bucket).rules
        assert [r.abort_incomplete_multipart_upload.days_after_initiation for r in rules] == [2]
    else:
        assert "does not support bucket lifecycle" in caplog.text
