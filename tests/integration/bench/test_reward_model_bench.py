"""bench/reward_model.py in its quick mode: both sides (trl's RewardTrainer and the engine) train the
same tiny model on the same pairs in fresh interpreters. Correctness only (the report's shape, the
same work measured on both sides), never timings."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]


def test_the_quick_reward_model_bench_runs_both_sides_on_the_same_work(tmp_path):
    out = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'services'}:{ROOT}"}
    proc = subprocess.run([sys.executable, "bench/reward_model.py", "--quick", "--work", str(tmp_path / "work"),
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads(out.read_text())
    assert report["config"]["steps"] == 3 and report["config"]["batch"] == 4
    assert report["environment"]["trl"] and report["environment"]["torch"]
    for side in ("trl", "engine"):
        s = report[side]
        assert s["steps"] == 3, (side, s)
        assert s["steps_per_s"] > 0 and s["tokens_per_s"] > 0 and s["peak_rss_mib"] > 0, (side, s)
        assert math.isfinite(s["loss_first"]) and math.isfinite(s["loss_last"]), (side, s)
        # Bradley-Terry on a fresh score head starts near log 2 on both sides.
        assert s["loss_first"] == pytest.approx(math.log(2), abs=0.1), (side, s)
        assert 0.0 <= s["held_out_accuracy"] <= 1.0, (side, s)
    # Same pairs, same batch: both sides count about the same tokens per step (padding excluded).
    assert report["engine"]["tokens_per_step"] == pytest.approx(report["trl"]["tokens_per_step"], rel=0.2)
    assert "| trl |" in proc.stdout and "| engine |" in proc.stdout
