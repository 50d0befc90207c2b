"""Offset pagination for every list call (AIP-158 shape: page_size, opaque page_token).

One implementation for all services, so that a negative or oversized page size and a forged
token get the same INVALID_ARGUMENT everywhere (never a SQL error, never an unbounded page).
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TypeVar

from tuneforge.common.errors import InvalidInput

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# No list holds more items than this; a token past it was not issued here (a forged huge offset
# would otherwise overflow the database's OFFSET and come back as INTERNAL).
MAX_OFFSET = 2**31 - 1


def page_bounds(page_size: int, page_token: str, *, max_size: int = MAX_PAGE_SIZE) -> tuple[int, int]:
    """``(offset, size)`` of the requested page, for SQL ``OFFSET``/``LIMIT``.

    Raises:
        InvalidInput: negative or too large page size, or a token this service did not issue.
    """
    if page_size < 0 or page_size > max_size:
        raise InvalidInput.field_error("page.page_size", f"{page_size} is outside 0..{max_size}: 0 means "
                                       f"the default ({DEFAULT_PAGE_SIZE})")
    return _decode(page_token), page_size or min(DEFAULT_PAGE_SIZE, max_size)


def next_page_token(offset: int, size: int, total: int) -> str:
    """The token of the page after ``[offset, offset+size)`` of ``total`` items; ``""`` at the end."""
    return _encode(offset + size) if offset + size < total else ""


def paginate(items: Sequence[T], page_size: int, page_token: str) -> tuple[list[T], str]:
    """One page of ``items`` and the token of the next page (``""`` on the last page).

    Raises:
        InvalidInput: negative or too large page size, or a token this service did not issue.
    """
    start, size = page_bounds(page_size, page_token)
    return list(items[start:start + size]), next_page_token(start, size, len(items))


def _encode(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def _decode(token: str) -> int:
    if not token:
        return 0
    if len(token) > 64:  # tokens issued here are about 16 characters
        offset, kind = -1, ""
    else:
        kind, offset = _parse(token)
    if kind != "o" or not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput.field_error("page.page_token", "is not a token from a previous response: "
                                       "pass next_page_token unchanged or leave it empty")
    return offset


def _parse(token: str) -> tuple[str, int]:
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        offset = int(value)
    except (ValueError, UnicodeDecodeError):
        return "", -1
    return kind, offset
