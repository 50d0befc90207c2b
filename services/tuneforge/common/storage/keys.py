"""Object-key validation shared by every store and every service that builds keys.

A key is a ``/``-separated relative path such as ``tenants/acme/datasets/ds-1/data.parquet``.
Keys end up as S3 object names *and* as file paths (``file://`` store), so anything that could
escape the store root or be interpreted differently by two layers is refused outright rather
than "cleaned": ``..``/``.`` segments, absolute paths, backslashes, percent-encoded sequences
(``%2e%2e``, ``%2f``, double-encoded ``%252e``), control characters and NUL, empty segments.
"""

from __future__ import annotations

import re
import unicodedata

from tuneforge.common.errors import InvalidInput
from tuneforge.common.public_text import echo

MAX_KEY_BYTES = 1024
"""S3's limit on object names (UTF-8 bytes); the file store adopts it too."""

RESERVED_ROOTS = frozenset({".meta", ".tmp"})
"""First segments used by the stores for per-object metadata and temp files."""

_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_TENANT = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


def _shown(key: str) -> str:
    """The key as shown in messages: repr (so control characters are visible), truncated."""
    text = repr(key)
    return text if len(text) <= 120 else text[:117] + "..."


def _key_problem(key: str) -> str | None:
    """Return why ``key`` is unsafe, or None when it is fine."""
    if not key:
        return "is empty: give a relative path such as 'tenants/acme/file.bin'"
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        return f"is longer than {MAX_KEY_BYTES} bytes (UTF-8): use shorter path segments"
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        return "contains a control character or NUL: use printable characters only"
    if "\\" in key:
        return "contains a backslash: separate segments with '/'"
    if key.startswith("/") or _WINDOWS_DRIVE.match(key):
        return "is an absolute path: give a path relative to the store root"
    if _PERCENT_ESCAPE.search(key):
        return "contains a percent-encoded sequence (e.g. %2e, %2f): use the plain characters"
    return _segment_problem(key)


def _segment_problem(key: str) -> str | None:
    segments = key.split("/")
    if any(seg in (".", "..") for seg in segments):
        return "contains a '.' or '..' segment: give a normalized path without traversal"
    if any(seg == "" for seg in segments):
        return "contains an empty segment ('//' or a trailing '/'): remove the extra '/'"
    if segments[0] in RESERVED_ROOTS:
        return f"starts with the reserved folder {echo(segments[0])}: choose another top-level name"
    return None


def check_key(key: str, *, field: str = "key") -> str:
    """Validate an object key and return it unchanged.

    Args:
        key: the candidate key, a ``/``-separated relative path.
        field: the name of the setting or request field the key came from (used in the error).

    Returns:
        ``key`` itself, so calls can be chained: ``store.put_bytes(check_key(k), data)``.

    Raises:
        InvalidInput: the key is empty, too long, absolute, contains traversal, backslashes,
            percent-encoded sequences, control characters, empty or reserved segments.
    """
    if not isinstance(key, str):
        raise InvalidInput.field_error(field, f"object key must be a string, got {type(key).__name__}")
    problem = _key_problem(key)
    if problem:
        raise InvalidInput.field_error(field, f"object key {_shown(key)} {problem}")
    return key


def check_prefix(prefix: str, *, field: str = "prefix") -> str:
    """Validate a listing prefix: ``""`` (everything) or a key, optionally ending in ``/``.

    Args:
        prefix: the candidate prefix.
        field: the name of the field the prefix came from (used in the error).

    Returns:
        ``prefix`` unchanged.

    Raises:
        InvalidInput: the prefix (without its trailing ``/``) is not a valid key.
    """
    if prefix == "":
        return prefix
    check_key(prefix[:-1] if prefix.endswith("/") else prefix, field=field)
    return prefix


def check_tenant(tenant: str, *, field: str = "tenant") -> str:
    """Validate a tenant name: ``[a-z0-9][a-z0-9-]{0,62}``.

    Raises:
        InvalidInput: naming ``field`` and the allowed pattern.
    """
    if not isinstance(tenant, str) or not _TENANT.fullmatch(tenant):
        raise InvalidInput.field_error(
            field,
            f"tenant {_shown(str(tenant))} is not valid: use 1-63 lowercase letters, digits or '-', "
            "starting with a letter or digit",
        )
    return tenant


def tenant_prefix(tenant: str) -> str:
    """The key prefix owning every object of ``tenant``: ``tenants/<tenant>/``.

    Raises:
        InvalidInput: the tenant name is not valid (see ``check_tenant``).
    """
    return f"tenants/{check_tenant(tenant)}/"
