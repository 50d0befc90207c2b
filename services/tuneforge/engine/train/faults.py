"""Fault injection for resilience tests and drills: kill one worker at a chosen step, once.

Set ``TUNEFORGE_ENGINE_FAULT="rank=1,step=4,marker=/shared/path/fired"`` and the worker of that
rank exits abruptly (``os._exit(1)``, as a crash or an OOM kill would) just before it runs that
optimizer step, provided the marker file does not exist yet; it creates the marker first, so the
restarted worker group trains on. ``run_on_ray`` forwards the variable to the Ray workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tuneforge.common.errors import InvalidInput

FAULT_ENV = "TUNEFORGE_ENGINE_FAULT"


@dataclass(frozen=True)
class FaultPlan:
    """Which worker dies before which (1-based) optimizer step, fired once per marker file."""

    rank: int
    step: int
    marker: Path


def fault_from_env(value: str | None = None) -> FaultPlan | None:
    """Parse ``TUNEFORGE_ENGINE_FAULT`` (or ``value``); None when unset.

    Raises:
        InvalidInput: a malformed value, naming the expected form.
    """
    raw = os.environ.get(FAULT_ENV, "") if value is None else value
    if not raw.strip():
        return None
    try:
        parts = dict(item.split("=", 1) for item in raw.split(","))
        return FaultPlan(int(parts["rank"]), int(parts["step"]), Path(parts["marker"]))
    except (KeyError, ValueError) as exc:
        raise InvalidInput.field_error(
            FAULT_ENV, f"{raw!r} is malformed: use rank=<int>,step=<int>,marker=<file path>"
        ) from exc


def maybe_crash(plan: FaultPlan | None, rank: int, step: int) -> None:
    """Exit the process when ``plan`` targets this rank and step and has not fired yet."""
    if plan is None or plan.rank != rank or plan.step != step:
        return
    try:
        plan.marker.parent.mkdir(parents=True, exist_ok=True)
        with plan.marker.open("x"):  # exclusive create: fires exactly once
            pass
    except FileExistsError:
        return
    os._exit(1)
