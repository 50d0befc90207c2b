"""Where a spec's records come from: a local file or folder, or a dataset version in the object store.

A dataset version reference (``DataSource.dataset_version`` with ``store_uri``, ``manifest_key``,
``manifest_sha256``; the training service fills these in) is read by each worker straight from the
store: the manifest is checked against the sha256 the spec pins, then every Parquet shard it lists is
downloaded (streamed to disk) into a cache keyed by that hash and checked against the manifest's size
and sha256. Nothing crosses as a path on another machine's disk. Local files keep working for the
engine's own door (``python -m tuneforge.engine``), read by the datasets service's format code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from tuneforge.common.errors import FailedPrecondition, FieldViolation, IntegrityError, InvalidInput, NotFound
from tuneforge.common.storage import ObjectStore
from tuneforge.common.storage.artifacts import MANIFEST_NAME, Manifest
from tuneforge.datasets.domain.rejects import RowError
from tuneforge.engine.data.records import Record, read_records, records_from_dicts
from tuneforge.engine.spec import DataSource

log = logging.getLogger(__name__)

DATA_SHARDS = "data/"
CACHE_ENV = "TUNEFORGE_DATA_CACHE_DIR"


def read_source(source: DataSource, where: str) -> list[Record]:
    """The canonical records of ``source``; ``where`` (e.g. ``train``, ``mixture[1].source``) names it in errors."""
    if source.path is not None:
        return read_local(Path(source.path), where)
    field = f"data.{where}" + (".source" if where.startswith("mixture[") else "")
    if not (source.store_uri and source.manifest_key and source.manifest_sha256):
        raise FailedPrecondition(
            f"{field}.dataset_version {source.dataset_version!r} has no store reference: the training "
            f"service fills in store_uri, manifest_key and manifest_sha256; when running the engine directly, "
            f"set {field}.path to local files")
    return read_records(fetch_version(source, field), source=where, split=source.split)


# ------------------------------------------------------------------------------------ local files

MAX_REPORTED = 50
_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet", ".pq", ".gz", ".zst", ".zstd")


def read_local(path: Path, where: str) -> list[Record]:
    """Records from a local file or folder (files sorted by name), in any format an upload accepts.

    Files are read by the datasets service's own readers and format converters (JSONL, JSON, CSV,
    Parquet, gzip/zstd; chat ``messages``, ShareGPT, Alpaca, Dolly, preference, OpenAI DPO, text), so
    the engine's door and ``UploadDataset`` agree on what a file means; rows already in the canonical
    schema (a ``kind`` column, as in a version's shards) are taken as they are.

    Raises:
        NotFound: nothing readable at ``path``.
        InvalidInput: bad rows (up to 50 reported), each named ``<where>[<row>].<field>`` with the fix.
    """
    files = sorted(p for p in path.iterdir() if p.name.lower().endswith(_SUFFIXES)) if path.is_dir() else (
        [path] if path.is_file() else [])
    if not files:
        raise NotFound(f"no data files at {path}; check data.{where}.path (.jsonl, .json, .csv or .parquet)")
    rows: list[dict[str, Any]] = []
    problems: list[FieldViolation] = []
    for file in files:
        rows += _canonical_rows(file, where, problems)
    if problems:
        raise InvalidInput.of(problems[:MAX_REPORTED], what=f"data.{where} ({len(problems)} bad rows)")
    return records_from_dicts(rows, source=where)


def _canonical_rows(file: Path, where: str, problems: list[FieldViolation]) -> list[dict[str, Any]]:
    from tuneforge.datasets.domain.archives import ArchiveLimits
    from tuneforge.datasets.domain.formats import DatasetFormat, convert_row, detect_format
    from tuneforge.datasets.domain.readers import detect_file_type, iter_rows

    limits = ArchiveLimits()
    file_type = detect_file_type(file.name, file, limits)
    fmt: DatasetFormat | None = None
    out: list[dict[str, Any]] = []
    for number, row in iter_rows(file, file_type, max_row_bytes=64 << 20, limits=limits, name=file.name):
        try:
            if isinstance(row, RowError):
                raise row
            if "kind" in row:  # already canonical (a version's shard, or the engine's own JSONL)
                out.append(row)
                continue
            fmt = fmt or detect_format(row)
            out.append(convert_row(row, fmt, source=file.name, row_number=number))
        except RowError as exc:
            problems.append(FieldViolation(f"{where}[{number}]" + (f".{exc.field}" if exc.field else ""),
                                           f"{exc.reason} ({file.name}, row {number})"))
    return out


# ------------------------------------------------------------------------------------ the store


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "tuneforge-data")


def fetch_version(source: DataSource, field: str) -> Path:
    """Download the version's shards (verified) into the local cache; returns the folder of shards.

    ``field`` is the source's spec path, named in errors."""
    from tuneforge.engine.train._artifacts import open_store

    assert source.store_uri and source.manifest_key and source.manifest_sha256
    store = open_store(source.store_uri, {}, field=f"{field}.store_uri")
    raw = store.get_bytes(source.manifest_key)
    if hashlib.sha256(raw).hexdigest() != source.manifest_sha256:
        raise IntegrityError(
            f"the manifest of dataset version {source.dataset_version!r} ({source.manifest_key}) is not the one "
            "the job was created with (sha256 differs): versions are immutable, so the store was changed; "
            "create the job again", reason="CHECKSUM_MISMATCH")
    manifest = Manifest.from_json(source.manifest_key, raw)
    prefix = source.manifest_key.removesuffix(MANIFEST_NAME)
    folder = _cache_root() / source.manifest_sha256
    shards = sorted((f for f in manifest.files if f.path.startswith(DATA_SHARDS) and f.path.endswith(".parquet")),
                    key=lambda f: f.path)
    for f in shards:
        _download_verified(store, prefix + f.path, folder / f.path, f.size, f.sha256)
    log.info("dataset version %s: %d shard(s) from %s", source.dataset_version, len(shards), source.store_uri)
    return folder / DATA_SHARDS


def _download_verified(store: ObjectStore, key: str, dest: Path, size: int, sha256: str) -> None:
    if dest.is_file() and dest.stat().st_size == size and _sha256(dest) == sha256:
        return  # cached by an earlier read (the cache is keyed by content)
    dest.parent.mkdir(parents=True, exist_ok=True)
    info = store.get_file(key, dest)  # streamed to a temp file, renamed; checked against the store's record
    if (info.size, info.sha256) != (size, sha256):
        dest.unlink(missing_ok=True)
        raise IntegrityError(
            f"{key} is {info.size} bytes with sha256 {info.sha256}, but the version's manifest records {size} "
            f"bytes with sha256 {sha256}: the stored copy was replaced or is corrupt", reason="CHECKSUM_MISMATCH")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
