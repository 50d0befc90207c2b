"""Offset pagination for list calls (AIP-158 shape: page_size, opaque page_token)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TypeVar

from tuneforge.common.errors import InvalidInput

T = TypeVar("T")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


def paginate(items: Sequence[T], page_size: int, page_token: str) -> tuple[list[T], str]:
    """One page of ``items`` and the token of the next page (``""`` on the last page).

    Raises:
        InvalidInput: negative or too large page size, or a token this service did not issue.
    """
    if page_size < 0 or page_size > MAX_PAGE_SIZE:
        raise InvalidInput.field_error("page.page_size", f"{page_size} is outside 0..{MAX_PAGE_SIZE}")
    size = page_size or DEFAULT_PAGE_SIZE
    start = _decode(page_token)
    end = start + size
    return list(items[start:end]), (_encode(end) if end < len(items) else "")


def _encode(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode()


def _decode(token: str) -> int:
    if not token:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        offset = int(value)
    except (ValueError, UnicodeDecodeError):
        offset, kind = -1, ""
    if kind != "o" or offset < 0:
        raise InvalidInput.field_error("page.page_token", "is not a token from a previous response: "
                                       "pass next_page_token unchanged or leave it empty")
    return offset
