"""The image's health check script and the e2e test's gRPC clients, against a real training service."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.kindstack import health, list_methods
from tests.unit.deploy._chart import ROOT
from tuneforge.training.app import TrainingSettings, build_app
from tuneforge.training.v1 import training_pb2

PROBE = ROOT / "docker" / "grpc_health_probe.py"
TRAINING = training_pb2.DESCRIPTOR.services_by_name["TrainingService"]

pytestmark = pytest.mark.integration


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=60,
                          check=False)


def test_probe_exits_zero_while_serving_and_one_after_stop(make_service) -> None:
    handle = make_service(TrainingSettings, build_app)
    ok = _probe("--addr", handle.address)
    assert ok.returncode == 0, ok.stderr
    assert "SERVING" in ok.stdout
    named = _probe("--addr", handle.address, "--service", TRAINING.full_name)
    assert named.returncode == 0, named.stderr
    unknown = _probe("--addr", handle.address, "--service", "no.such.Service", "--timeout", "2")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    handle.server.stop(0)
    gone = _probe("--addr", handle.address, "--timeout", "2")
    assert gone.returncode == 1 and "no answer" in gone.stderr


def test_probe_reads_the_port_from_tuneforge_port(make_service, monkeypatch: pytest.MonkeyPatch) -> None:
    handle = make_service(TrainingSettings, build_app)
    monkeypatch.setenv("TUNEFORGE_PORT", str(handle.server.port))
    assert _probe().returncode == 0


def test_e2e_clients_see_health_and_every_method(make_service) -> None:
    handle = make_service(TrainingSettings, build_app)
    assert health(handle.address) == "SERVING"
    methods = list_methods(handle.address)
    assert methods == {TRAINING.full_name: sorted(m.name for m in TRAINING.methods)}
