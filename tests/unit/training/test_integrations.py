"""Job integrations: secrets as Kubernetes mounts them, per tenant; every problem named with the fix;
the job shows the secret's name only; the metrics file's records."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tuneforge.engine.spec import IntegrationKind, load_spec
from tuneforge.training import convert
from tuneforge.training.adapters.files import DirIntegrationSecrets
from tuneforge.training.domain.integrations import integration_violations
from tuneforge.training.domain.model import EventKind, Job, JobEvent, JobStatus
from tuneforge.training.v1 import training_pb2 as tr

OWNED = {"tenant": "acme", "output": {"checkpoint_uri": "file:///x", "run_name": "job_1"}}


def _mount(root: Path, tenant: str, name: str, **keys: str) -> None:
    """A Secret volume as the kubelet writes it: files are links into a timestamped ``..data`` folder."""
    folder = root / tenant / name
    data = folder / "..2026_12_06_11_00_00.1"
    data.mkdir(parents=True)
    for key, value in keys.items():
        (data / key).write_text(value + "\n")
    os.symlink(data.name, folder / "..data")
    for key in keys:
        os.symlink(f"..data/{key}", folder / key)


@pytest.fixture
def secrets(tmp_path: Path) -> DirIntegrationSecrets:
    _mount(tmp_path, "acme", "wandb-team", WANDB_API_KEY="k-secret-1", WANDB_BASE_URL="https://wandb.example")
    _mount(tmp_path, "acme", "mlflow-team", MLFLOW_TRACKING_URI="https://mlflow.example")
    _mount(tmp_path, "acme", "wandb-nokey", WANDB_ENTITY="team")
    _mount(tmp_path, "acme2", "wandb-other", WANDB_API_KEY="k-secret-2")
    return DirIntegrationSecrets(tmp_path)


def test_secrets_are_read_per_tenant_from_kubernetes_mounts(secrets: DirIntegrationSecrets) -> None:
    assert secrets.names("acme") == {"wandb-team", "mlflow-team", "wandb-nokey"}
    assert secrets.names("acme2") == {"wandb-other"} and secrets.names("nobody") == frozenset()
    assert secrets.read("acme", "wandb-team") == {"WANDB_API_KEY": "k-secret-1", "WANDB_BASE_URL": "https://wandb.example"}
    assert DirIntegrationSecrets(None).names("acme") == frozenset()
    assert secrets.installed(IntegrationKind.TENSORBOARD)


class _Installed(DirIntegrationSecrets):
    """The same secrets where every reporter library is installed (to test the secret checks alone)."""

    def installed(self, kind: IntegrationKind) -> bool:
        return True


@pytest.mark.parametrize(("integration", "field", "expected"), [
    ({"kind": "wandb"}, "secret", "is required for wandb"),
    ({"kind": "wandb", "secret": "wandb-other"}, "secret", "no integration secret named 'wandb-other'"),
    ({"kind": "wandb", "secret": "wandb-nokey"}, "secret", "has no WANDB_API_KEY"),
    ({"kind": "mlflow", "secret": "wandb-team"}, "secret", "has no MLFLOW_TRACKING_URI"),
    ({"kind": "tensorboard", "secret": "wandb-team"}, "secret", "takes no secret"),
])
def test_each_problem_is_named_with_the_fix(secrets: DirIntegrationSecrets, integration: dict, field: str,
                                            expected: str) -> None:
    spec = load_spec({"model": {"name": "m"}, "data": {"train": {"dataset_version": "dsv_1"}},
                      "reporting": {"integrations": [integration]}, **OWNED})
    found = integration_violations(spec, _Installed(secrets._root))
    assert [v.field for v in found] == [f"reporting.integrations[0].{field}"] and expected in found[0].description
    assert all("k-secret" not in v.description for v in found)
    assert convert.api_field(found[0].field) == f"integrations[0].{field}"


@pytest.mark.parametrize(("integration", "ok"), [({"kind": "tensorboard"}, True),
                                                 ({"kind": "wandb", "secret": "wandb-team"}, True),
                                                 ({"kind": "mlflow", "secret": "mlflow-team"}, True)])
def test_good_integrations_pass(secrets: DirIntegrationSecrets, integration: dict, ok: bool) -> None:
    spec = load_spec({"model": {"name": "m"}, "data": {"train": {"dataset_version": "dsv_1"}},
                      "reporting": {"integrations": [integration]}, **OWNED})
    assert (integration_violations(spec, _Installed(secrets._root)) == []) is ok


def test_a_missing_library_is_refused_naming_the_package(secrets: DirIntegrationSecrets) -> None:
    class Bare(DirIntegrationSecrets):
        def installed(self, kind: IntegrationKind) -> bool:
            return kind is IntegrationKind.TENSORBOARD

    spec = load_spec({"model": {"name": "m"}, "data": {"train": {"dataset_version": "dsv_1"}},
                      "reporting": {"integrations": [{"kind": "wandb", "secret": "wandb-team"}]}, **OWNED})
    (found,) = integration_violations(spec, Bare(secrets._root))
    assert found.field == "reporting.integrations[0].kind" and "pip install wandb" in found.description


def test_the_job_shows_integrations_by_secret_name_and_its_files() -> None:
    req = tr.CreateJobRequest(base_model="m", method=tr.METHOD_LORA, objective=tr.OBJECTIVE_SFT,
                              dataset_version_id="dsv_1", integrations=[
                                  tr.Integration(kind=tr.INTEGRATION_KIND_TENSORBOARD),
                                  tr.Integration(kind=tr.INTEGRATION_KIND_WANDB, project="p", secret="wandb-team")])
    spec = load_spec({**convert.job_request(req).spec, **OWNED})
    job = convert.job_to_proto(Job("job_1", "acme", spec, JobStatus.QUEUED, datetime.now(UTC), "job_1"))
    assert [(i.kind, i.project, i.secret) for i in job.integrations] == [  # as resolved: defaults filled in
        (tr.INTEGRATION_KIND_TENSORBOARD, "tuneforge", ""), (tr.INTEGRATION_KIND_WANDB, "p", "wandb-team")]
    assert job.metrics_file == "tenants/acme/jobs/job_1/metrics.jsonl"
    assert job.tensorboard_logdir == "tenants/acme/jobs/job_1/tensorboard/"
    assert convert.request_from_spec(spec.resolved_dict()).integrations[1].project == "p"


def test_a_metrics_record_has_every_metrics_field_by_its_api_name() -> None:
    event = JobEvent(7, datetime(2026, 12, 6, tzinfo=UTC), EventKind.METRICS,
                     {"step": 3.0, "loss": 1.5, "lr": 1e-3, "tokens_per_s": 100.0})
    record = convert.metrics_record(event)
    assert record["sequence"] == 7 and record["time"] == "2026-12-06T00:00:00Z"
    assert record["loss"] == 1.5 and record["learning_rate"] == 1e-3 and record["tokens_per_second"] == 100.0
    assert set(tr.Metrics.DESCRIPTOR.fields_by_name) <= set(record)
