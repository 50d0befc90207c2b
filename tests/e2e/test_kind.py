"""tuneforge on a kind cluster: deploy/kind/up.sh, then every service's health and reflection.

Needs kind, kubectl, helm and a working container engine; skipped with the missing piece named
otherwise (the project's build machines have no container engine). Environment:

* ``TUNEFORGE_TEST_KIND_REUSE=1``: test the stack already up (skip up.sh).
* ``TUNEFORGE_TEST_KIND_KEEP=1``: keep a cluster this test created.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.kindstack import health, list_methods, missing_prerequisites, port_forward
from tests.unit.deploy._chart import ROOT, SERVICES

pytestmark = pytest.mark.e2e

CLUSTER = os.environ.get("KIND_CLUSTER", "tuneforge")
NAMESPACE = os.environ.get("KIND_NAMESPACE", "tuneforge")
PROTO_SERVICES = {"datasets": "DatasetService", "training": "TrainingService",
                  "evaluation": "EvaluationService", "checkpoints": "CheckpointService"}

_missing = missing_prerequisites()
if _missing:
    pytest.skip(f"kind e2e needs a cluster: {_missing}", allow_module_level=True)


def _clusters() -> set[str]:
    out = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True, timeout=60, check=True)
    return set(out.stdout.split())


@pytest.fixture(scope="module")
def stack() -> Iterator[str]:
    """The namespace of a running stack: brought up by deploy/kind/up.sh unless reused."""
    if os.environ.get("TUNEFORGE_TEST_KIND_REUSE") == "1":
        yield NAMESPACE
        return
    existed = CLUSTER in _clusters()
    subprocess.run([str(ROOT / "deploy" / "kind" / "up.sh")], check=True, timeout=3600)
    yield NAMESPACE
    if not existed and os.environ.get("TUNEFORGE_TEST_KIND_KEEP") != "1":
        subprocess.run([str(ROOT / "deploy" / "kind" / "down.sh")], check=False, timeout=600)


def _expected_methods(svc: str) -> list[str]:
    module = __import__(f"tuneforge.{svc}.v1.{svc}_pb2", fromlist=["DESCRIPTOR"])
    return sorted(m.name for m in module.DESCRIPTOR.services_by_name[PROTO_SERVICES[svc]].methods)


@pytest.mark.parametrize("svc", SERVICES)
def test_service_is_serving_and_reflects_its_methods(stack: str, svc: str) -> None:
    with port_forward(stack, f"tuneforge-{svc}", 50051) as addr:
        full_name = f"tuneforge.{svc}.v1.{PROTO_SERVICES[svc]}"
        assert health(addr) == "SERVING"
        assert health(addr, full_name) == "SERVING"
        assert list_methods(addr) == {full_name: _expected_methods(svc)}
