"""How the chart wires the four services together: peer addresses, one token Secret, one object
store and one base-models volume shared by every pod."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.deploy._chart import CHART, SERVICES, by_name, container, of_kind, render, valid_values

helm_python = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (the chart tests need it)")


def _settings(docs: list[dict[str, Any]]) -> dict[str, str]:
    return by_name(docs, "ConfigMap", "tf-tuneforge-settings")["data"]


def _volume(deploy: dict[str, Any], mount_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The container's mount at ``mount_path`` and the pod volume behind it."""
    pod = deploy["spec"]["template"]["spec"]
    (mount,) = [m for m in container(deploy)["volumeMounts"] if m["mountPath"] == mount_path]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return mount, volume


def _deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {svc: by_name(docs, "Deployment", f"tf-tuneforge-{svc}") for svc in SERVICES}


def test_peer_addresses_resolve_to_the_service_of_each_peer() -> None:
    docs = render(valid_values(service={"port": 7443}), namespace="ml")
    data = _settings(docs)
    for peer in SERVICES:
        host, _, port = data[f"TUNEFORGE_{peer.upper()}_ADDRESS"].rpartition(":")
        name, namespace, suffix = host.split(".")
        assert (namespace, suffix) == ("ml", "svc"), host
        service = by_name(docs, "Service", name)
        assert service["spec"]["ports"][0]["port"] == int(port) == 7443
        # The Service selects exactly that peer's pods.
        labels = by_name(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == peer
        assert service["spec"]["selector"].items() <= labels.items()
    # Every service reads its settings from that one ConfigMap, so every service knows every peer.
    for deploy in _deployments(docs).values():
        assert container(deploy)["envFrom"] == [{"configMapRef": {"name": "tf-tuneforge-settings"}}]


def test_a_disabled_service_has_no_address() -> None:
    data = _settings(render(valid_values(services={"checkpoints": {"enabled": False}})))
    assert "TUNEFORGE_CHECKPOINTS_ADDRESS" not in data
    assert data["TUNEFORGE_DATASETS_ADDRESS"] == "tf-tuneforge-datasets.tuneforge.svc:50051"


def test_every_service_mounts_the_same_auth_secret_and_object_store() -> None:
    docs = render(valid_values())
    data = _settings(docs)
    assert data["TUNEFORGE_AUTH_TOKENS_FILE"] == "/var/run/secrets/tuneforge/auth/tokens"
    assert data["TUNEFORGE_OBJECT_STORE_URI"].startswith("s3://tuneforge/prod?")
    auth = set()
    for deploy in _deployments(docs).values():
        mount, volume = _volume(deploy, "/var/run/secrets/tuneforge/auth")
        assert mount["readOnly"] is True
        auth.add((volume["secret"]["secretName"], str(volume["secret"]["items"])))
        # No per-service override of the shared settings.
        names = {e["name"] for e in container(deploy).get("env", [])}
        assert not names & {"TUNEFORGE_AUTH_TOKENS_FILE", "TUNEFORGE_OBJECT_STORE_URI", "TUNEFORGE_MODELS_DIR"}
    assert auth == {("tf-tuneforge-auth", str([{"key": "tokens", "path": "tokens"}]))}
    assert len([s for s in of_kind(docs, "Secret") if "tokens" in (s.get("data") or {})]) == 1


@pytest.mark.parametrize(
    ("models", "claim"),
    [
        ({}, None),
        ({"existingClaim": "llms", "subPath": "hf"}, "llms"),
        ({"persistence": {"enabled": True, "storageClassName": "nfs", "size": "500Gi"}}, "tf-tuneforge-models"),
    ],
)
def test_every_service_mounts_the_same_models_volume_read_only(models: dict[str, Any], claim: str | None) -> None:
    docs = render(valid_values(models=models))
    assert _settings(docs)["TUNEFORGE_MODELS_DIR"] == "/models"
    seen = []
    for deploy in _deployments(docs).values():
        mount, volume = _volume(deploy, "/models")
        assert mount["readOnly"] is True and mount.get("subPath") == models.get("subPath")
        seen.append({k: v for k, v in volume.items() if k != "name"})
    assert all(v == seen[0] for v in seen)
    if claim is None:
        assert seen[0] == {"emptyDir": {"sizeLimit": "1Gi"}}
    else:
        assert seen[0] == {"persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    pvcs = of_kind(docs, "PersistentVolumeClaim")
    if models.get("persistence"):
        (pvc,) = pvcs
        assert pvc["metadata"]["name"] == claim
        assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert pvc["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "nfs",
                               "resources": {"requests": {"storage": "500Gi"}}}
    else:
        assert pvcs == []


@pytest.mark.parametrize(("models", "warns"), [({}, True), ({"existingClaim": "llms"}, False)])
def test_notes_warn_when_models_are_an_empty_dir(models: dict[str, Any], warns: bool) -> None:
    with helm_python.Chart.load(CHART) as chart:
        files = chart.render(valid_values(models=models), name="tf", namespace="tuneforge", is_install=True)
    notes = next(text for name, text in files.items() if name.endswith("NOTES.txt"))
    assert ("WARNING: no models volume" in notes) is warns
    assert ("PersistentVolumeClaim llms" in notes) is not warns
