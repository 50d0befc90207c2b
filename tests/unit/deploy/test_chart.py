"""The Helm chart, rendered and linted offline with Helm's own engine (helm-python-sdk)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy._chart import (
    ACCESS_KEY,
    CHART,
    DB_URL,
    KUBE_VERSION,
    RAY_TOKEN,
    SECRET_KEY,
    SECRET_VALUES,
    SERVICES,
    TOKEN,
    by_name,
    container,
    of_kind,
    pod_environment,
    render,
    secret_data,
    valid_values,
)
from tuneforge.checkpoints.settings import CheckpointSettings
from tuneforge.common.settings import ServiceSettings, load_settings
from tuneforge.datasets.app import DatasetSettings
from tuneforge.evaluation.settings import EvaluationSettings
from tuneforge.training.settings import TrainingSettings

helm_python = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (the chart tests need it)")


def test_chart_lints_clean_in_strict_mode() -> None:
    report = helm_python.lint(CHART, valid_values(), strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_each_service_has_deployment_service_and_pdb() -> None:
    docs = render(valid_values())
    for svc in SERVICES:
        name = f"tf-tuneforge-{svc}"
        deploy = by_name(docs, "Deployment", name)
        c = container(deploy)
        assert c["command"] == ["python", "-m", f"tuneforge.{svc}"]
        # datasets has its own image (no torch); the other three share the ml image.
        assert c["image"] == ("tuneforge-datasets:0.1.0" if svc == "datasets" else "tuneforge-ml:0.1.0")
        assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
        service = by_name(docs, "Service", name)
        assert service["spec"]["ports"][0]["port"] == 50051
        assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
        pdb = by_name(docs, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"] == deploy["spec"]["selector"]["matchLabels"]
    assert len(of_kind(docs, "ServiceAccount")) == 1


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probes_are_native_grpc_on_the_service_port(probe: str) -> None:
    # Without the gate the service serves the service port itself.
    for deploy in of_kind(render(valid_values(gate={"enabled": False})), "Deployment"):
        c = container(deploy)
        assert c[probe]["grpc"] == {"port": 50051}, deploy["metadata"]["name"]
        assert c["ports"] == [{"name": "grpc", "containerPort": 50051, "protocol": "TCP"}]
    # Behind the gate (the default) the kubelet probes the service on its inner port.
    for deploy in of_kind(render(valid_values()), "Deployment"):
        c = container(deploy)
        assert c[probe]["grpc"] == {"port": 50052}, deploy["metadata"]["name"]
        assert c["ports"] == [{"name": "grpc-service", "containerPort": 50052, "protocol": "TCP"}]


def test_pods_run_non_root_read_only_without_service_links() -> None:
    for deploy in of_kind(render(valid_values()), "Deployment"):
        pod = deploy["spec"]["template"]["spec"]
        c = container(deploy)
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        # Service links would inject TUNEFORGE_<SVC>_PORT variables, which load_settings refuses.
        assert pod["enableServiceLinks"] is False
        assert pod["automountServiceAccountToken"] is False
        # Every writable path is an emptyDir: /tmp and TUNEFORGE_DATA_DIR.
        mounts = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
        assert mounts == {"/tmp", "/var/lib/tuneforge/data"}
        assert pod["terminationGracePeriodSeconds"] > 20  # longer than TUNEFORGE_GRACE_PERIOD_S


def test_no_secret_value_outside_secrets() -> None:
    values = valid_values(rayCluster={"enabled": True, "auth": {"token": RAY_TOKEN}})
    docs = render(values)
    encoded = {base64.b64encode(v.encode()).decode() for v in SECRET_VALUES}
    for doc in docs:
        text = json.dumps(doc)
        if doc["kind"] == "Secret":
            continue
        leaked = [v for v in (*SECRET_VALUES, *encoded) if v in text]
        assert not leaked, f"{doc['kind']} {doc['metadata']['name']} contains secret material"
    secrets = {s["metadata"]["name"]: secret_data(s) for s in of_kind(docs, "Secret")}
    assert secrets == {
        "tf-tuneforge-auth": {"tokens": f"acme:{TOKEN}"},
        "tf-tuneforge-s3": {"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY},
        "tf-tuneforge-database": {"url": DB_URL},
        "tf-tuneforge-ray": {"token": RAY_TOKEN},
    }


def test_existing_secrets_are_referenced_not_created() -> None:
    values = {
        "auth": {"existingSecret": "my-auth", "existingSecretKey": "pairs"},
        "objectStore": {"endpoint": "s3.example.com", "bucket": "tuneforge", "existingSecret": "my-s3"},
        "database": {"existingSecret": "my-db"},
    }
    docs = render(values)
    assert of_kind(docs, "Secret") == []
    volumes = {v["name"]: v["secret"] for v in
               by_name(docs, "Deployment", "tf-tuneforge-training")["spec"]["template"]["spec"]["volumes"]
               if "secret" in v}
    assert volumes["auth"]["secretName"] == "my-auth"
    assert volumes["auth"]["items"] == [{"key": "pairs", "path": "tokens"}]
    assert volumes["s3"]["secretName"] == "my-s3"
    assert volumes["database"]["secretName"] == "my-db"


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ({"auth": {"tokens": ""}}, "auth: no tokens. Set auth.existingSecret"),
        ({"objectStore": {"endpoint": ""}}, "objectStore.endpoint is required"),
        ({"objectStore": {"bucket": ""}}, "objectStore.bucket is required"),
        ({"objectStore": {"secretKey": ""}}, "objectStore: no credentials. Set objectStore.existingSecret"),
        ({"database": {"url": ""}}, "database: no PostgreSQL URL. Set database.existingSecret"),
        ({"rayCluster": {"enabled": True}}, "rayCluster.auth: no Ray token"),
        ({"models": {"existingClaim": "llms", "persistence": {"enabled": True}}},
         "models: set models.existingClaim"),
    ],
)
def test_missing_credentials_fail_rendering_with_the_value_to_set(drop: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message.replace(".", r"\.")):
        render(valid_values(**drop))


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicas": 3}, "at '': additional properties 'replicas' not allowed"),
        ({"services": {"training": {"replica": 2}}}, "at '/services/training': additional properties 'replica'"),
        ({"services": {"training": {"enabled": True, "replicas": 65}}}, "/services/training/replicas"),
        ({"objectStore": {"password": "x"}}, "at '/objectStore': additional properties 'password'"),
        ({"settings": {"logLevel": "verbose"}}, "/settings/logLevel"),
        ({"objectStore": {"bucket": "Not_A_Bucket"}}, "/objectStore/bucket"),
        ({"database": {"url": "mysql://u@h/db"}}, "/database/url"),
        ({"models": {"path": "/data"}}, "at '/models': additional properties 'path'"),
        ({"models": {"persistence": {"accessModes": ["ReadWriteSometimes"]}}}, "/models/persistence/accessModes"),
    ],
)
def test_schema_rejects_unknown_keys_and_bad_values(values: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=where.replace("/", r"\/").replace("'", ".")):
        render(valid_values(**values))


def test_configmap_keys_are_real_settings() -> None:
    cm = by_name(render(valid_values()), "ConfigMap", "tf-tuneforge-settings")
    fields = {f"TUNEFORGE_{n.upper()}" for n in ServiceSettings.model_fields}
    unknown = [k for k in cm["data"] if k not in fields and k.removesuffix("_FILE") not in fields]
    assert unknown == []


# Each service's own settings class, as its __main__ loads it.
SETTINGS_CLASSES: dict[str, type[ServiceSettings]] = {
    "datasets": DatasetSettings, "training": TrainingSettings,
    "evaluation": EvaluationSettings, "checkpoints": CheckpointSettings,
}


@pytest.mark.parametrize("svc", SERVICES)
def test_rendered_environment_loads_into_service_settings(svc: str, tmp_path: Path) -> None:
    env = pod_environment(render(valid_values()), svc, tmp_path)
    settings = load_settings(SETTINGS_CLASSES[svc], environ=env)
    assert settings.service_name == svc
    # Its own port is the gate's backend; peers are called on their Services' port (their gates).
    assert (settings.host, settings.port) == ("0.0.0.0", 50052)
    ungated = load_settings(SETTINGS_CLASSES[svc], environ=pod_environment(
        render(valid_values(gate={"enabled": False})), svc, tmp_path / "ungated"))
    assert (ungated.host, ungated.port) == ("0.0.0.0", 50051)
    assert settings.object_store_uri == "s3://tuneforge/prod?endpoint=minio.storage.svc:9000&secure=false"
    assert settings.s3_access_key.get_secret_value() == ACCESS_KEY
    assert settings.s3_secret_key.get_secret_value() == SECRET_KEY
    assert settings.resolved_database_url() == DB_URL
    assert settings.auth_tokens.get_secret_value() == f"acme:{TOKEN}"
    assert settings.auth_disabled is False and settings.log_json is True
    assert settings.models_dir == Path("/models")
    assert {peer: getattr(settings, f"{peer}_address") for peer in SERVICES} == {
        peer: f"tf-tuneforge-{peer}.tuneforge.svc:50051" for peer in SERVICES}


def test_auth_disabled_mounts_no_token_and_says_so(tmp_path: Path) -> None:
    docs = render(valid_values(auth={"disabled": True, "tokens": ""}))
    assert "tf-tuneforge-auth" not in {s["metadata"]["name"] for s in of_kind(docs, "Secret")}
    settings = load_settings(ServiceSettings, environ=pod_environment(docs, "training", tmp_path))
    assert settings.auth_disabled is True


def test_network_policy_admits_release_pods_and_named_callers() -> None:
    caller = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "clients"}}}
    docs = render(valid_values(networkPolicy={"ingressFrom": [caller]}))
    (policy,) = of_kind(docs, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "tuneforge",
                                                  "app.kubernetes.io/instance": "tf"}
    assert spec["ingress"][1] == {"from": [caller], "ports": [{"port": 50051, "protocol": "TCP"}]}
    dns = [r for r in spec["egress"] if {"port": 53, "protocol": "UDP"} in r.get("ports", [])]
    assert len(dns) == 1
