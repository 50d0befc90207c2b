"""Shared benchmark helpers: medians of timings, peak RSS, child processes, JSON results.

Public API:
    median_after_warmup(values, warmup) -> float     median of the values after the first ``warmup``
    peak_rss_bytes() -> int                          peak resident set size of this process so far
    run_child(argv, result_path, env=None, timeout_s=...) -> dict
                                                     run one measurement in a fresh interpreter (so its
                                                     peak RSS is its own) and read the JSON it wrote
    write_json(path, data) -> None                   atomic JSON write (temp file + rename)
    environment() -> dict                            python/torch/transformers versions, CPU count
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def median_after_warmup(values: Sequence[float], warmup: int) -> float:
    """Median of ``values`` without the first ``warmup`` ones (all of them if too few remain).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("no measurements to take a median of")
    kept = list(values[warmup:]) or list(values)
    return float(statistics.median(kept))


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started (Linux: ru_maxrss in KiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def child_main(side: str, cfg_path: Path, runners: Mapping[str, Any]) -> None:
    """In a side's fresh interpreter: run ``runners[side](config)`` and write its result, with the
    process's peak RSS, to ``<work>/<side>.json``."""
    cfg = json.loads(cfg_path.read_text())
    result = runners[side](cfg)
    result["peak_rss_bytes"] = peak_rss_bytes()
    write_json(Path(cfg["work"]) / f"{side}.json", result)


def run_child(
    argv: Sequence[str], result_path: Path, env: Mapping[str, str] | None = None, timeout_s: float = 3600
) -> dict[str, Any]:
    """Run ``python argv...`` from the repository root and return the JSON it wrote to ``result_path``.

    Raises:
        RuntimeError: the child failed or wrote no result (its output tail is in the message).
    """
    result_path = Path(result_path)
    result_path.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout_s,
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0 or not result_path.is_file():
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{tail}")
    return json.loads(result_path.read_text())


def environment() -> dict[str, Any]:
    """What the figures depend on: interpreter, library versions, CPUs."""
    versions = {}
    for name in ("torch", "transformers", "peft", "trl"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            versions[name] = None
    return {"python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), **versions}
