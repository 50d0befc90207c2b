"""Fault injection: parsed strictly, fires on the chosen rank and step, exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import tuneforge
from tuneforge.common.errors import InvalidInput
from tuneforge.engine.train.faults import FAULT_ENV, FaultPlan, fault_from_env


def test_parse(tmp_path: Path) -> None:
    assert fault_from_env("") is None
    assert fault_from_env(f"rank=1,step=4,marker={tmp_path}/m") == FaultPlan(1, 4, tmp_path / "m")


@pytest.mark.parametrize("value", ["rank=1", "rank=x,step=4,marker=/m", "step=4;marker=/m"])
def test_malformed_value_names_the_form(value: str) -> None:
    with pytest.raises(InvalidInput, match="rank=<int>,step=<int>,marker=") as info:
        fault_from_env(value)
    assert info.value.field == FAULT_ENV


def _run(marker: Path, rank: int, step: int) -> int:
    code = (
        "from pathlib import Path\n"
        "from tuneforge.engine.train.faults import FaultPlan, maybe_crash\n"
        f"maybe_crash(FaultPlan(1, 4, Path({str(marker)!r})), {rank}, {step})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(tuneforge.__file__).parents[1])}
    return subprocess.run([sys.executable, "-c", code], check=False, env=env).returncode


def test_fires_once_on_its_rank_and_step(tmp_path: Path) -> None:
    marker = tmp_path / "fired"
    assert _run(marker, rank=0, step=4) == 0 and not marker.exists()
    assert _run(marker, rank=1, step=3) == 0 and not marker.exists()
    assert _run(marker, rank=1, step=4) == 1 and marker.exists()
    assert _run(marker, rank=1, step=4) == 0  # the restarted worker trains on
