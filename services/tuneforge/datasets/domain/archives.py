"""Decompression and archive extraction with guards against bombs and path tricks.

Uploads may be gzip or zstd compressed, or zip/tar archives of data files. Every layer is
bounded: total decompressed bytes, number of archive entries, and the expansion ratio
(decompressed / compressed). Archive members with absolute paths, ``..`` segments, links or
device files refuse the whole archive: such archives are malformed or hostile.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import zstandard

from tuneforge.common.errors import InvalidInput, ResourceExhausted
from tuneforge.common.public_text import echo

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps applied while expanding compressed data and archives."""

    max_total_bytes: int = 20 << 30
    max_entries: int = 1000
    max_expansion_ratio: float = 200.0


class _CountingReader(io.RawIOBase):
    """Counts bytes read from a decompressing stream and stops past the caps."""

    def __init__(self, inner: BinaryIO, compressed_size: int, limits: ArchiveLimits, what: str,
                 already: int = 0) -> None:
        self._inner = inner
        self._limit = min(limits.max_total_bytes, int(max(compressed_size, 1) * limits.max_expansion_ratio))
        self._limits = limits
        self._what = what
        # Bytes already expanded from earlier members: the caps hold for the whole archive.
        self.count = already

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self._inner.read(len(buffer))
        n = len(data)
        self.count += n
        if self.count > self._limit:
            raise ResourceExhausted(
                f"{self._what} expands past {self._limit} bytes (caps: {self._limits.max_total_bytes} "
                f"bytes in total, expansion ratio {self._limits.max_expansion_ratio:g}): upload it "
                "uncompressed or split it into smaller files",
                reason="EXPANSION_LIMIT",
            )
        buffer[:n] = data
        return n


def sniff(path: Path) -> bytes:
    """The first 512 bytes of a file (magic numbers, tar header)."""
    with path.open("rb") as f:
        return f.read(512)


def is_tar(head: bytes) -> bool:
    """Whether the bytes start a POSIX/GNU tar archive."""
    return len(head) >= 262 and head[257:262] == b"ustar"


def open_decompressed(path: Path, limits: ArchiveLimits, what: str) -> BinaryIO:
    """Open a file, transparently decompressing gzip or zstd, with the expansion caps."""
    head = sniff(path)
    size = path.stat().st_size
    if head.startswith(GZIP_MAGIC):
        # The returned reader owns (and closes) the file: a context manager cannot outlive this call.
        inner: BinaryIO = gzip.open(path, "rb")  # type: ignore[assignment]  # noqa: SIM115
    elif head.startswith(ZSTD_MAGIC):
        # closefd (the default) closes the file when the reader is closed.
        inner = zstandard.ZstdDecompressor().stream_reader(path.open("rb"), read_across_frames=True)  # type: ignore[assignment]
    else:
        return path.open("rb")
    return io.BufferedReader(_CountingReader(inner, size, limits, what), buffer_size=1 << 20)  # type: ignore[return-value]


def _check_member_name(name: str) -> None:
    pure = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or pure.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise InvalidInput.field_error("file", f"archive member {echo(name)} has an absolute path: archive relative paths only")
    if ".." in pure.parts:
        raise InvalidInput.field_error("file", f"archive member {echo(name)} contains '..': archive paths without traversal")


def _data_member(name: str) -> bool:
    base = PurePosixPath(name).name
    return not base.startswith(".") and not name.startswith("__MACOSX/")


def extract_archive(path: Path, dest: Path, limits: ArchiveLimits) -> list[Path]:
    """Extract a zip or tar (optionally gzip/zstd compressed) archive into ``dest``, guarded.

    Returns:
        The extracted data files in archive order (hidden files and ``__MACOSX`` skipped), or
        an empty list when ``path`` is not an archive.

    Raises:
        InvalidInput: a member is absolute, has ``..``, is a link or a device.
        ResourceExhausted: too many entries, too many bytes, too high an expansion ratio.
    """
    head = sniff(path)
    if head.startswith(ZIP_MAGIC):
        return _extract_zip(path, dest, limits)
    if is_tar(head):
        with path.open("rb") as stream:
            return _extract_tar(stream, path.stat().st_size, dest, limits)
    if head.startswith((GZIP_MAGIC, ZSTD_MAGIC)):
        with open_decompressed(path, limits, "the archive") as stream:
            peek = stream.peek(512)[:512] if hasattr(stream, "peek") else b""
            if is_tar(peek):
                return _extract_tar(stream, path.stat().st_size, dest, limits)
    return []


def _too_many(n: int, limits: ArchiveLimits) -> ResourceExhausted:
    return ResourceExhausted(
        f"archive has more than {limits.max_entries} entries: pack fewer files per upload",
        reason="ARCHIVE_ENTRIES",
    )


def _extract_zip(path: Path, dest: Path, limits: ArchiveLimits) -> list[Path]:
    out: list[Path] = []
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise InvalidInput.field_error("file", f"corrupt zip archive ({exc}): re-create the archive") from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_entries:
            raise _too_many(len(infos), limits)
        compressed, total = path.stat().st_size, 0
        for info in infos:
            _check_member_name(info.filename)
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:
                raise InvalidInput.field_error("file", f"archive member {echo(info.filename)} is a symbolic link: archive regular files only")
            if info.is_dir() or not _data_member(info.filename):
                continue
            target = dest / f"{len(out):04d}_{PurePosixPath(info.filename).name}"
            with archive.open(info) as src, target.open("wb") as dst:
                reader = _CountingReader(src, compressed, limits, "the archive", already=total)  # type: ignore[arg-type]
                shutil.copyfileobj(io.BufferedReader(reader), dst, 1 << 20)
                total = reader.count
            out.append(target)
    return out


def _extract_tar(stream: BinaryIO, compressed: int, dest: Path, limits: ArchiveLimits) -> list[Path]:
    out: list[Path] = []
    total = 0
    cap = min(limits.max_total_bytes, int(compressed * limits.max_expansion_ratio))
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            for count, member in enumerate(archive, start=1):
                if count > limits.max_entries:
                    raise _too_many(count, limits)
                _check_member_name(member.name)
                if member.issym() or member.islnk():
                    raise InvalidInput.field_error("file", f"archive member {echo(member.name)} is a link: archive regular files only")
                if member.isdev() or member.isfifo():
                    raise InvalidInput.field_error("file", f"archive member {echo(member.name)} is a device or FIFO: archive regular files only")
                if not member.isfile() or not _data_member(member.name):
                    continue
                total += member.size
                if total > cap:
                    raise ResourceExhausted(
                        f"archive expands past {cap} bytes (caps: {limits.max_total_bytes} bytes, ratio "
                        f"{limits.max_expansion_ratio:g}): split it into smaller uploads",
                        reason="EXPANSION_LIMIT",
                    )
                target = dest / f"{len(out):04d}_{PurePosixPath(member.name).name}"
                src = archive.extractfile(member)
                assert src is not None
                with target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                out.append(target)
    except tarfile.TarError as exc:
        raise InvalidInput.field_error("file", f"corrupt tar archive ({exc}): re-create the archive") from None
    return out


def iter_archive_names(paths: list[Path]) -> Iterator[tuple[str, Path]]:
    """Yield (original member name, extracted path) pairs (the prefix added on extraction removed)."""
    for p in paths:
        yield p.name.split("_", 1)[1], p
