"""The chart's metrics wiring: off by default; when on, every service gets TUNEFORGE_METRICS_PORT, a
"metrics" container and Service port, and optionally a ServiceMonitor and a Grafana dashboard whose
queries name only series the services define."""

from __future__ import annotations

import json
import re

import pytest

from tests.unit.deploy._chart import (
    CHART,
    ROOT,
    SERVICES,
    by_name,
    container,
    gate_container,
    of_kind,
    pod_environment,
    render,
    valid_values,
)

ON = {"metrics": {"enabled": True, "port": 9464, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                  "dashboard": {"enabled": True}}}


def test_metrics_are_off_by_default():
    docs = render(valid_values())
    assert not of_kind(docs, "ServiceMonitor")
    assert "TUNEFORGE_METRICS_PORT" not in by_name(docs, "ConfigMap", "tf-tuneforge-settings")["data"]
    for svc in SERVICES:
        deploy = by_name(docs, "Deployment", f"tf-tuneforge-{svc}")
        assert [p["name"] for p in container(deploy)["ports"]] == ["grpc-service"]
        assert [p["name"] for p in gate_container(deploy)["ports"]] == ["grpc"]
        assert not [a for a in gate_container(deploy)["args"] if a.startswith("-metrics")]


@pytest.mark.parametrize("svc", SERVICES)
def test_enabled_metrics_reach_every_service(svc, tmp_path):
    from tuneforge.common.settings import load_settings, service_settings_classes

    docs = render(valid_values(**ON))
    ports = {p["name"]: p["containerPort"] for p in container(by_name(docs, "Deployment", f"tf-tuneforge-{svc}"))["ports"]}
    assert ports["metrics"] == 9464
    service_ports = {p["name"]: p for p in by_name(docs, "Service", f"tf-tuneforge-{svc}")["spec"]["ports"]}
    assert (service_ports["metrics"]["port"], service_ports["metrics"]["targetPort"]) == (9464, "metrics")
    env = pod_environment(docs, svc, tmp_path)
    cls = next(c for c in service_settings_classes() if c.__module__ == f"tuneforge.{svc}.settings")
    assert load_settings(cls, environ=env).metrics_port == 9464


def test_service_monitor_scrapes_the_metrics_port_of_the_release():
    docs = render(valid_values(**ON))
    monitor = by_name(docs, "ServiceMonitor", "tf-tuneforge")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [("metrics", "/metrics"),
                                                                            ("gate-metrics", "/metrics")]
    ungated = by_name(render(valid_values(gate={"enabled": False}, **ON)), "ServiceMonitor", "tf-tuneforge")
    assert [e["port"] for e in ungated["spec"]["endpoints"]] == ["metrics"]
    selected = monitor["spec"]["selector"]["matchLabels"]
    matched = [s for s in of_kind(docs, "Service") if selected.items() <= s["metadata"]["labels"].items()]
    assert sorted(s["metadata"]["name"] for s in matched) == sorted(f"tf-tuneforge-{s}" for s in SERVICES)


def test_dashboard_queries_name_only_series_the_services_define():
    docs = render(valid_values(**ON))
    dashboard = json.loads(by_name(docs, "ConfigMap", "tf-tuneforge-dashboard")["data"]["tuneforge.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "tuneforge.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    source = "\n".join(p.read_text() for p in (ROOT / "services" / "tuneforge").rglob("*.py"))
    for name in {n for e in exprs for n in re.findall(r"\b((?:grpc_server|tuneforge)_[a-z_]+)", e)}:
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert f'"{family}"' in source, f"the dashboard queries {name}, which no service defines"
