"""The overload gate in the chart: a tuneforge-gate container beside each service, on the service port.

The service moves to the inner port, the Service's "grpc" target is the gate's port, the gate's
streaming methods are exactly the service's (from its descriptors), and the flags the chart renders
are ones the real binary accepts.
"""

from __future__ import annotations

import subprocess
from importlib import import_module
from typing import Any

import pytest

from tests.unit.deploy._chart import (
    SERVICES,
    by_name,
    container,
    gate_container,
    of_kind,
    render,
    valid_values,
)
from tuneforge.common.grpc.gate import find_binary, streaming_methods

METRICS = {"metrics": {"enabled": True}}


def _args(gate: dict[str, Any]) -> dict[str, str]:
    """The gate container's -flag=value arguments as a dict."""
    pairs = [a.lstrip("-").split("=", 1) for a in gate["args"]]
    assert all(len(p) == 2 for p in pairs), gate["args"]
    return dict(pairs)  # type: ignore[arg-type]


@pytest.mark.parametrize("svc", SERVICES)
def test_each_service_pod_runs_its_gate_on_the_service_port(svc: str) -> None:
    docs = render(valid_values(image={"registry": "registry.example.com/ml", "tag": "1.2.3"}))
    deploy = by_name(docs, "Deployment", f"tf-tuneforge-{svc}")
    gate = gate_container(deploy)
    assert gate is not None
    assert gate["image"] == "registry.example.com/ml/tuneforge-gate:1.2.3"
    args = _args(gate)
    assert args["listen"] == "0.0.0.0:50051" and args["backend"] == "127.0.0.1:50052"
    assert (args["max-active"], args["queue-target"], args["burst-wait"], args["interval"]) == ("16", "100ms",
                                                                                               "500ms", "1s")
    # Stopping: the gate serves through the preStop sleep (5 s), the service one second longer, so the
    # gate stops taking calls first; calls in flight get the service's grace period (20 s) and a second.
    assert (args["shutdown-delay"], args["drain-timeout"]) == ("5s", "21s")
    assert container(deploy)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "6"]
    assert deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 5 + 1 + 20 + 5
    assert args["max-message-bytes"] == "16777216"
    # The Service's "grpc" target is the gate's port: no other container of the pod has one so named.
    pod = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == svc
    named = [(c["name"], p["containerPort"]) for c in pod["containers"] for p in c["ports"] if p["name"] == "grpc"]
    assert named == [("gate", 50051)]
    service = by_name(docs, "Service", f"tf-tuneforge-{svc}")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [("grpc", 50051, "grpc")]
    # A health check through the gate reaches the service: ready only when both are.
    assert gate["readinessProbe"] == {"grpc": {"port": 50051}, "periodSeconds": 5, "failureThreshold": 2}
    # Alive while its own gRPC server answers (the gate answers service "tuneforge.gate" itself).
    assert gate["livenessProbe"]["grpc"] == {"port": 50051, "service": "tuneforge.gate"}
    assert {e["name"]: e["value"] for e in gate["env"]} == {"GOMAXPROCS": "2"}
    assert gate["securityContext"]["readOnlyRootFilesystem"] is True
    assert gate["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert gate["resources"]["limits"]["memory"] == "256Mi"
    assert not gate.get("volumeMounts")  # no secret reaches the gate: it passes tokens, never reads them


@pytest.mark.parametrize("svc", SERVICES)
def test_the_chart_streaming_methods_are_the_services_own(svc: str) -> None:
    """The chart's list is written out (the gate image has no Python): it must match the descriptors."""
    gate = gate_container(by_name(render(valid_values()), "Deployment", f"tf-tuneforge-{svc}"))
    assert gate is not None
    descriptor = import_module(f"tuneforge.{svc}.v1.{svc}_pb2").DESCRIPTOR
    assert sorted(_args(gate)["streaming"].split(",")) == streaming_methods([descriptor])


def test_gate_metrics_are_served_scraped_and_admitted_when_metrics_are_on() -> None:
    docs = render(valid_values(networkPolicy={"ingressFrom": [{"podSelector": {}}]}, **METRICS))
    for svc in SERVICES:
        deploy = by_name(docs, "Deployment", f"tf-tuneforge-{svc}")
        gate = gate_container(deploy)
        assert gate is not None and _args(gate)["metrics"] == "0.0.0.0:9091"
        assert {p["name"]: p["containerPort"] for p in gate["ports"]} == {"grpc": 50051, "gate-metrics": 9091}
        ports = {p["name"]: p for p in by_name(docs, "Service", f"tf-tuneforge-{svc}")["spec"]["ports"]}
        assert (ports["gate-metrics"]["port"], ports["gate-metrics"]["targetPort"]) == (9091, "gate-metrics")
    policy = by_name(docs, "NetworkPolicy", "tf-tuneforge")
    callers = [rule for rule in policy["spec"]["ingress"] if "ports" in rule]
    assert [p["port"] for p in callers[0]["ports"]] == [50051, 9090, 9091]


def test_the_gate_can_be_turned_off() -> None:
    docs = render(valid_values(gate={"enabled": False}, **METRICS))
    for deploy in of_kind(docs, "Deployment"):
        assert gate_container(deploy) is None
        assert [c["name"] for c in deploy["spec"]["template"]["spec"]["containers"]] == [container(deploy)["name"]]
        assert "TUNEFORGE_PORT" not in {e["name"] for e in container(deploy)["env"]}
        assert container(deploy)["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
        assert deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 5 + 20 + 5
    for service in of_kind(docs, "Service"):
        assert "gate-metrics" not in {p["name"] for p in service["spec"]["ports"]}


def test_the_real_gate_binary_accepts_the_rendered_flags() -> None:
    binary = find_binary()
    if binary is None:
        pytest.fail("tuneforge-gate is not built: run `make gate` (make test builds it)")
    gate = gate_container(by_name(render(valid_values(**METRICS)), "Deployment", "tf-tuneforge-training"))
    assert gate is not None
    # The same flags, on free local ports (a later -flag wins); the backend is never dialled at start.
    argv = [str(binary), *gate["args"], "-listen=127.0.0.1:0", "-metrics=127.0.0.1:0", "-exit-on-stdin-eof"]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the serving line, or "" when the flags were refused (exit 2)
        assert first.startswith("tuneforge-gate serving 127.0.0.1:"), (first, proc.stderr and proc.stderr.read())
        assert "-> 127.0.0.1:50052 (max-active 16, queue-target 100ms, burst-wait 500ms, interval 1s, 4 streaming" \
            in first
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    # A refused flag is refused loudly: the same check fails on a misspelt one.
    bad = subprocess.run([str(binary), *gate["args"], "-max-actve=3"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "max-actve" in bad.stderr


@pytest.mark.parametrize(("values", "message"), [
    ({"gate": {"innerPort": 50051}}, "gate.innerPort and service.port are both 50051"),
    ({"gate": {"metricsPort": 9090}, **METRICS}, "gate.metricsPort and metrics.port are both 9090"),
    ({"gate": {"innerPort": 9090}, **METRICS}, "gate.innerPort and metrics.port are both 9090"),
])
def test_ports_the_gate_and_its_service_would_share_are_refused(values: dict[str, Any], message: str) -> None:
    import helm_python

    with pytest.raises(helm_python.HelmRenderError, match=message):
        render(valid_values(**values))
    render(valid_values(**{**values, "gate": {**values["gate"], "enabled": False}}))  # no gate, no clash
