"""Offline rendering helpers for the tuneforge Helm chart (helm-python-sdk: Helm's engine, no cluster)."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "helm" / "tuneforge"
KIND_VALUES = ROOT / "deploy" / "kind" / "values-kind.yaml"
KUBE_VERSION = "1.30.0"
SERVICES = ("datasets", "training", "evaluation", "checkpoints")

# Distinctive values, so that a test can prove where they do (Secrets) and do not (anywhere else) appear.
TOKEN = "tok-7f3a9c1e5b2d4f6a8c0e1b3d"
ACCESS_KEY = "AKIA-ACCESS-51c2e9d7"
SECRET_KEY = "s3-secret-9e8d7c6b5a4f3e2d1c0b"
DB_PASSWORD = "pg-pw-4b6d8f0a2c4e6a8c"
DB_URL = f"postgresql+psycopg://tuneforge:{DB_PASSWORD}@pg.db.svc:5432/tuneforge"
RAY_TOKEN = "ray-token-0a1b2c3d4e5f6a7b8c9d"
SECRET_VALUES = (TOKEN, ACCESS_KEY, SECRET_KEY, DB_PASSWORD, RAY_TOKEN)


def valid_values(**overrides: Any) -> dict[str, Any]:
    """Values that satisfy every required setting, with secrets given inline (the chart makes Secrets)."""
    values: dict[str, Any] = {
        "auth": {"tokens": f"acme:{TOKEN}"},
        "objectStore": {"endpoint": "minio.storage.svc:9000", "bucket": "tuneforge", "prefix": "prod",
                        "secure": False, "accessKey": ACCESS_KEY, "secretKey": SECRET_KEY},
        "database": {"url": DB_URL},
    }
    return merge(values, overrides)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base`` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def render(values: dict[str, Any], release: str = "tf", namespace: str = "tuneforge") -> list[dict[str, Any]]:
    """Render the chart as ``helm install`` would and return its Kubernetes objects."""
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        files = chart.render(values, name=release, namespace=namespace, is_install=True)
    docs: list[dict[str, Any]] = []
    for name, text in sorted(files.items()):
        if name.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The objects of one kind."""
    return [d for d in docs if d["kind"] == kind]


def by_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` called ``name``."""
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {[d['metadata']['name'] for d in of_kind(docs, kind)]}"
    return found[0]


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's decoded data."""
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def kind_values() -> dict[str, Any]:
    """deploy/kind/values-kind.yaml as a dict."""
    return yaml.safe_load(KIND_VALUES.read_text())


def container(deploy: dict[str, Any]) -> dict[str, Any]:
    """The service's container of a Deployment's pod (the first; the overload gate's, when on, is beside it)."""
    containers = deploy["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers[1:]] in ([], ["gate"]), [c["name"] for c in containers]
    return containers[0]


def gate_container(deploy: dict[str, Any]) -> dict[str, Any] | None:
    """The overload gate's container of a service's pod, None when the gate is off."""
    gates = [c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "gate"]
    return gates[0] if gates else None


def pod_environment(docs: list[dict[str, Any]], svc: str, secrets_root: Path) -> dict[str, str]:
    """What the kubelet would give the container: ConfigMap env, plain env, and secret files.

    Secret volumes are materialised under ``secrets_root`` (their mount paths re-rooted there) from
    the rendered Secrets, following each volume's ``items`` exactly as the kubelet does.
    """
    deploy = by_name(docs, "Deployment", f"tf-tuneforge-{svc}")
    pod, c = deploy["spec"]["template"]["spec"], container(deploy)
    env: dict[str, str] = {}
    for src in c["envFrom"]:
        env.update(by_name(docs, "ConfigMap", src["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    secrets = {s["metadata"]["name"]: secret_data(s) for s in of_kind(docs, "Secret")}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in c["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if not secret:
            continue
        for item in secret["items"]:
            path = secrets_root / mount["mountPath"].lstrip("/") / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets[secret["secretName"]][item["key"]])
    return {k: str(secrets_root / v.lstrip("/")) if k.endswith("_FILE") else v for k, v in env.items()}
