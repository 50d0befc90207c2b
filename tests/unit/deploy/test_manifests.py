"""Rendered manifests and deploy/kind files against Kubernetes' own schemas (kubernetes-validate, offline).

kubernetes-validate knows no custom resources: it only warns for a RayCluster. So the RayCluster's
essential fields are checked here, and its head and worker pod templates are validated as Pods.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.deploy._chart import (
    CHART,
    KUBE_VERSION,
    RAY_TOKEN,
    ROOT,
    SERVICES,
    by_name,
    kind_values,
    merge,
    render,
    valid_values,
)

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
pytest.importorskip("helm_python", reason="pip install helm-python-sdk (the chart tests need it)")

CUSTOM_KINDS = {"RayCluster"}
GPU_GROUP = {"groupName": "gpu", "gpusPerWorker": 2, "replicas": 1, "minReplicas": 0, "maxReplicas": 3,
             "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "64Gi"}},
             "shmSizeLimit": "16Gi", "nodeSelector": {"nvidia.com/gpu.present": "true"},
             "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
RAY_VALUES = {"rayCluster": {"enabled": True, "auth": {"token": RAY_TOKEN}, "workerGroups": [GPU_GROUP]}}


def _validate_all(docs: list[dict[str, Any]]) -> list[str]:
    """Validate every built-in object strictly (unknown fields are errors); return what was checked."""
    checked = []
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        checked.append(f"{doc['kind']}/{doc['metadata']['name']}")
    return checked


@pytest.mark.parametrize(
    "values",
    [valid_values(), valid_values(**RAY_VALUES), valid_values(auth={"disabled": True, "tokens": ""},
                                                               podDisruptionBudget={"enabled": False},
                                                               networkPolicy={"enabled": False}),
     valid_values(models={"persistence": {"enabled": True, "storageClassName": "nfs"}}),
     valid_values(models={"existingClaim": "llms", "subPath": "hf/models"})],
    ids=["default", "ray", "minimal", "models-pvc", "models-claim"],
)
def test_rendered_chart_is_valid_kubernetes(values: dict[str, Any]) -> None:
    checked = _validate_all(render(values))
    assert {c.split("/")[0] for c in checked} >= {"ConfigMap", "Deployment", "Service", "ServiceAccount"}


def test_the_validator_refuses_unknown_fields() -> None:
    """Guard for the test above: strict validation must catch a misspelt field."""
    deploy = by_name(render(valid_values()), "Deployment", "tf-tuneforge-training")
    deploy["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, KUBE_VERSION, strict=True)


def test_cli_validates_the_rendered_chart(tmp_path: Path) -> None:
    """The same check through the kubernetes-validate CLI, as CI would run it on a manifest file."""
    docs = [d for d in render(valid_values()) if d["kind"] not in CUSTOM_KINDS]
    path = tmp_path / "tuneforge.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    exe = Path(sys.executable).parent / "kubernetes-validate"
    proc = subprocess.run([str(exe), "--strict", "-k", KUBE_VERSION, str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout


def _pod(template: dict[str, Any], name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **template.get("metadata", {})},
            "spec": template["spec"]}


def test_raycluster_has_head_and_gpu_worker_group() -> None:
    docs = render(valid_values(**RAY_VALUES))
    ray = by_name(docs, "RayCluster", "tf-tuneforge-ray")
    assert ray["apiVersion"] == "ray.io/v1"
    spec = ray["spec"]
    assert spec["rayVersion"] == "2.60.0"
    head = spec["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # KubeRay wants strings
    assert head["rayStartParams"]["num-gpus"] == "0"
    head_ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert head_ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
    (group,) = spec["workerGroupSpecs"]
    assert group["groupName"] == "gpu"
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    worker = group["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert worker["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert worker["resources"]["requests"]["memory"] == "64Gi"
    assert worker["image"] == "tuneforge-ml-cuda:0.1.0"  # GPU groups run the CUDA flavour
    assert group["rayStartParams"]["num-gpus"] == "2"
    assert group["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
        group["template"]["spec"]["tolerations"]
    for template, name in ((head["template"], "head"), (group["template"], "worker")):
        kubernetes_validate.validate(_pod(template, name), KUBE_VERSION, strict=True)
        env = {e["name"]: e["value"] for e in template["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"] == "token" and RAY_TOKEN not in str(template)
        # Training workers write checkpoints to the store: credentials as mounted files, never values.
        mounts = {m["name"]: m["mountPath"] for m in template["spec"]["containers"][0]["volumeMounts"]}
        assert env["TUNEFORGE_S3_ACCESS_KEY_FILE"] == f"{mounts['s3']}/access-key"
        assert env["TUNEFORGE_S3_SECRET_KEY_FILE"] == f"{mounts['s3']}/secret-key"
        (s3,) = [v for v in template["spec"]["volumes"] if v["name"] == "s3"]
        assert s3["secret"]["secretName"] == "tf-tuneforge-s3"
        assert {i["path"] for i in s3["secret"]["items"]} == {"access-key", "secret-key"}


def test_training_service_is_pointed_at_the_ray_head() -> None:
    docs = render(valid_values(**RAY_VALUES), namespace="ml")
    env = {e["name"]: e.get("value") for e in
           by_name(docs, "Deployment", "tf-tuneforge-training")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RAY_ADDRESS"] == "ray://tf-tuneforge-ray-head-svc.ml.svc:10001"
    assert env["RAY_AUTH_TOKEN_PATH"] == "/var/run/secrets/tuneforge/ray/token"
    other = by_name(docs, "Deployment", "tf-tuneforge-datasets")["spec"]["template"]["spec"]["containers"][0]
    assert "RAY_ADDRESS" not in {e["name"] for e in other["env"]}


def test_kind_values_overlay_the_dev_profile() -> None:
    values = merge(yaml.safe_load((CHART / "values-dev.yaml").read_text()), kind_values())
    docs = render(values, release="tuneforge", namespace="tuneforge")
    _validate_all(docs)
    cm = by_name(docs, "ConfigMap", "tuneforge-settings")
    assert cm["data"]["TUNEFORGE_OBJECT_STORE_URI"] == "s3://tuneforge?endpoint=tuneforge-s3.tuneforge.svc:9000&secure=false"
    for svc in SERVICES:
        c = by_name(docs, "Deployment", f"tuneforge-{svc}")["spec"]["template"]["spec"]["containers"][0]
        role = "datasets" if svc == "datasets" else "ml"
        assert c["image"] == f"localhost/tuneforge-{role}:0.1.0" and c["imagePullPolicy"] == "Never"


def test_kind_cluster_config() -> None:
    cfg = yaml.safe_load((ROOT / "deploy" / "kind" / "cluster.yaml").read_text())
    assert (cfg["kind"], cfg["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    assert [n["role"] for n in cfg["nodes"]] == ["control-plane"]
    assert cfg["networking"]["apiServerAddress"] == "127.0.0.1"
