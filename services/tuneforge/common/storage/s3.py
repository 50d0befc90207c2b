"""``s3://bucket/prefix?endpoint=host:port&secure=false``: an object store on any S3 server.

Bytes are streamed with the ``minio`` SDK (multipart above ``part_size``). The sha256 is computed
while streaming and recorded in a sidecar object ``<prefix>/.meta/<key>`` written after the data
(why a sidecar and not user metadata: see ``_internal``). Idempotent calls are retried with
exponential backoff on connection errors and 5xx answers; when the server stays unreachable the
call raises ``Unavailable``. Credentials live only inside the SDK client: they never appear in
``uri``, ``repr``, messages or logs.
"""

from __future__ import annotations

import builtins
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.deleteobjects import DeleteObject
from minio.error import S3Error, ServerError
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, LifecycleConfig, Rule

from tuneforge.common.errors import (
    FailedPrecondition,
    IntegrityError,
    Internal,
    InvalidInput,
    NotFound,
    PermissionDenied,
    TuneforgeError,
    Unavailable,
)
from tuneforge.common.public_text import echo
from tuneforge.common.storage._internal import (
    META_ROOT,
    TMP_ROOT,
    BytesReader,
    HashingReader,
    Sidecar,
    check_declared_size,
    check_offset,
    meta_key,
    verified_chunks,
    write_chunks_atomically,
)
from tuneforge.common.storage.base import ObjectInfo
from tuneforge.common.storage.keys import check_key, check_prefix

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PART_SIZE = 16 << 20
_LIFECYCLE_RULE_ID = "tuneforge-abort-incomplete-multipart"
_TRANSIENT = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError, ServerError)
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout"}
_MISSING_CODES = {"NoSuchKey", "NoSuchObject"}
_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


