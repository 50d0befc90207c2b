"""The chart against a real API server: every shipped values file renders with `helm install
--dry-run=server` and the API server accepts every object of it; deliberate mistakes the chart's
values schema cannot see are rejected with the server's own message.

Found here: `helm install --dry-run=server` (helm v4.3.2) renders against the cluster (`lookup`
works) but does not send the objects to the API server: a planted `replicas: "two"` passes it. So
each test hands the manifest helm's server dry run produced to the API server as a server-side
dry-run create (`kubectl apply --dry-run=server`, strict field validation): the server decodes,
validates (OpenAPI and KubeRay's CRD schema, then admission: names, ranges, quantities) and discards.

The mistakes are planted in a copy of the chart's templates (the values schema would stop them
before the server is asked).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

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
    """`helm install --dry-run=server`, then the API server's dry-run create of its manifest."""
    proc = kube.helm("install", "tf", str(chart), "-n", namespace, "--dry-run=server", *args, check=False, timeout=300)
    if proc.returncode != 0:
        return proc.returncode, proc.stdout + proc.stderr
    manifest = proc.stdout.split("\nMANIFEST:\n", 1)[-1].split("\nNOTES:\n", 1)[0]
    applied = kube.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-", stdin=manifest, check=False)
    return applied.returncode, f"{applied.stdout}{applied.stderr}\n--- helm:\n{proc.stdout}"


@pytest.mark.parametrize("name", list(VALUES_FILES))
def test_every_shipped_values_file_passes_server_side_validation(kube: Kube, namespace: str, raycluster_crd: None,
                                                                  name: str) -> None:
    rc, out = _dry_run(kube, namespace, CHART, VALUES_FILES[name])
    assert rc == 0, out
    created = re.findall(r"^(\S+)/(\S+) created \(server dry run\)$", out, re.M)
    kinds = {k.split(".")[0] for k, _ in created}
    assert {"deployment", "service", "configmap"} <= kinds, out
    assert "Next steps:" in out  # NOTES rendered
    if name != "values.yaml":
        assert ("raycluster", "tf-tuneforge-ray") in {(k.split(".")[0], n) for k, n in created}, out


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


# (planted mistake, the server's message): unknown fields and wrong types, which the server's schemas
# catch (its OpenAPI, KubeRay's CRD schema for the RayCluster). The chart's values schema never sees these.
SCHEMA_MISTAKES = {
    "unknown RayCluster field": (
        _plant("  rayVersion: {{ $r.rayVersion | quote }}",
               "  rayVersion: {{ $r.rayVersion | quote }}\n  headGroupSpecs: {}", "raycluster.yaml"),
        r'unknown field "spec\.headGroupSpecs"'),
    'Deployment replicas "two"': (
        _plant("  replicas: {{ $cfg.replicas }}", '  replicas: "two"', "services.yaml"),
        r"cannot unmarshal string into Go struct field DeploymentSpec\.spec\.replicas of type int32"),
    'RayCluster worker replicas "two"': (
        _plant("      replicas: {{ $g.replicas }}", '      replicas: "two"', "raycluster.yaml"),
        r"spec\.workerGroupSpecs\[0\]\.replicas in body must be of type integer"),
    "unknown pod spec field": (
        _plant("      enableServiceLinks: false\n      terminationGracePeriodSeconds",
               "      enableServiceLinks: false\n      restartPolicyy: Always\n      terminationGracePeriodSeconds",
               "services.yaml"),
        r'unknown field "spec\.template\.spec\.restartPolicyy"'),
}
# Semantic rules of the API server's validation (names, ranges, quantities).
ADMISSION_MISTAKES = {
    "container port out of range": (
        _plant("              containerPort: {{ $port }}", "              containerPort: 70000", "services.yaml"),
        r"containerPort: Invalid value: 70000: must be between 1 and 65535"),
    "Service name not a DNS label": (
        _plant("  name: {{ $fullname }}-{{ $svc }}\n  labels:\n    {{- include \"tuneforge.labels\" $root | nindent 4 }}\n"
               "    app.kubernetes.io/component: {{ $svc }}\nspec:\n  type:",
               "  name: {{ $fullname }}_{{ $svc }}\n  labels:\n    {{- include \"tuneforge.labels\" $root | nindent 4 }}\n"
               "    app.kubernetes.io/component: {{ $svc }}\nspec:\n  type:", "services.yaml"),
        r"Service \"tf-tuneforge_datasets\" is invalid: metadata.name: Invalid value"),
    "malformed memory quantity": (
        _plant("  emptyDir: {sizeLimit: {{ .Values.models.emptyDirSizeLimit }}}",
               "  emptyDir: {sizeLimit: 1Gigabyte}", "_helpers.tpl"),
        r"quantities must match the regular expression"),
}


def _planted_chart(tmp_path: Path, plant: Callable[[Path], None]) -> Path:
    chart = tmp_path / "tuneforge"
    shutil.copytree(CHART, chart)
    plant(chart)
    return chart


@pytest.mark.parametrize("mistake", [*SCHEMA_MISTAKES, *ADMISSION_MISTAKES])
def test_the_server_rejects_a_planted_mistake_with_its_message(kube: Kube, namespace: str, raycluster_crd: None,
                                                               tmp_path: Path, mistake: str) -> None:
    plant, message = {**SCHEMA_MISTAKES, **ADMISSION_MISTAKES}[mistake]
    rc, out = _dry_run(kube, namespace, _planted_chart(tmp_path, plant), DEV)
    assert rc != 0, f"the server accepted {mistake}:\n{out[-3000:]}"
    # The API server's answer ("Error from server ..." or "The <Kind> "<name>" is invalid: ..."):
    # kubectl's own client-side validation is off for a server dry run with strict field validation.
    assert "Error from server" in out or re.search(r'^The \S+ "[^"]+" is invalid', out, re.M), out[-3000:]
    assert re.search(message, out, re.S), f"{mistake}: unexpected message:\n{out[-3000:]}"
    said = [line for line in out.splitlines() if re.search(message, line)]
    print(f"\nrejected {mistake}: {said[0][:400] if said else ''}")


def test_helm_dry_run_alone_does_not_reach_the_api_server(kube: Kube, namespace: str, tmp_path: Path) -> None:
    """Why the tests above hand the manifest to the server: helm's server dry run accepted a mistake.

    If this starts failing, helm validates server-side by itself now, which is fine: delete this test.
    """
    plant, _ = SCHEMA_MISTAKES['Deployment replicas "two"']
    proc = kube.helm("install", "tf", str(_planted_chart(tmp_path, plant)), "-n", namespace, "--dry-run=server", *DEV,
                     check=False, timeout=300)
    assert proc.returncode == 0 and 'replicas: "two"' in proc.stdout, proc.stderr
