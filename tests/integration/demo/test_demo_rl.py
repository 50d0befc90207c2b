"""`make demo-rl` end to end (tiny model): a prompt-only dataset, a GRPO job with the built-in
length reward through the real services, the reward printed per step and rising, the job report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 8


def test_demo_rl_raises_the_reward_through_the_services(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
    out = subprocess.run([sys.executable, "-m", "tuneforge.cli", "demo-rl", "--tiny", "--steps", str(STEPS),
                          "--run-dir", str(tmp_path / "demo")], capture_output=True, text=True, env=env,
                         timeout=1200, check=False)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-6000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("[demo]")]
    text = "\n".join(lines)
    assert re.search(r"upload: 8 prompts -> version \S+ \(RECORD_KIND_PROMPT\)", text), text
    statuses = [line.split("status ", 1)[1] for line in lines if line.startswith("[demo]   grpo: status ")]
    assert statuses[-1] == "JOB_STATUS_SUCCEEDED", text
    # Every step's reward streamed back as it happened, in order.
    rewards = {int(m[1]): float(m[2]) for m in re.finditer(r"grpo: step +(\d+) reward +(-?[\d.]+)", text)}
    assert sorted(rewards) == list(range(1, STEPS + 1)), text
    # The CLI's table and sparkline of the same numbers.
    assert "reward per step" in out.stdout and "reward mean" in out.stdout
    summary = next(line for line in lines if line.startswith("[demo] reward: "))
    first, last = (float(v) for v in re.findall(r"steps (-?[\d.]+)", summary))
    assert first == pytest.approx((rewards[1] + rewards[2]) / 2, abs=0.01)
    assert last == pytest.approx((rewards[STEPS - 1] + rewards[STEPS]) / 2, abs=0.01)
    # The reward rises on this verifiable task (the length reward: -|characters - 80|).
    assert last > first + 10, rewards
    report = next(line for line in lines if line.startswith("[demo] report: "))
    html = Path(report.split(": ", 1)[1].split(" (", 1)[0])
    assert 'id="reward-curve"' in html.read_text() and html.with_suffix(".png").is_file()
