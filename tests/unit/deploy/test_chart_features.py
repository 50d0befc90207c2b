"""The chart's deployment features, rendered offline with Helm's engine: rollout strategies, Ray
wiring (training, evaluation), worker groups with GPUs, autoscaling, the dev profile, ingress and
Gateway routes, resource presets, NOTES, and the generated values table."""

from __future__ import annotations

import importlib.util
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
    container,
    of_kind,
    render,
    secret_data,
    valid_values,
)

helm_python = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (the chart tests need it)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

RAY = {"enabled": True, "auth": {"token": RAY_TOKEN}}
CPU_GROUP = {"groupName": "cpu", "replicas": 2, "minReplicas": 2, "maxReplicas": 2, "gpusPerWorker": 0}


def _values_file(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / name).read_text())


def _env(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in c.get("env", [])}


def test_training_is_recreated_by_default_the_others_rolled() -> None:
    docs = render(valid_values())
    for svc in SERVICES:
        strategy = by_name(docs, "Deployment", f"tf-tuneforge-{svc}")["spec"]["strategy"]
        if svc == "training":
            assert strategy == {"type": "Recreate"}
        else:
            assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_training_scales_out_on_postgresql_leases_and_may_roll() -> None:
    docs = render(valid_values(services={"training": {"replicas": 3, "strategy": "RollingUpdate"}}))
    spec = by_name(docs, "Deployment", "tf-tuneforge-training")["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    with pytest.raises(Exception, match=r"strategy"):
        render(valid_values(services={"training": {"strategy": "BlueGreen"}}))


def test_training_evaluation_and_export_submit_to_the_ray_cluster() -> None:
    docs = render(valid_values(rayCluster=RAY, services={"evaluation": {"rayGpusPerTask": 1}}), namespace="ml")
    head = "ray://tf-tuneforge-ray-head-svc.ml.svc:10001"
    training = _env(container(by_name(docs, "Deployment", "tf-tuneforge-training")))
    evaluation = _env(container(by_name(docs, "Deployment", "tf-tuneforge-evaluation")))
    checkpoints = _env(container(by_name(docs, "Deployment", "tf-tuneforge-checkpoints")))
    assert training["RAY_ADDRESS"] == head
    assert evaluation["TUNEFORGE_EVAL_RAY_ADDRESS"] == head and evaluation["TUNEFORGE_EVAL_RAY_NUM_GPUS"] == "1"
    assert checkpoints["TUNEFORGE_EXPORT_RAY_ADDRESS"] == head
    for env in (training, evaluation, checkpoints):
        assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"].endswith("/ray/token")
    datasets = _env(container(by_name(docs, "Deployment", "tf-tuneforge-datasets")))  # no Ray runner there
    assert not {"RAY_ADDRESS", "TUNEFORGE_EVAL_RAY_ADDRESS", "TUNEFORGE_EXPORT_RAY_ADDRESS", "RAY_AUTH_MODE"} & set(datasets)
    off = render(valid_values(rayCluster=RAY, services={"evaluation": {"useRayCluster": False},
                                                        "checkpoints": {"useRayCluster": False}}))
    assert "TUNEFORGE_EVAL_RAY_ADDRESS" not in _env(container(by_name(off, "Deployment", "tf-tuneforge-evaluation")))
    ck_off = _env(container(by_name(off, "Deployment", "tf-tuneforge-checkpoints")))
    assert not {"TUNEFORGE_EXPORT_RAY_ADDRESS", "RAY_AUTH_MODE"} & set(ck_off)


def test_ray_pods_mount_no_shared_data_volume() -> None:
    docs = render(valid_values(rayCluster=RAY, models={"existingClaim": "llms"}))
    spec = by_name(docs, "RayCluster", "tf-tuneforge-ray")["spec"]
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    for template in templates:
        for volume in template["spec"]["volumes"]:
            assert set(volume) - {"name"} <= {"emptyDir", "secret"}, volume  # no PVC, hostPath, NFS...


def test_worker_groups_gpu_and_cpu() -> None:
    gpu = {"groupName": "a100", "replicas": 1, "minReplicas": 0, "maxReplicas": 4, "gpusPerWorker": 2,
           "nodeSelector": {"nvidia.com/gpu.product": "A100"},
           "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    docs = render(valid_values(image={"registry": "reg.example.com/ml"},
                               rayCluster={**RAY, "workerGroups": [gpu, CPU_GROUP]}))
    ray = by_name(docs, "RayCluster", "tf-tuneforge-ray")
    groups = {g["groupName"]: g for g in ray["spec"]["workerGroupSpecs"]}
    a100, cpu = groups["a100"], groups["cpu"]
    ga, gc = a100["template"]["spec"]["containers"][0], cpu["template"]["spec"]["containers"][0]
    assert ga["resources"]["requests"]["nvidia.com/gpu"] == 2 and ga["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert a100["rayStartParams"]["num-gpus"] == "2"
    assert a100["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "A100"}
    assert a100["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert ga["image"] == "reg.example.com/ml/tuneforge-ml-cuda:0.1.0"
    assert "nvidia.com/gpu" not in str(gc["resources"]) and "num-gpus" not in cpu["rayStartParams"]
    assert gc["image"] == "reg.example.com/ml/tuneforge-ml:0.1.0" and _env(gc)["DS_ACCELERATOR"] == "cpu"
    assert ray["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    pdbs = {p["metadata"]["name"]: p for p in of_kind(docs, "PodDisruptionBudget")}
    assert pdbs["tf-tuneforge-ray-a100"]["spec"]["selector"]["matchLabels"]["tuneforge.dev/ray-group"] == "a100"
    for g in (a100, cpu):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": g["groupName"]}, "spec": g["template"]["spec"]}
        kubernetes_validate.validate(pod, KUBE_VERSION, strict=True)


def test_worker_group_sizes_must_be_consistent() -> None:
    bad = {**CPU_GROUP, "replicas": 5}
    with pytest.raises(Exception, match="minReplicas <= replicas <= maxReplicas"):
        render(valid_values(rayCluster={**RAY, "workerGroups": [bad]}))


def test_autoscaling_is_wired_to_kuberay() -> None:
    plain = by_name(render(valid_values(rayCluster=RAY)), "RayCluster", "tf-tuneforge-ray")["spec"]
    assert "enableInTreeAutoscaling" not in plain
    spec = by_name(render(valid_values(rayCluster={**RAY, "autoscaling": {"enabled": True, "idleTimeoutSeconds": 30}})),
                   "RayCluster", "tf-tuneforge-ray")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 30
    assert spec["autoscalerOptions"]["securityContext"]["readOnlyRootFilesystem"] is True
    head = spec["headGroupSpec"]["template"]["spec"]
    # The operator gives the head its own ServiceAccount (with a Role) for the autoscaler sidecar.
    assert "serviceAccountName" not in head and head["automountServiceAccountToken"] is True


def test_dev_profile_brings_s3_postgres_and_a_token() -> None:
    docs = render(_values_file("values-dev.yaml"), namespace="dev")
    cm = by_name(docs, "ConfigMap", "tf-tuneforge-settings")["data"]
    assert cm["TUNEFORGE_OBJECT_STORE_URI"] == "s3://tuneforge?endpoint=tf-tuneforge-s3.dev.svc:9000&secure=false"
    s3, pg, auth = (secret_data(by_name(docs, "Secret", f"tf-tuneforge-dev-{n}")) for n in ("s3", "postgres", "auth"))
    assert len(s3["accessKey"]) == 20 and len(s3["secretKey"]) == 40
    assert pg["url"] == f"postgresql+psycopg://tuneforge:{pg['password']}@tf-tuneforge-postgres.dev.svc:5432/tuneforge"
    tenant, token = auth["tokens"].split(":")
    assert tenant == "dev" and len(token) >= 16
    training = by_name(docs, "Deployment", "tf-tuneforge-training")["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in training["volumes"]}
    assert vols["s3"]["secret"]["secretName"] == "tf-tuneforge-dev-s3"
    assert vols["database"]["secret"]["secretName"] == "tf-tuneforge-dev-postgres"
    assert vols["auth"]["secret"]["secretName"] == "tf-tuneforge-dev-auth"
    for name in ("tf-tuneforge-s3", "tf-tuneforge-postgres"):
        deploy = by_name(docs, "Deployment", name)
        assert container(deploy)["securityContext"]["readOnlyRootFilesystem"] is True
        assert container(deploy)["image"].startswith("localhost/tuneforge-")
        kubernetes_validate.validate(deploy, KUBE_VERSION, strict=True)
        by_name(docs, "Service", name)
    # No credential secret of the non-dev kind is created.
    assert {s["metadata"]["name"] for s in of_kind(docs, "Secret")} == {
        "tf-tuneforge-dev-s3", "tf-tuneforge-dev-postgres", "tf-tuneforge-dev-auth", "tf-tuneforge-ray"}
    ray = by_name(docs, "RayCluster", "tf-tuneforge-ray")["spec"]
    assert [(g["groupName"], g["replicas"]) for g in ray["workerGroupSpecs"]] == [("cpu", 2)]


def test_the_settings_every_pod_gets_load_in_the_dev_profile(tmp_path: Path) -> None:
    from tests.unit.deploy._chart import pod_environment
    from tuneforge.common.settings import load_settings
    from tuneforge.training.settings import TrainingSettings

    docs = render(_values_file("values-dev.yaml"))
    env = pod_environment(docs, "training", tmp_path)
    settings = load_settings(TrainingSettings, env)
    assert settings.resolved_database_url().startswith("postgresql+psycopg://tuneforge:")


def test_ingress_with_tls_and_grpc_routes() -> None:
    hosts = {"training": "training.example.com", "datasets": "datasets.example.com"}
    docs = render(valid_values(ingress={"enabled": True, "className": "nginx", "hosts": hosts,
                                        "tls": [{"secretName": "tf-tls", "hosts": ["training.example.com"]}]}))
    ingresses = {i["metadata"]["name"]: i for i in of_kind(docs, "Ingress")}
    assert set(ingresses) == {"tf-tuneforge-training", "tf-tuneforge-datasets"}
    training = ingresses["tf-tuneforge-training"]
    assert training["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert training["spec"]["tls"] == [{"secretName": "tf-tls", "hosts": ["training.example.com"]}]
    assert "tls" not in ingresses["tf-tuneforge-datasets"]["spec"]
    assert training["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "tf-tuneforge-training"
    for ing in ingresses.values():
        kubernetes_validate.validate(ing, KUBE_VERSION, strict=True)
    routes = of_kind(render(valid_values(gateway={"enabled": True, "parentRefs": [{"name": "public"}],
                                                  "hosts": {"evaluation": "eval.example.com"}})), "GRPCRoute")
    assert [(r["metadata"]["name"], r["spec"]["hostnames"]) for r in routes] == [
        ("tf-tuneforge-evaluation", ["eval.example.com"])]
    assert routes[0]["spec"]["rules"][0]["backendRefs"][0] == {"name": "tf-tuneforge-evaluation", "port": 50051}
    with pytest.raises(Exception, match="not both"):
        render(valid_values(ingress={"enabled": True}, gateway={"enabled": True}))


@pytest.mark.parametrize(("preset", "memory"), [("nano", "512Mi"), ("small", "2Gi"), ("large", "16Gi")])
def test_resource_presets(preset: str, memory: str) -> None:
    docs = render(valid_values(resourcesPreset=preset, services={"datasets": {"resourcesPreset": ""}}))
    assert container(by_name(docs, "Deployment", "tf-tuneforge-datasets"))["resources"]["limits"]["memory"] == memory
    own = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "3Gi"}}
    docs = render(valid_values(resourcesPreset=preset, services={"datasets": {"resources": own}}))
    assert container(by_name(docs, "Deployment", "tf-tuneforge-datasets"))["resources"] == own


def test_notes_print_next_steps() -> None:
    with helm_python.Chart.load(CHART) as chart:
        files = chart.render(_values_file("values-dev.yaml"), name="tf", namespace="ml", is_install=True)
    notes = next(text for name, text in files.items() if name.endswith("NOTES.txt"))
    assert "Next steps:" in notes
    assert "kubectl -n ml get secret tf-tuneforge-dev-auth -o jsonpath='{.data.tokens}'" in notes
    assert "kubectl -n ml port-forward svc/tf-tuneforge-training" in notes
    assert "UPGRADING.md" in notes and "RayCluster tf-tuneforge-ray" in notes


@pytest.mark.parametrize("name", ["values-dev.yaml", "values-gpu.yaml"])
def test_shipped_values_files_lint_and_validate(name: str) -> None:
    values = _values_file(name)
    report = helm_python.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == [], report
    for doc in render(values):
        if doc["kind"] not in ("RayCluster", "GRPCRoute"):
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


def test_values_table_in_readme_is_current() -> None:
    spec = importlib.util.spec_from_file_location("values_table", ROOT / "helm" / "values_table.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    readme = (CHART / "README.md").read_text()
    assert module.render_readme(readme) == readme, "helm/tuneforge/README.md is stale: run python helm/values_table.py"
    keys = [r[0] for r in module.rows((CHART / "values.yaml").read_text(), {})]
    assert {"image.registry", "rayCluster.workerGroups", "rayCluster.autoscaling.enabled", "dev.s3.enabled",
            "ingress.tls", "gateway.parentRefs", "resourcesPreset", "services.evaluation.useRayCluster"} <= set(keys)
    # The generator must notice a new, undocumented key.
    stale = module.rows((CHART / "values.yaml").read_text() + "\nbrandNew: 1\n", {})
    assert stale[-1] == ("brandNew", "1", "")
