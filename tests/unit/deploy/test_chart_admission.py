"""What the chart tells the training service about the cluster (admission), which tracking-tool
secrets it mounts for jobs' integrations, and where traces go."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.deploy._chart import by_name, container, render, valid_values

helm_python = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (the chart tests need it)")

RAY_AUTH = {"auth": {"token": "ray-token-0a1b2c3d4e5f6a7b8c9d"}}


def _group(name: str, maxr: int, gpus: int, memory: float = 0) -> dict[str, Any]:
    return {"groupName": name, "replicas": 1, "minReplicas": 0, "maxReplicas": maxr, "gpusPerWorker": gpus,
            "gpuMemoryGiB": memory}


def _training(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return by_name(docs, "Deployment", "tf-tuneforge-training")


def _env(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(_training(docs)).get("env", [])}


def test_gpu_groups_declare_their_gpus_and_the_smallest_gpu_memory() -> None:
    docs = render(valid_values(rayCluster={"enabled": True, **RAY_AUTH, "workerGroups": [
        _group("a100", 2, 4, 80), _group("l4", 3, 1, 24), _group("cpu", 5, 0)]}))
    env = _env(docs)
    assert env["TUNEFORGE_TRAIN_GPUS"] == "11"  # 2x4 + 3x1; the CPU group adds no GPUs
    assert float(env["TUNEFORGE_TRAIN_GPU_MEMORY_GIB"]) == 24.0
    assert "TUNEFORGE_TRAIN_CPU_WORKERS" not in env


def test_cpu_only_clusters_declare_zero_gpus_and_their_workers() -> None:
    docs = render(valid_values(rayCluster={"enabled": True, **RAY_AUTH, "workerGroups": [
        _group("cpu", 3, 0), _group("more", 2, 0)]}))
    env = _env(docs)
    assert (env["TUNEFORGE_TRAIN_GPUS"], env["TUNEFORGE_TRAIN_CPU_WORKERS"]) == ("0", "5")
    assert "TUNEFORGE_TRAIN_GPU_MEMORY_GIB" not in env  # 0 = not checked
    # Only the training service is admitted against the cluster.
    for svc in ("datasets", "evaluation", "checkpoints"):
        other = by_name(docs, "Deployment", f"tf-tuneforge-{svc}")
        assert not [e for e in container(other).get("env", []) if e["name"].startswith("TUNEFORGE_TRAIN_")]


def test_without_a_ray_cluster_nothing_is_declared() -> None:
    assert not [k for k in _env(render(valid_values())) if k.startswith("TUNEFORGE_TRAIN_")]


def test_integration_secrets_mount_per_tenant_and_name() -> None:
    docs = render(valid_values(services={"training": {"integrationSecrets": [
        {"tenant": "acme", "name": "wandb-team", "secretName": "acme-wandb"},
        {"tenant": "globex", "name": "mlflow", "secretName": "globex-mlflow"}]}}))
    deploy = _training(docs)
    assert _env(docs)["TUNEFORGE_INTEGRATION_SECRETS_DIR"] == "/var/lib/tuneforge/integrations"
    mounts = {m["mountPath"]: m for m in container(deploy)["volumeMounts"]}
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    for tenant, name, secret in (("acme", "wandb-team", "acme-wandb"), ("globex", "mlflow", "globex-mlflow")):
        mount = mounts[f"/var/lib/tuneforge/integrations/{tenant}/{name}"]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["secret"]["secretName"] == secret
    assert "TUNEFORGE_INTEGRATION_SECRETS_DIR" not in _env(render(valid_values()))


def test_a_bad_integration_secret_entry_is_refused_by_the_schema() -> None:
    from helm_python.errors import HelmError

    with pytest.raises(HelmError, match="secretName"):
        render(valid_values(services={"training": {"integrationSecrets": [{"tenant": "acme", "name": "w"}]}}))


def test_the_otlp_endpoint_reaches_every_service() -> None:
    docs = render(valid_values(tracing={"otlpEndpoint": "http://otel-collector.observability:4317"}))
    assert by_name(docs, "ConfigMap", "tf-tuneforge-settings")["data"]["TUNEFORGE_OTLP_ENDPOINT"] == (
        "http://otel-collector.observability:4317")
    assert "TUNEFORGE_OTLP_ENDPOINT" not in by_name(render(valid_values()), "ConfigMap", "tf-tuneforge-settings")["data"]
