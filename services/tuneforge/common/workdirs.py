"""Temporary work folders (upload spools, staging, downloads, exports) that a crash cannot leak.

Every temporary folder of a service is made through ``WorkFolders.make`` under the service's work
folder with a known prefix, and is *live* until ``release``. A process killed with SIGKILL never
releases its folders (an upload's spool can be 10 GiB), so:

* at start-up, ``sweep(startup=True)`` removes every folder with a known prefix: no process owns
  them yet (one service process per data folder);
* on a timer (``start_sweeper``), ``sweep()`` removes folders that no live call of this process
  holds and that are older than ``grace_s`` (a folder made a moment ago by a call that has not yet
  registered it is never touched).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tuneforge.common.periodic import start_periodic

log = logging.getLogger(__name__)


class WorkFolders:
    """Makes, tracks and sweeps temporary folders under ``root``.

    Args:
        root: the service's work folder.
        prefixes: the prefixes of its temporary folders (``upload-``, ``stage-`` ...).
        grace_s: the age under which the timer leaves an unknown folder alone.
    """

    def __init__(self, root: Path, prefixes: tuple[str, ...], *, grace_s: float = 600.0) -> None:
        self.root = root
        self.prefixes = prefixes
        self.grace_s = grace_s
        self._live: set[Path] = set()
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)

    def make(self, prefix: str) -> Path:
        """A new live folder ``<root>/<prefix>XXXX``; ``release`` it when done."""
        if prefix not in self.prefixes:
            raise ValueError(f"{prefix!r} is not one of {self.prefixes}")
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.root))
        with self._lock:
            self._live.add(path)
        return path

    def release(self, path: Path) -> None:
        """Remove the folder and forget it."""
        shutil.rmtree(path, ignore_errors=True)
        with self._lock:
            self._live.discard(path)

    @contextlib.contextmanager
    def folder(self, prefix: str) -> Iterator[Path]:
        """A live folder for the duration of a ``with`` block."""
        path = self.make(prefix)
        try:
            yield path
        finally:
            self.release(path)

    def sweep(self, *, startup: bool = False) -> int:
        """Remove leftover folders (see the module docstring); returns how many were removed."""
        now = time.time()
        removed = 0
        with self._lock:
            live = set(self._live)
        for path in self.root.iterdir() if self.root.is_dir() else ():
            if not path.is_dir() or not path.name.startswith(self.prefixes) or path in live:
                continue
            try:
                age = now - path.stat().st_mtime
            except FileNotFoundError:  # released meanwhile
                continue
            if startup or age > self.grace_s:
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        if removed:
            log.warning("removed %d leftover work folder(s) under %s (a stopped or crashed process left them)",
                        removed, self.root)
        return removed

    def start_sweeper(self, interval_s: float) -> Callable[[], None]:
        """Sweep every ``interval_s`` seconds in a thread; returns the function that stops it."""
        return start_periodic(self.sweep, interval_s, name="work-sweeper", what=f"sweeping {self.root}")
