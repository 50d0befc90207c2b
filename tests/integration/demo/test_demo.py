"""`make demo` end to end (tiny model): every service wired together through the public API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_runs_every_stage_through_the_services(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    out = subprocess.run([sys.executable, "-m", "tuneforge.cli", "demo", "--tiny", "--steps", "6",
                          "--run-dir", str(tmp_path / "demo")], capture_output=True, text=True, env=env,
                         timeout=1200, check=False)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("[demo]")]
    text = "\n".join(lines)
    assert "2 rejected" in text  # the two invalid rows, each reported by row and field
    assert "field output: is missing" in text and "field instruction: is empty" in text
    assert any("exact_dedup" in line and "-> " in line for line in lines)
    # Training is a TrainingService job: its status changes, metrics and registered checkpoints stream back.
    statuses = [line.split("status ", 1)[1] for line in lines if line.startswith("[demo]   train: status ")]
    assert statuses == ["JOB_STATUS_VALIDATING", "JOB_STATUS_QUEUED", "JOB_STATUS_RUNNING", "JOB_STATUS_SUCCEEDED"]
    registered = [line.split()[3] for line in lines if line.startswith("[demo]   train: checkpoint ckpt_")]
    assert len(registered) == 2  # steps 3 and 6
    assert any(line.startswith("[demo]   train: step   6 eval_loss") for line in lines)
    assert f"result checkpoint {registered[-1]}" in text
    assert any(line.startswith("[demo]   eval: perplexity") for line in lines)
    assert "export: merged model" in text
    exported = next(line.split(" at ", 1)[1] for line in lines if "export: merged model" in line)
    assert exported.startswith("file://") and "/exports/" in exported
    report = next(line for line in lines if line.startswith("[demo] report: "))
    job_html = report.split(": ", 1)[1].split(" and ")[0]
    assert 'id="loss-curve"' in Path(job_html).read_text()
