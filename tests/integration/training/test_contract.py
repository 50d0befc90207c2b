"""One contract from API to engine: CreateJob's numbers are range-checked by the spec, named in API
terms, and the API and the engine's own door resolve the same YAML to the same spec."""

from __future__ import annotations

import io
import json
import math
import secrets
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf.descriptor import FieldDescriptor

from tests.integration.training.conftest import upload_and_split
from tuneforge.common import db
from tuneforge.common.grpc.client import channel
from tuneforge.common.grpc.interceptors import bad_request_violations
from tuneforge.common.settings import load_settings
from tuneforge.engine.__main__ import main as engine_main
from tuneforge.training import convert
from tuneforge.training.adapters.sql import SqlJobRepository
from tuneforge.training.app import build_app as build_training
from tuneforge.training.settings import TrainingSettings
from tuneforge.training.v1 import training_pb2 as tr
from tuneforge.training.v1 import training_pb2_grpc as tr_grpc

pytestmark = [pytest.mark.integration]

_INT32 = (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32)
_NUMERIC = (*_INT32, FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64, FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT)


# Fields whose range is signed on purpose (a reward's weight may be negative: a penalty); -1 is valid there,
# -2^62 is not.
_SIGNED = {"hyperparameters.reward_functions[].weight", "hyperparameters.reward_model_weight"}


def _bad_values(api: str, f: FieldDescriptor) -> list[float]:
    """NaN/inf (floats), -1 (-2^62 for signed ranges), and the largest the wire type holds up to 2^62."""
    negative = -float(2**62) if api in _SIGNED else -1.0
    if f.cpp_type in (FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT):
        return [math.nan, math.inf, -math.inf, negative, float(2**62)]
    return [int(negative), 2**31 - 1 if f.cpp_type in _INT32 else 2**62]


NUMERIC_CASES = [pytest.param(api, value, id=f"{api}={value}")
                 for api, f in convert.API_FIELDS.items() if f.cpp_type in _NUMERIC and f.enum_type is None
                 for value in _bad_values(api, f)]


def _request_with(api: str, value: float) -> tuple[tr.CreateJobRequest, str]:
    """A good request with one numeric field set to ``value``; returns it and the field's API name."""
    req = tr.CreateJobRequest(base_model="tiny", method=tr.METHOD_LORA, objective=tr.OBJECTIVE_SFT)
    if api.startswith("mixture[]."):
        component = tr.TaskMixture(dataset_version_id="dsv_1", weight=1.0)
        setattr(component, api.removeprefix("mixture[]."), value)
        req.mixture.append(component)
        return req, api.replace("[]", "[0]")
    req.dataset_version_id = "dsv_1"
    if api.startswith("hyperparameters.reward_functions[]."):  # one reward whose parameter is under test
        name = api.removeprefix("hyperparameters.reward_functions[].")
        reward = tr.RewardFunction(name="length" if name == "target_length" else "exact_match")
        if name == "target_length":
            reward.target_length = 20
        setattr(reward, name, value)
        req.objective = tr.OBJECTIVE_GRPO
        req.hyperparameters.reward_functions.append(reward)
        return req, api.replace("[]", "[0]")
    section, _, name = api.rpartition(".")
    setattr(getattr(req, section) if section else req, name, value)
    return req, api


@pytest.fixture(scope="module")
def training(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real training server (no peers: CreateJob answers INVALID_ARGUMENT before it needs them)."""
    token = secrets.token_urlsafe(24)
    settings = load_settings(TrainingSettings, environ={}, port=0, data_dir=tmp_path_factory.mktemp("training"),
                             auth_tokens=f"acme:{token}", grace_period_s=1.0)
    server = build_training(settings)
    yield tr_grpc.TrainingServiceStub(channel(server.address, token, default_timeout=30))
    server.stop(0.5)


def test_the_table_covers_every_numeric_field_of_create_job() -> None:
    names = {case.values[0] for case in NUMERIC_CASES}
    assert {"hyperparameters.learning_rate", "hyperparameters.weight_decay", "hyperparameters.max_grad_norm",
            "hyperparameters.lora_alpha", "hyperparameters.dpo_beta", "hyperparameters.seed",
            "resources.num_workers", "hyperparameters.max_seq_length", "mixture[].weight"} <= names


@pytest.mark.parametrize(("api", "value"), NUMERIC_CASES)
def test_every_numeric_field_has_a_range_and_refuses_nan_inf(training: Any, api: str, value: float) -> None:
    req, field = _request_with(api, value)
    with pytest.raises(grpc.RpcError) as info:
        training.CreateJob(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    violations = dict(bad_request_violations(info.value))
    assert field in violations, violations


def test_operator_caps_come_from_settings(tmp_path: Path, make_service: Any) -> None:
    handle = make_service(TrainingSettings, build_training, train_max_workers=2)
    stub = tr_grpc.TrainingServiceStub(handle.channel())
    req = tr.CreateJobRequest(base_model="tiny", method=tr.METHOD_LORA, objective=tr.OBJECTIVE_SFT,
                              dataset_version_id="dsv_1", resources=tr.Resources(num_workers=3))
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateJob(req)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = dict(bad_request_violations(info.value))
    assert "TUNEFORGE_TRAIN_MAX_WORKERS" in violations["resources.num_workers"]


JOB_YAML = """
tenant: acme
model: {{name: tiny-base}}
data:
  train: {{dataset_version: {version}}}
  validation: {{dataset_version: {version}, split: validation}}
method: {{kind: lora, lora: {{r: 8}}}}
objective: {{kind: sft}}
hyperparameters: {{max_steps: 4, warmup_ratio: 0.1}}
schedule: {{eval_every_steps: 2}}
output: {{checkpoint_uri: "file:///unused", checkpoint_prefix: tenants/acme/checkpoints/, run_name: from-yaml}}
"""


def test_the_api_and_the_engine_cli_resolve_one_yaml_to_the_same_spec(cluster: Any, tmp_path: Path) -> None:
    acme = cluster.stack("acme")
    version_id = upload_and_split(acme)
    config = tmp_path / "job.yaml"
    config.write_text(JOB_YAML.format(version=version_id))

    out = io.StringIO()
    with redirect_stdout(out):
        assert engine_main(["--config", str(config), "--dry-run"]) == 0
    from_cli = json.loads(out.getvalue())

    request = convert.request_from_spec(yaml.safe_load(config.read_text()))
    job = acme.training.CreateJob(request).job
    acme.training.CancelJob(tr.CancelJobRequest(job_id=job.id))
    engine = db.create_db_engine(cluster.training.settings.resolved_database_url())
    try:
        from_api = SqlJobRepository(db.make_sessionmaker(engine)).get("acme", job.id).spec.resolved_dict()
    finally:
        engine.dispose()

    # The service owns where checkpoints go and pins each version in the store; the rest is the same job.
    assert from_api.pop("output")["run_name"] == job.id
    from_cli.pop("output")
    for api_side, cli_side in ((from_api["model"], from_cli["model"]), *(
            (from_api["data"][slot], from_cli["data"][slot]) for slot in ("train", "validation"))):
        pinned = {k: api_side.pop(k) for k in ("store_uri", "manifest_key", "manifest_sha256")}
        assert pinned["manifest_key"].endswith("/MANIFEST.json") and len(pinned["manifest_sha256"]) == 64
        assert {k: cli_side.pop(k) for k in pinned} == dict.fromkeys(pinned)
    assert from_api == from_cli
    assert job.hyperparameters.learning_rate == from_cli["hyperparameters"]["learning_rate"]
