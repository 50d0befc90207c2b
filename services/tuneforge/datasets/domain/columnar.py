"""Column-at-a-time versions of the row operations, on Arrow tables of canonical records.

Each function here gives, for a whole table, exactly what the row path (``records``, ``steps``)
gives row by row; tests compare the two on the same inputs. Python's notion of whitespace
(``str.strip``/``str.split``) is reproduced with an explicit character set rather than Arrow's
own, which differs (Python counts U+001C..U+001F as whitespace).

Known limit: NFC comes from Arrow's utf8proc rather than Python's ``unicodedata``; the two agree
except on code points assigned in a Unicode version only one of them knows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tuneforge.datasets.domain.records import MESSAGE_TYPE

PY_WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
"""Every character for which ``str.isspace()`` is true (checked by a unit test)."""

# Same character classes as steps._SPACES / steps._TRAILING, in RE2 syntax.
_SPACES_RE2 = r"[ \t\x{a0}\x{2000}-\x{200b}\x{3000}]+"
_TRAILING_RE2 = r"[ \t]+\n"
_TEXT_COLUMNS = ("chosen", "rejected", "text", "completion", "answer")
_SEP = "\x1f"


_ASCII_WHITESPACE = "".join(ch for ch in PY_WHITESPACE if ch.isascii())
_SPACE, _TAB, _LF = 0x20, 0x09, 0x0A


def py_strip(values: pa.Array) -> pa.Array:
    """``str.strip()`` of every string (nulls stay null)."""
    # The ASCII trim is several times faster; only non-ASCII strings can end in other whitespace
    # (UTF-8 continuation bytes never equal an ASCII byte, so the ASCII trim is safe on them).
    out = pc.ascii_trim(values, characters=_ASCII_WHITESPACE)
    return _apply_where(out, pc.invert(pc.string_is_ascii(out)),
                        lambda v: pc.utf8_trim(v, characters=PY_WHITESPACE))


def is_blank(values: pa.Array) -> pa.Array:
    """True where ``not value.strip()`` (null where the value is null)."""
    return pc.equal(pc.binary_length(py_strip(values)), 0)


def _apply_where(values: pa.Array, mask: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``fn`` applied only to the rows where ``mask`` is true (the expensive kernels skip the rest)."""
    mask = pc.fill_null(mask, False)
    hits = pc.sum(mask).as_py() or 0
    if hits == 0:
        return values
    if hits == len(values):
        return fn(values)
    return pc.replace_with_mask(values, mask, fn(pc.filter(values, mask)))


