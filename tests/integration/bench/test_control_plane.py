"""bench/control_plane.py in its tiny mode: real services and the baseline started by the script, a
few requests, watch streams held. Correctness only (no errors, the report's shape), never timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
RESULT_KEYS = {"target", "offered_rps", "sent", "ok", "achieved_rps", "p50_ms", "p95_ms", "p99_ms", "errors",
               "health_p50_ms", "health_p99_ms", "health_max_ms", "health_errors", "streams_open", "stream_errors"}


def test_the_tiny_control_plane_bench_answers_every_call_on_every_target(tmp_path):
    out, table = tmp_path / "report.json", tmp_path / "report.md"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'services'}:{ROOT}"}
    from tuneforge.common.grpc.gate import find_binary

    gate = find_binary()
    assert gate is not None, "tuneforge-gate is not built: run `make gate` (make test builds it)"
    proc = subprocess.run([sys.executable, "bench/control_plane.py", "--tiny", "--json", str(out),
                           "--markdown", str(table), "--gate", str(gate)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    report = json.loads(out.read_text())
    targets = ["tuneforge", "tuneforge behind tuneforge-gate", "grpcio baseline"]
    assert [r["target"] for r in report["results"]] == targets
    streams = report["settings"]["watch_streams"]
    assert streams > 0
    for r in report["results"]:
        assert set(r) == RESULT_KEYS
        assert r["sent"] > 0 and r["ok"] == r["sent"], r  # every call answered OK
        assert r["errors"] == {} and r["health_errors"] == 0 and r["stream_errors"] == {}, r
        assert r["streams_open"] == streams, r  # the watchers stayed open through the rate
        assert None not in (r["p50_ms"], r["p99_ms"], r["health_p50_ms"])
    assert report["streams_at_start"] == {name: {"open": streams} for name in targets}
    assert set(report["knee"]) == set(targets)
    assert set(report["server_cpu_seconds"]) == set(targets)  # every target's server processes were found
    assert sum(1 for name in report["server_cpu_seconds"][targets[1]] if name.startswith("tuneforge-gate")) == 3
    rendered = table.read_text()
    assert all(f"| {name} |" in rendered for name in targets) and "Knee" in rendered
