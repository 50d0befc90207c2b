"""Helpers for the kind end-to-end test: prerequisites, port-forwards, health and reflection clients."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

INFRA_SERVICES = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}


def _answers(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def missing_prerequisites() -> str | None:
    """Why the kind stack cannot run here, or None when it can."""
    for tool, hint in (("kind", "go install sigs.k8s.io/kind@latest"), ("kubectl", "install kubectl"),
                       ("helm", "go install helm.sh/helm/v4/cmd/helm@latest")):
        if not shutil.which(tool):
            return f"`{tool}` is not on PATH ({hint})"
    engines = [e for e in ("docker", "podman") if shutil.which(e)]
    if not any(_answers([e, "info"]) for e in engines):
        found = ", ".join(engines) or "neither docker nor podman is installed"
        return f"no container engine answers `<engine> info` ({found}): kind needs one to run its node"
    return None


@contextmanager
def port_forward(namespace: str, service: str, remote_port: int, timeout_s: float = 60) -> Iterator[str]:
    """``kubectl port-forward`` to a Service on a free local port; yields ``127.0.0.1:<port>``."""
    proc = subprocess.Popen(["kubectl", "-n", namespace, "port-forward", f"svc/{service}", f":{remote_port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout_s
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if m := re.search(r"Forwarding from 127\.0\.0\.1:(\d+)", line):
                yield f"127.0.0.1:{m.group(1)}"
                return
            if not line and proc.poll() is not None:
                break
        raise RuntimeError(f"port-forward to {namespace}/{service} did not start (exit {proc.poll()})")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def health(addr: str, service: str = "", timeout_s: float = 10) -> str:
    """The grpc.health.v1 status name of ``service`` ('' = the server) at ``addr``."""
    with grpc.insecure_channel(addr) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service),
                                                    timeout=timeout_s)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def list_methods(addr: str) -> dict[str, list[str]]:
    """Services and their methods, as server reflection at ``addr`` describes them (no auth needed)."""
    with grpc.insecure_channel(addr) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        pool = descriptor_pool.DescriptorPool(db)
        return {name: sorted(m.name for m in pool.FindServiceByName(name).methods)
                for name in db.get_services() if name not in INFRA_SERVICES}
