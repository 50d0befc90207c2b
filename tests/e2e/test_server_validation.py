"""`helm install --dry-run=server` against a real API server: every shipped values file is
accepted, and deliberate mistakes the chart's schema cannot see are rejected by the server, with
the server's own message.

The mistakes are planted in a copy of the chart's templates (the values schema would stop them
client-side, before the server is asked): the point is that the server, not helm, validates the
rendered objects, including the RayCluster against KubeRay's CRD schema.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e.cluster import CHART, ROOT, Kube, unique_namespace

pytestmark = pytest.mark.e2e

# The default values need credentials: name Secrets (they need not exist for a dry run).
DEFAULT_ARGS = ["--set", "auth.existingSecret=tf-auth", "--set", "objectStore.endpoint=minio.storage.svc:9000",
                "--set", "objectStore.bucket=tuneforge", "--set", "objectStore.existingSecret=tf-s3",
                "--set", "database.existingSecret=tf-db"]
VALUES_FILES = {
    "values.yaml": DEFAULT_ARGS,
    "values-dev.yaml": ["-f", str(CHART / "values-dev.yaml")],
    "values-gpu.yaml": ["-f", str(CHART / "values-gpu.yaml")],
    # An overlay on the dev profile (deploy/kind/up.sh installs both).
    "deploy/kind/values-kind.yaml": ["-f", str(CHART / "values-dev.yaml"),
                                     "-f", str(ROOT / "deploy" / "kind" / "values-kind.yaml")],
}
DEV = ["-f", str(CHART / "values-dev.yaml")]


@pytest.fixture(scope="module")
def namespace(kube: Kube) -> Iterator[str]:
    """A namespace of its own (a server-side dry run needs one that exists)."""
    ns = unique_namespace("tf-dryrun")
    kube.kubectl("create", "namespace", ns)
    yield ns
    kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="module")
def raycluster_crd(kube: Kube) -> None:
    if not kube.has_api("ray.io/v1", "RayCluster"):
        pytest.fail("the cluster has no RayCluster CRD (ray.io/v1): install the KubeRay operator (make cluster-up does)")


def _dry_run(kube: Kube, namespace: str, chart: Path, args: list[str]) -> tuple[int, str]:
    proc = kube.helm("install", "tf", str(chart), "-n", namespace, "--dry-run=server", *args, check=False, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", list(VALUES_FILES))
def test_every_shipped_values_file_passes_server_side_validation(kube: Kube, namespace: str, raycluster_crd: None,
                                                                  name: str) -> None:
    rc, out = _dry_run(kube, namespace, CHART, VALUES_FILES[name])
    assert rc == 0, out
    manifest = out.split("MANIFEST:", 1)[-1].split("NOTES:", 1)[0]
    kinds = {d["kind"] for d in yaml.safe_load_all(manifest) if isinstance(d, dict) and "kind" in d}
    assert {"Deployment", "Service", "ConfigMap"} <= kinds, kinds
    if name in ("values-dev.yaml", "values-gpu.yaml"):
        assert "RayCluster" in kinds


def test_gateway_routes_pass_server_side_validation(kube: Kube, namespace: str) -> None:
    if not kube.has_api("gateway.networking.k8s.io/v1", "GRPCRoute"):
        pytest.skip("the cluster serves no Gateway API (GRPCRoute CRD not installed)")
    rc, out = _dry_run(kube, namespace, CHART, [*DEFAULT_ARGS, "--set", "gateway.enabled=true",
                                                "--set", "gateway.parentRefs[0].name=public",
                                                "--set", "gateway.hosts.training=training.example.com"])
    assert rc == 0, out


def _plant(old: str, new: str, template: str) -> Callable[[Path], None]:
    def patch(chart: Path) -> None:
        path = chart / "templates" / template
        text = path.read_text()
        assert old in text, f"{template} no longer contains {old!r}: update this test"
        path.write_text(text.replace(old, new, 1))
    return patch


# (planted mistake, the server's message): each only the API server can catch.
MISTAKES = {
    "unknown RayCluster field": (
        _plant("  rayVersion: {{ $r.rayVersion | quote }}",
               "  rayVersion: {{ $r.rayVersion | quote }}\n  headGroupSpecs: {}", "raycluster.yaml"),
        r"headGroupSpecs|unknown field|field not declared in schema"),
    'Deployment replicas "two"': (
        _plant("  replicas: {{ $cfg.replicas }}", '  replicas: "two"', "services.yaml"),
        r"replicas.*(expected|int|numeric|cannot unmarshal|got string)|(expected|cannot unmarshal).*replicas"),
    'RayCluster worker replicas "two"': (
        _plant("      replicas: {{ $g.replicas }}", '      replicas: "two"', "raycluster.yaml"),
        r"replicas.*(integer|int32|expected|got string)|(integer|expected).*replicas"),
    "container port out of range": (
        _plant("              containerPort: {{ $port }}", "              containerPort: 70000", "services.yaml"),
        r"containerPort.*(must be between 1 and 65535|Invalid value)"),
    "malformed memory quantity": (
        _plant("  emptyDir: {sizeLimit: {{ .Values.models.emptyDirSizeLimit }}}",
               "  emptyDir: {sizeLimit: 1Gigabyte}", "_helpers.tpl"),
        r"quantities must match the regular expression|sizeLimit"),
    "Service name not a DNS label": (
        _plant("  name: {{ $fullname }}-{{ $svc }}\n  labels:\n    {{- include \"tuneforge.labels\" $root | nindent 4 }}\n"
               "    app.kubernetes.io/component: {{ $svc }}\nspec:\n  type:",
               "  name: {{ $fullname }}_{{ $svc }}\n  labels:\n    {{- include \"tuneforge.labels\" $root | nindent 4 }}\n"
               "    app.kubernetes.io/component: {{ $svc }}\nspec:\n  type:", "services.yaml"),
        r"(a DNS-1035 label|Invalid value).*_"),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_the_server_rejects_a_planted_mistake_with_its_message(kube: Kube, namespace: str, raycluster_crd: None,
                                                               tmp_path: Path, mistake: str) -> None:
    plant, message = MISTAKES[mistake]
    chart = tmp_path / "tuneforge"
    shutil.copytree(CHART, chart)
    plant(chart)
    rc, out = _dry_run(kube, namespace, chart, DEV)
    assert rc != 0, f"the server accepted {mistake}:\n{out[-3000:]}"
    assert re.search(message, out, re.I | re.S), f"{mistake}: unexpected message:\n{out[-3000:]}"
    # The message comes from the API server's validation, not from helm's schema check.
    assert "values don't meet the specifications of the schema" not in out
    print(f"server rejected {mistake}: {out.strip().splitlines()[-1][:400]}")
