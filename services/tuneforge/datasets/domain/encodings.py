"""Text files as common tools write them, read as UTF-8.

``utf8_stream`` wraps a (decompressed) byte stream so the readers always see UTF-8 without a BOM:

* a UTF-8 BOM (Excel's "CSV UTF-8", Notepad) is dropped;
* UTF-16 LE/BE and UTF-32 with a BOM (Notepad's "Unicode", PowerShell's ``Out-File``), and UTF-16
  without one (recognised by its NUL bytes), are transcoded on the fly, chunk by chunk;
* a CSV whose first 64 KiB are not UTF-8 and hold no UTF-8 multi-byte character at all is read
  as Windows-1252 (what Excel's plain "CSV (Comma delimited)" writes on Western Windows). JSON is
  UTF-8 by definition: there an invalid byte stays a rejected row.

``csv_delimiter`` picks the separator of a CSV header: ``,`` or, as Excel writes under locales
with a decimal comma, ``;``, or a tab or ``|``. CRLF line ends need nothing: JSON treats ``\\r``
as whitespace and the csv module reads both.
"""

from __future__ import annotations

import codecs
import io
from typing import BinaryIO

_SNIFF_BYTES = 64 << 10
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: FF FE 00 00 starts with FF FE
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
DELIMITERS = (",", ";", "\t", "|")


class _Transcoder(io.RawIOBase):
    """Bytes in ``encoding`` read from ``source``, given back as UTF-8."""

    def __init__(self, source: BinaryIO, encoding: str) -> None:
        self._source = source
        self._decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        self._pending = b""
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._pending and not self._eof:
            chunk = self._source.read(1 << 16)
            self._eof = not chunk
            self._pending = self._decoder.decode(chunk, final=self._eof).encode("utf-8")
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def detect_encoding(head: bytes, *, legacy: bool = False) -> tuple[str, int]:
    """``(encoding, bom_length)`` of a file from its first bytes (``utf-8`` when in doubt);
    ``legacy``: a non-UTF-8 head may be Windows-1252."""
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return encoding, len(bom)
    sample = head[:4096]
    if len(sample) >= 4:
        even_nuls, odd_nuls = sample[0::2].count(0), sample[1::2].count(0)
        half = len(sample) // 2
        if odd_nuls > 0.4 * half and even_nuls < 0.05 * half:
            return "utf-16-le", 0
        if even_nuls > 0.4 * half and odd_nuls < 0.05 * half:
            return "utf-16-be", 0
    if legacy and not _is_utf8(head) and not _has_utf8_multibyte(head):
        return "cp1252", 0
    return "utf-8", 0


def _is_utf8(head: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=False)  # a cut character at the end is fine
        return True
    except UnicodeDecodeError:
        return False


def _has_utf8_multibyte(head: bytes) -> bool:
    text = head.decode("utf-8", errors="replace")
    return any(ord(ch) > 127 and ch != "\ufffd" for ch in text)


def utf8_stream(stream: BinaryIO, *, legacy: bool = False) -> BinaryIO:
    """``stream`` as UTF-8 without a BOM (see the module docstring); buffered, so it can be peeked.
    ``legacy``: allow the Windows-1252 fallback (CSV only)."""
    buffered = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(_Raw(stream), 1 << 16)
    head = buffered.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]
    encoding, bom = detect_encoding(head, legacy=legacy)
    if encoding == "utf-8":
        buffered.read(bom)
        return buffered
    if bom:
        buffered.read(bom)
    return io.BufferedReader(_Transcoder(buffered, encoding), 1 << 16)  # type: ignore[arg-type]


class _Raw(io.RawIOBase):
    """Any object with ``read`` as a raw stream (so ``BufferedReader`` can wrap it)."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def csv_delimiter(header_line: str) -> str:
    """The separator of a CSV file from its header line (``,`` on a tie)."""
    counts = {d: header_line.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: (counts[d], d == ","))
    return best if counts[best] else ","