class S3ObjectStore:
    """An ``ObjectStore`` on an S3 bucket, under an optional key prefix.

    Args:
        bucket: bucket name; created at start-up when ``create_bucket`` and missing.
        endpoint: ``host:port`` of the S3 server.
        access_key: access key id (from settings; never logged).
        secret_key: secret key (from settings; never logged).
        prefix: key prefix inside the bucket (``""`` or ``"a/b"``).
        secure: use HTTPS.
        region: bucket region; ``None`` asks the server.
        part_size: multipart part size in bytes (at least 5 MiB); the memory an upload holds is
            about ``part_size * (parallel_uploads + 1)``.
        parallel_uploads: parts uploaded concurrently.
        retries: how many times an idempotent call is retried on connection errors.
        backoff_s: first retry delay; doubles each time, capped at 8 s.
        create_bucket: create the bucket at start-up if it does not exist.
    """

    def __init__(
        self,
        *,
        bucket: str,
        endpoint: str,
        access_key: str | None,
        secret_key: str | None,
        prefix: str = "",
        secure: bool = True,
        region: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        parallel_uploads: int = 2,
        retries: int = 5,
        backoff_s: float = 0.5,
        create_bucket: bool = True,
    ) -> None:
        if part_size < 5 << 20:
            raise InvalidInput.field_error("part_size", f"{part_size} is below S3's 5 MiB minimum part size")
        self.bucket = bucket
        self.endpoint = endpoint
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if self._prefix:
            check_prefix(self._prefix, field="object_store_uri")
        scheme_q = "" if secure else "&secure=false"
        self.uri = f"s3://{bucket}/{self._prefix}?endpoint={endpoint}{scheme_q}"
        self._part_size = part_size
        self._parallel = parallel_uploads
        self._retries = retries
        self._backoff_s = backoff_s
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=_http_client(),
        )
        if create_bucket:
            self._ensure_bucket()
        self._probe_writable()

    def __repr__(self) -> str:
        return f"S3ObjectStore({echo(self.uri)})"

    # ---- error handling ----------------------------------------------------------------------

    def _retrying(self, what: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        """Run ``fn``; retry transient failures with backoff; map failures to tuneforge errors."""
        attempts = self._retries + 1 if retry else 1
        last: BaseException | None = None
        for attempt in range(attempts):
            try:
                return fn()
            except S3Error as exc:
                if exc.code not in _TRANSIENT_CODES:
                    raise self._mapped(exc, what) from exc
                last = exc
            except _TRANSIENT as exc:
                last = exc
            if attempt + 1 < attempts:
                delay = min(self._backoff_s * 2**attempt, 8.0)
                log.warning(
                    "object store %s: %s failed (%s), retry %d in %.1fs",
                    self.endpoint,
                    what,
                    type(last).__name__,
                    attempt + 1,
                    delay,
                )
                time.sleep(delay)
        raise Unavailable(
            f"object store at {self.endpoint} failed while {what} after {attempts} attempt(s) "
            f"({type(last).__name__}): check that the S3 server is up and reachable, then retry"
        ) from last

    def _mapped(self, exc: S3Error, what: str) -> TuneforgeError:
        if exc.code in _MISSING_CODES:
            return NotFound(f"{what}: the object does not exist in {self.uri}")
        if exc.code == "NoSuchBucket":
            return FailedPrecondition(
                f"{what}: bucket {echo(self.bucket)} does not exist at {self.endpoint}: create it or "
                "start the service with bucket creation enabled"
            )
        if exc.code in _DENIED_CODES:
            return PermissionDenied(
                f"{what}: the S3 server refused the credentials ({exc.code}): check the object store "
                "access key and secret key settings and the bucket policy"
            )
        return Internal(f"{what}: S3 error {exc.code} from {self.endpoint}")

    def _key(self, key: str) -> str:
        return self._prefix + check_key(key)

    def _meta(self, key: str) -> str:
        return self._prefix + meta_key(check_key(key))

    # ---- start-up ----------------------------------------------------------------------------

    def _ensure_bucket(self) -> None:
        def ensure() -> None:
            if self._client.bucket_exists(self.bucket):
                return
            try:
                self._client.make_bucket(self.bucket)
                log.info("created bucket %s at %s", self.bucket, self.endpoint)
            except S3Error as exc:
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

        self._retrying(f"creating bucket {echo(self.bucket)}", ensure)

    def _probe_writable(self) -> None:
        """Fail fast at start-up on bad credentials or a read-only bucket."""
        probe = f"{self._prefix}{TMP_ROOT}probe-{uuid.uuid4().hex}"
        self._retrying("writing a start-up probe object", lambda: self._put_small(probe, b"ok"))
        self._retrying(
            "deleting the start-up probe object", lambda: self._client.remove_object(self.bucket, probe)
        )

    # ---- writes ------------------------------------------------------------------------------

    def _put_small(self, name: str, data: bytes) -> None:
        self._client.put_object(self.bucket, name, cast(BinaryIO, BytesReader(data)), len(data))

    def put_stream(self, key: str, stream: BinaryIO, *, size: int | None = None) -> ObjectInfo:
        """Stream ``stream`` to ``key`` (multipart above ``part_size``), then record its sha256.

        A seekable stream is rewound and re-sent when the server fails mid-upload; a
        non-seekable one fails with ``Unavailable`` at once (the caller must retry it whole).
        """
        name = self._key(key)
        start = _tell(stream)

        def upload() -> HashingReader:
            if start is not None:
                stream.seek(start)
            reader = HashingReader(stream, key=key, expected_size=size)
            self._client.put_object(
                self.bucket,
                name,
                cast(BinaryIO, reader),
                -1 if size is None else size,  # a known size spares the SDK a copy of each part
                part_size=self._part_size,
                num_parallel_uploads=self._parallel,
            )
            return reader

        reader = self._retrying(f"uploading {echo(key)}", upload, retry=start is not None)
        try:
            if size is not None and not reader.at_eof():  # the SDK stops reading at ``size``
                check_declared_size(key, size, reader.size)
        except InvalidInput:
            self._retrying(
                f"removing the rejected upload {echo(key)}", lambda: self._client.remove_object(self.bucket, name)
            )
            raise
        sidecar = Sidecar(size=reader.size, sha256=reader.sha256)
        self._retrying(
            f"recording the checksum of {echo(key)}", lambda: self._put_small(self._meta(key), sidecar.to_json())
        )
        return ObjectInfo(key=key, size=sidecar.size, sha256=sidecar.sha256, modified=datetime.now(UTC))

    def put_bytes(self, key: str, data: bytes) -> ObjectInfo:
        """Store a small object."""
        return self.put_stream(key, BytesReader(data), size=len(data))  # type: ignore[arg-type]

    def put_file(self, key: str, path: Path) -> ObjectInfo:
        """Store a local file (re-read from the start on retries)."""
        with path.open("rb") as fh:
            return self.put_stream(key, fh, size=path.stat().st_size)

    # ---- reads -------------------------------------------------------------------------------

    def _sidecar(self, key: str) -> tuple[Sidecar, datetime | None]:
        def fetch() -> tuple[bytes, datetime | None]:
            resp = self._client.get_object(self.bucket, self._meta(key))
            try:
                modified = resp.headers.get("last-modified")
                return resp.read(), parsedate_to_datetime(modified) if modified else None
            finally:
                resp.close()
                resp.release_conn()

        data, modified = self._retrying(f"reading object {echo(key)}", fetch)
        return Sidecar.from_json(key, data), modified

    def iter_chunks(
        self, key: str, *, offset: int = 0, chunk_size: int = 1 << 20, verify: bool = True
    ) -> Iterator[bytes]:
        """Yield the object's bytes from ``offset``; verifies the sha256 at the end (offset 0 only).

        ``NotFound`` and ``InvalidInput`` are raised before the first chunk; ``IntegrityError``
        after the last one; a connection lost mid-stream raises ``Unavailable``.
        """
        check_verify = check_offset(offset, verify)
        sidecar, _ = self._sidecar(key)
        try:
            resp = self._retrying(
                f"reading object {echo(key)}",
                lambda: self._client.get_object(self.bucket, self._key(key), offset=offset),
            )
        except NotFound as exc:
            raise IntegrityError(
                f"object {echo(key)} has a checksum record but its data is missing: re-upload it",
                reason="DATA_MISSING",
            ) from exc
        chunks = self._stream(key, resp, chunk_size)
        return verified_chunks(key, chunks, sidecar) if check_verify else chunks

    def _stream(self, key: str, resp: Any, chunk_size: int) -> Iterator[bytes]:
        try:
            yield from resp.stream(chunk_size)
        except _TRANSIENT as exc:
            raise Unavailable(
                f"the connection to {self.endpoint} broke while reading {echo(key)}: retry the read"
            ) from exc
        finally:
            resp.close()
            resp.release_conn()

    def get_bytes(self, key: str, *, verify: bool = True) -> bytes:
        """Read a small object whole, verified."""
        return b"".join(self.iter_chunks(key, verify=verify))

    def get_file(self, key: str, dest: Path, *, verify: bool = True) -> ObjectInfo:
        """Download to ``dest`` through a temp file in the same folder, verified."""
        info = self.stat(key)
        return write_chunks_atomically(self.iter_chunks(key, verify=verify), dest, info)

    def stat(self, key: str) -> ObjectInfo:
        """Recorded size and sha256 (from the sidecar); ``NotFound`` when absent."""
        sidecar, modified = self._sidecar(key)
        return ObjectInfo(key=key, size=sidecar.size, sha256=sidecar.sha256, modified=modified)

    def exists(self, key: str) -> bool:
        """Whether a committed object exists at ``key``."""
        try:
            self.stat(key)
        except NotFound:
            return False
        return True

    def _names(self, prefix: str, *, recursive: bool = True) -> Iterator[Any]:
        try:
            yield from self._client.list_objects(self.bucket, prefix=prefix, recursive=recursive)
        except S3Error as exc:
            raise self._mapped(exc, f"listing {echo(prefix)}") from exc
        except _TRANSIENT as exc:
            raise Unavailable(
                f"object store at {self.endpoint} failed while listing {echo(prefix)}: "
                "check that the S3 server is up, then retry"
            ) from exc

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Committed objects under the string ``prefix``, in key order (one small GET each)."""
        base = self._prefix + META_ROOT
        for obj in self._names(base + check_prefix(prefix)):
            key = obj.object_name[len(base) :]
            try:
                sidecar, _ = self._sidecar(key)
            except NotFound:  # deleted while we listed
                continue
            yield ObjectInfo(key=key, size=sidecar.size, sha256=sidecar.sha256, modified=obj.last_modified)

    def list_prefixes(self, prefix: str = "") -> Iterator[str]:
        """Immediate child prefixes (``<prefix><name>/``) holding any stored data, in key order."""
        if prefix and not prefix.endswith("/"):
            raise InvalidInput.field_error("prefix", f"prefix {echo(prefix)} must end with '/'")
        for obj in self._names(self._prefix + check_prefix(prefix), recursive=False):
            name = obj.object_name[len(self._prefix) :]
            if obj.is_dir and (prefix or name not in (META_ROOT, TMP_ROOT)):
                yield name

    # ---- deletes -----------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        """Delete one object (sidecar first, so it vanishes from listings at once)."""
        for name in (self._meta(key), self._key(key)):
            self._retrying(f"deleting {echo(key)}", partial(self._client.remove_object, self.bucket, name))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under ``prefix`` (and leftover uncommitted data); returns the count."""
        if not check_prefix(prefix):
            raise InvalidInput.field_error("prefix", "refusing to delete the whole store: give a prefix")
        metas = [o.object_name for o in self._names(self._prefix + META_ROOT + prefix)]
        datas = [o.object_name for o in self._names(self._prefix + prefix)]
        for batch in (metas, datas):
            self._remove_many(batch, prefix)
        return len(metas)

    def _remove_many(self, names: builtins.list[str], prefix: str) -> None:
        def remove() -> None:
            failures = builtins.list(
                self._client.remove_objects(self.bucket, (DeleteObject(n) for n in names))
            )
            if failures:
                raise Internal(
                    f"could not delete {len(failures)} object(s) under {echo(prefix)}: "
                    f"first: {failures[0].name} ({failures[0].code})"
                )

        if names:
            self._retrying(f"deleting objects under {echo(prefix)}", remove)

    def presigned_get_url(self, key: str, expires: timedelta) -> str:
        """A URL that reads the object without credentials until ``expires`` has passed.

        Raises:
            InvalidInput: ``expires`` is not between 1 second and 7 days.
            NotFound: the object does not exist.
        """
        if not timedelta(seconds=1) <= expires <= timedelta(days=7):
            raise InvalidInput.field_error("expires", f"{expires} is outside 1 second .. 7 days")
        self.stat(key)
        return self._retrying(
            f"signing a URL for {echo(key)}",
            lambda: self._client.presigned_get_object(self.bucket, self._key(key), expires=expires),
        )

    # ---- maintenance -------------------------------------------------------------------------

    def abort_incomplete_uploads(self, older_than: timedelta) -> int:
        """Abort multipart uploads under this store's prefix started more than ``older_than`` ago.

        Interrupted uploads keep their parts on the server (invisible, but using disk) until
        aborted. Returns how many uploads were aborted.
        """
        cutoff = datetime.now(UTC) - older_than
        stale = [u for u in self._incomplete_uploads() if u.initiated_time and u.initiated_time < cutoff]
        for upload in stale:
            self._retrying(
                f"aborting the incomplete upload of {echo(upload.object_name)}",
                # The SDK has no public call for this.
                partial(
                    self._client._abort_multipart_upload, self.bucket, upload.object_name, upload.upload_id
                ),
            )
        return len(stale)

    def _incomplete_uploads(self) -> builtins.list[Any]:
        uploads: builtins.list[Any] = []
        marker: str | None = None
        while True:
            page = self._retrying(
                "listing incomplete multipart uploads",
                # The SDK has no public call for this.
                partial(
                    self._client._list_multipart_uploads, self.bucket, prefix=self._prefix, key_marker=marker
                ),
            )
            uploads.extend(page.uploads)
            if not page.is_truncated or not page.next_key_marker:
                return uploads
            marker = page.next_key_marker

    def ensure_abort_incomplete_lifecycle(self, days: int = 1) -> bool:
        """Install a bucket lifecycle rule aborting multipart uploads after ``days`` days.

        Other lifecycle rules of the bucket are kept. Servers without lifecycle support answer
        NotImplemented: that is logged as a warning and ``False`` is returned (then call
        ``abort_incomplete_uploads`` periodically instead).
        """
        rule = Rule(
            ENABLED,
            rule_filter=Filter(prefix=self._prefix),
            rule_id=_LIFECYCLE_RULE_ID,
            abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(days_after_initiation=days),
        )
        try:
            current = self._client.get_bucket_lifecycle(self.bucket)
            kept = [r for r in (current.rules if current else []) if r.rule_id != _LIFECYCLE_RULE_ID]
            self._client.set_bucket_lifecycle(self.bucket, LifecycleConfig([*kept, rule]))
        except S3Error as exc:
            if exc.code in ("NotImplemented", "NotImplementedError", "MethodNotAllowed"):
                log.warning(
                    "object store at %s does not support bucket lifecycle rules (%s): "
                    "incomplete multipart uploads must be aborted with "
                    "abort_incomplete_uploads()",
                    self.endpoint,
                    exc.code,
                )
                return False
            raise self._mapped(exc, "setting the bucket lifecycle") from exc
        return True


def _tell(stream: BinaryIO) -> int | None:
    """The stream's position when it can be rewound, else None."""
    try:
        return stream.tell() if stream.seekable() else None
    except (AttributeError, OSError):
        return None


def _http_client() -> urllib3.PoolManager:
    # Few low-level retries: the store's own backoff loop (which can re-send a whole stream) is
    # the one that decides when to give up, so the total wait stays predictable.
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=300),
        maxsize=10,
        retries=urllib3.Retry(total=1, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )
