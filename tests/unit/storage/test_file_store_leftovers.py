"""A killed writer's half-written files in a file:// store are removed when a service opens it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tuneforge.common.storage.file import STALE_PART_S, FileObjectStore


def test_stale_part_files_are_swept_and_fresh_ones_kept(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "store")
    tmp = tmp_path / "store" / ".tmp"
    stale, fresh = tmp / "dead-writer.part", tmp / "live-writer.part"
    stale.write_bytes(b"x" * 1024)
    fresh.write_bytes(b"y" * 1024)
    old = time.time() - STALE_PART_S - 60
    os.utime(stale, (old, old))
    FileObjectStore(tmp_path / "store")  # what a restarted service does
    assert not stale.exists() and fresh.exists()
    store.put_bytes("a/b.txt", b"ok")  # the store still works
    assert store.get_bytes("a/b.txt") == b"ok"
