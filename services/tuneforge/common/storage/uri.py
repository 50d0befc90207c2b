"""``open_object_store(uri)``: pick the backend by URI scheme (MLflow-style artifact URIs).

- ``file:///abs/dir`` -> ``FileObjectStore``
- ``s3://bucket[/prefix]?endpoint=host:port[&secure=false][&region=r]`` -> ``S3ObjectStore``

Credentials never travel in the URI (URIs end up in logs): pass them as arguments, from settings.
The S3 backend (and so the ``minio`` SDK) is imported only when an ``s3://`` URI is opened, so
domain code that imports ``tuneforge.common.storage`` for ``check_key`` does not load it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

from tuneforge.common.errors import InvalidInput
from tuneforge.common.public_text import echo
from tuneforge.common.storage.base import ObjectStore
from tuneforge.common.storage.file import FileObjectStore
from tuneforge.common.storage.keys import check_prefix

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_S3_PARAMS = frozenset({"endpoint", "secure", "region"})
_S3_EXAMPLE = "s3://bucket/prefix?endpoint=host:9000&secure=false"


def open_object_store(
    uri: str,
    *,
    access_key: str | _Secret | None = None,
    secret_key: str | _Secret | None = None,
    field: str = "object_store_uri",
    **s3_options: Any,
) -> ObjectStore:
    """Open the object store that ``uri`` names; fails fast if it is unusable.

    Args:
        uri: ``file:///abs/dir`` or ``s3://bucket/prefix?endpoint=host:port&secure=false``.
        access_key: S3 access key id (ignored for ``file://``); a str or pydantic ``SecretStr``
            (as in ``ServiceSettings.s3_access_key``); empty means none.
        secret_key: S3 secret key (ignored for ``file://``); a str or ``SecretStr``.
        field: the setting the URI came from, named in errors.
        **s3_options: passed to ``S3ObjectStore`` (``part_size``, ``retries``, ``create_bucket``...).

    Raises:
        InvalidInput: the URI is malformed or has an unknown scheme, naming ``field`` and the fix.
        Unavailable / PermissionDenied: the S3 server cannot be reached or refuses the credentials.
    """
    parts = urlsplit(uri or "")
    if parts.scheme == "file":
        return _open_file(parts, uri, field)
    if parts.scheme == "s3":
        return _open_s3(parts, uri, field, _reveal(access_key), _reveal(secret_key), s3_options)
    raise InvalidInput.field_error(
        field, f"{echo(uri)} has no supported scheme: use file:///absolute/dir or {_S3_EXAMPLE}"
    )


class _Secret(Protocol):
    def get_secret_value(self) -> str: ...


def _reveal(value: str | _Secret | None) -> str | None:
    """The plain value of a str or ``SecretStr``; empty becomes None."""
    plain = value.get_secret_value() if value is not None and not isinstance(value, str) else value
    return plain or None


def _open_file(parts: SplitResult, uri: str, field: str) -> FileObjectStore:
    if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
        raise InvalidInput.field_error(
            field, f"{echo(uri)} is not a local file URI: use file:///absolute/dir (three slashes)"
        )
    path = unquote(parts.path)
    if not path.startswith("/") or path == "/":
        raise InvalidInput.field_error(field, f"{echo(uri)} needs an absolute folder: use file:///absolute/dir")
    return FileObjectStore(Path(path), setting=field)


def _open_s3(
    parts: SplitResult,
    uri: str,
    field: str,
    access_key: str | None,
    secret_key: str | None,
    options: dict[str, Any],
) -> ObjectStore:
    if "@" in parts.netloc:
        # Do not echo the URI: it holds a credential.
        raise InvalidInput.field_error(
            field, "the s3:// URI contains credentials: remove them and set the access/secret key settings"
        )
    params = _s3_params(parts, uri, field)
    prefix = parts.path.strip("/")
    if prefix:
        check_prefix(prefix + "/", field=field)
    from tuneforge.common.storage.s3 import S3ObjectStore  # lazy: keeps minio out of domain imports

    return S3ObjectStore(
        bucket=parts.netloc,
        prefix=prefix,
        endpoint=params["endpoint"],
        secure=params.get("secure", "true") == "true",
        region=params.get("region"),
        access_key=access_key,
        secret_key=secret_key,
        **options,
    )


def _s3_params(parts: SplitResult, uri: str, field: str) -> dict[str, str]:
    if not _BUCKET.fullmatch(parts.netloc):
        raise InvalidInput.field_error(
            field, f"{echo(uri)}: bucket {echo(parts.netloc)} is not a valid S3 bucket name (3-63 of a-z 0-9 . -)"
        )
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(params) - _S3_PARAMS)
    if unknown:
        raise InvalidInput.field_error(
            field, f"{echo(uri)}: unknown parameter(s) {unknown}; allowed: {sorted(_S3_PARAMS)}"
        )
    if not params.get("endpoint"):
        raise InvalidInput.field_error(field, f"{echo(uri)} has no endpoint: use {_S3_EXAMPLE}")
    if params.get("secure", "true") not in ("true", "false"):
        raise InvalidInput.field_error(field, f"{echo(uri)}: secure must be true or false")
    return params