def normalize_strings(values: pa.Array, collapse: bool) -> pa.Array:
    """``NormalizeStep._normalize`` for a string array: NFC, whitespace collapse, strip."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    non_ascii = pc.invert(pc.string_is_ascii(values))
    out = _apply_where(values, non_ascii, lambda v: pc.utf8_normalize(v, "NFC"))
    if collapse:
        # Only rows that can change: non-ASCII, or holding a double space, a tab or " \n".
        candidates = pc.or_(non_ascii, pa.array(_has_space_runs(out)))
        out = _apply_where(out, candidates, lambda v: pc.replace_substring_regex(
            pc.replace_substring_regex(v, _SPACES_RE2, " "), _TRAILING_RE2, "\n"))
    return py_strip(out)


def _has_space_runs(values: pa.Array) -> np.ndarray:
    """Per string: holds a tab, two spaces or a space before a newline.

    One vectorized pass over the data buffer (``bytes.find`` is slower here: spaces are so
    frequent that its skip loop rarely skips). A pair straddling two strings marks the first,
    which only costs a regex that changes nothing.
    """
    out = np.zeros(len(values), dtype=bool)
    if len(values) == 0 or values.buffers()[2] is None:
        return out
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int32)[values.offset : values.offset + len(values) + 1]
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    if len(data) == 0:
        return out
    space = data == _SPACE
    after = data[1:]
    pairs = (space[:-1] & (space[1:] | (after == _LF))) | (data[:-1] == _TAB)
    hits = np.flatnonzero(pairs)
    if data[-1] == _TAB:
        hits = np.append(hits, len(data) - 1)
    if len(hits):
        out[np.searchsorted(offsets, hits + int(offsets[0]), side="right") - 1] = True
    return out


def _message_lists(column: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> tuple[pa.Array, pa.Array]:
    """Apply ``fn`` to the contents of a list<message> column; returns (new column, changed per row)."""
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat = lists.flatten()
    contents = flat.field("content")
    new_contents = fn(contents)
    changed_flat = pc.fill_null(pc.not_equal(contents, new_contents), False)
    messages = pa.StructArray.from_arrays([flat.field("role"), new_contents], fields=list(MESSAGE_TYPE))
    offsets = _list_offsets(lists)
    rebuilt = pa.ListArray.from_arrays(offsets, messages, mask=lists.is_null())
    changed_rows = _any_per_list(changed_flat, offsets.to_numpy())
    return rebuilt.cast(column.type), changed_rows


def _list_offsets(lists: pa.ListArray) -> pa.Array:
    """Offsets rebased to 0 (a sliced list array has offsets into a larger child)."""
    offsets = lists.offsets.to_numpy(zero_copy_only=False).astype(np.int32)
    return pa.array(offsets - offsets[0], type=pa.int32())


def _any_per_list(flags: pa.Array, offsets: np.ndarray) -> np.ndarray:
    values = np.asarray(flags.to_numpy(zero_copy_only=False), dtype=np.int64)
    sums = np.concatenate(([0], np.cumsum(values)))
    return sums[offsets[1:]] > sums[offsets[:-1]]


def normalize_table(table: pa.Table, collapse: bool) -> tuple[pa.Table, int]:
    """Normalize every text field of canonical records; returns the table and rows modified."""
    changed = np.zeros(table.num_rows, dtype=bool)
    columns = dict(zip(table.column_names, table.columns, strict=True))
    for name in ("messages", "prompt"):
        new, rows = _message_lists(columns[name], lambda v: normalize_strings(v, collapse))
        columns[name], changed = new, changed | rows
    for name in _TEXT_COLUMNS:
        old = columns[name].combine_chunks()
        new = normalize_strings(old, collapse)
        changed |= np.asarray(pc.fill_null(pc.not_equal(old, new), False).to_numpy(zero_copy_only=False))
        columns[name] = new
    return pa.Table.from_arrays(list(columns.values()), schema=table.schema), int(changed.sum())


def content_keys(table: pa.Table) -> pa.Array:
    """``records.content_key`` of every row, as a string array."""
    return pc.utf8_slice_codeunits(separated_content_keys(table), 1)


def separated_content_keys(table: pa.Table) -> pa.Array:
    """``SEP + records.content_key`` of every row, or "" where the key is empty.

    What exact dedup hashes (``steps.dedup_digest``): the same information as ``content_keys``
    without the slice that drops the leading separator. Each part is built with its leading
    separator in one kernel (SEP role SEP content ..., SEP name SEP value), "" where it is null
    or an empty list; parts that are null in every row are left out of the final join.
    """
    n = table.num_rows
    pieces = [_separated_messages(table.column(name)) for name in ("messages", "prompt")]
    for name in _TEXT_COLUMNS:
        values = table.column(name).combine_chunks()
        if values.null_count < n:
            pieces.append(pc.fill_null(pc.binary_join_element_wise("", pa.scalar(name), values, _SEP), ""))
    labels = table.column("label").combine_chunks()
    if labels.null_count < n:  # records.content_key: "label", "True" / "False"
        text = pc.if_else(labels, pa.scalar("True"), pa.scalar("False"))
        pieces.append(pc.fill_null(pc.binary_join_element_wise("", pa.scalar("label"), text, _SEP), ""))
    pieces = [piece for piece in pieces if piece is not None]
    if not pieces:
        return pa.array([""] * n, pa.string())
    return pieces[0] if len(pieces) == 1 else pc.binary_join_element_wise(*pieces, "")


def _separated_messages(column: pa.Array) -> pa.Array | None:
    """Per row: SEP role SEP content SEP role SEP content...; "" for a null or empty list (None
    when that is every row)."""
    lists = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    flat = lists.flatten()
    if len(flat) == 0:
        return None
    pairs = pc.binary_join_element_wise("", flat.field("role"), flat.field("content"), _SEP)
    joined = pc.binary_join(pa.ListArray.from_arrays(_list_offsets(lists), pairs, mask=lists.is_null()), "")
    return pc.fill_null(joined, "")
