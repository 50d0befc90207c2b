"""The whole platform for SDK and CLI tests: the four REAL gRPC services in-process on 127.0.0.1,
one ``file://`` object store, one models folder holding the tiny base model as ``tiny-base``, two
tenants. ``platform`` is started once per module; ``trained`` runs the main flow through the SDK
once per module (upload, curate with a split, a 6-step LoRA job, a base-vs-fine-tuned evaluation)
so the CLI tests can read its results.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tuneforge.common.settings import load_settings
from tuneforge.common.v1 import common_pb2

BASE = "tiny-base"
FACTS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow",
         "milk": "white", "night": "black"}
TEMPLATES = ["What colour is the {x}?", "Name the colour of the {x}.", "Tell me the colour of the {x}."]


@dataclass
class Platform:
    """Addresses and tokens of the running services."""

    addresses: dict[str, str]
    token: str
    other_token: str
    root: Path
    servers: dict[str, Any]
    restart: Any = None
    store: dict[str, Any] | None = None  # the store settings every service got

    def restart_training(self) -> None:
        """Stop the training service (its streams drop) and start it again on the same port,
        database and work folder; its unfinished jobs are re-queued and resumed."""
        self.restart("training")

    def env(self, token: str | None = None) -> dict[str, str]:
        """The client environment a user would set (one address variable per service, the token)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNEFORGE_")}
        env.update({f"TUNEFORGE_{svc.upper()}_ADDRESS": addr for svc, addr in self.addresses.items()})
        env["TUNEFORGE_TOKEN"] = token or self.token
        env["TUNEFORGE_CONFIG"] = str(self.root / "no-config.yaml")
        return env

    def client(self, token: str | None = None) -> Any:
        """An SDK client for acme (or the given token)."""
        from tuneforge.client import Client

        return Client.connect(self.addresses, token or self.token, config_file=None)


def _store(request: pytest.FixtureRequest, root: Path, mp: pytest.MonkeyPatch) -> dict[str, Any]:
    """The platform's store: a ``file://`` folder, or a fresh bucket on the real S3 server when the test
    module sets ``PLATFORM_STORE = "s3"`` (credentials also in the environment, as deployments set them
    for the training workers)."""
    if getattr(request.module, "PLATFORM_STORE", "file") != "s3":
        return {"object_store_uri": (root / "objects").as_uri()}
    from tests.fixtures.s3 import new_bucket_name

    server = request.getfixturevalue("s3_server")
    bucket = new_bucket_name()
    server.client().make_bucket(bucket)
    mp.setenv("TUNEFORGE_S3_ACCESS_KEY", server.access_key)
    mp.setenv("TUNEFORGE_S3_SECRET_KEY", server.secret_key)
    return {"object_store_uri": server.uri(bucket), "s3_access_key": server.access_key,
            "s3_secret_key": server.secret_key}


def _integration_secrets(root: Path) -> Path:
    """Integration secrets as Kubernetes mounts them: ``<dir>/<tenant>/<name>/<KEY>`` files."""
    folder = root / "integration-secrets"
    for tenant, name, key in (("acme", "mlflow-team", "MLFLOW_TRACKING_URI"), ("acme", "wandb-team", "WANDB_API_KEY"),
                              ("acme2", "wandb-other", "WANDB_API_KEY"), ("acme", "wandb-empty", "WANDB_BASE_URL")):
        (folder / tenant / name).mkdir(parents=True, exist_ok=True)
        (folder / tenant / name / key).write_text("value-never-shown\n")
    return folder


@pytest.fixture(scope="module")
def platform(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             tiny_model_dir: Path) -> Iterator[Platform]:
    """Datasets, checkpoints, training and evaluation on one store and one models folder."""
    from tuneforge.checkpoints.app import build_app as build_checkpoints
    from tuneforge.checkpoints.settings import CheckpointSettings
    from tuneforge.datasets.app import DatasetSettings
    from tuneforge.datasets.app import build_app as build_datasets
    from tuneforge.evaluation.app import build_app as build_evaluation
    from tuneforge.evaluation.settings import EvaluationSettings
    from tuneforge.training.app import build_app as build_training
    from tuneforge.training.settings import TrainingSettings

    root = tmp_path_factory.mktemp("platform")
    token, other = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    shutil.copytree(tiny_model_dir, root / "models" / BASE)
    mp = pytest.MonkeyPatch()
    shared: dict[str, Any] = {"port": 0, **_store(request, root, mp),
                              "models_dir": root / "models", "auth_tokens": f"acme:{token},acme2:{other}",
                              "grace_period_s": 1.0}
    servers: dict[str, Any] = {}
    recipes: dict[str, Any] = {}

    def start(settings_cls: type, build: Any, name: str, **extra: Any) -> str:
        settings = load_settings(settings_cls, environ={}, data_dir=root / name, **{**shared, **extra})
        servers[name] = build(settings)
        recipes[name] = (settings_cls, build, {**extra, "port": int(servers[name].address.rsplit(":", 1)[1])})
        return servers[name].address

    def restart(name: str) -> None:
        servers.pop(name).stop(2)
        settings_cls, build, extra = recipes[name]
        start(settings_cls, build, name, **extra)

    try:
        datasets = start(DatasetSettings, build_datasets, "datasets")
        checkpoints = start(CheckpointSettings, build_checkpoints, "checkpoints", hygiene_interval_s=0)
        peers = {"datasets_address": datasets, "checkpoints_address": checkpoints}
        training = start(TrainingSettings, build_training, "training", train_poll_interval_s=0.1,
                         integration_secrets_dir=_integration_secrets(root), **peers)
        evaluation = start(EvaluationSettings, build_evaluation, "evaluation", **peers)
        yield Platform({"datasets": datasets, "training": training, "evaluation": evaluation,
                        "checkpoints": checkpoints}, token, other, root, servers, restart,
                       {k: v for k, v in shared.items() if k.startswith(("object_store", "s3_"))})
    finally:
        for server in reversed(list(servers.values())):
            server.stop(0.5)
        mp.undo()


def write_rows(path: Path, *, bad_rows: bool = True) -> Path:
    """An Alpaca JSONL file with duplicates and (optionally) two invalid rows."""
    rows: list[dict[str, Any]] = [{"instruction": t.format(x=x), "input": "", "output": f"The {x} is {c}."}
                                  for x, c in FACTS.items() for t in TEMPLATES]
    rows += rows[:3]
    if bad_rows:
        rows += [{"instruction": "What colour is rust?", "input": ""}, {"instruction": "", "output": "x"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def job_spec(version_id: str, steps: int = 6, every: int = 3) -> dict[str, Any]:
    """The job YAML (as a mapping) of a small LoRA SFT job on the tiny base."""
    return {"model": {"name": BASE},
            "data": {"train": {"dataset_version": version_id}, "max_seq_length": 96},
            "method": {"kind": "lora", "lora": {"r": 8, "alpha": 16}},
            "objective": {"kind": "sft"},
            "hyperparameters": {"learning_rate": 2e-3, "max_steps": steps, "micro_batch_size": 4, "seed": 7},
            "schedule": {"eval_every_steps": every, "save_every_steps": every},
            "labels": {"suite": "client"}}


@dataclass
class Trained:
    """Results of the main flow, for tests that read them."""

    raw_version: str
    version: str
    run_id: str
    job: Any
    evaluation: Any
    events: list[Any]


@pytest.fixture(scope="module")
def trained(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Upload -> curate (split) -> LoRA job (reporting to TensorBoard) -> base-vs-fine-tuned evaluation,
    through the SDK."""
    from tuneforge.datasets.v1 import datasets_pb2 as ds
    from tuneforge.evaluation.v1 import evaluation_pb2 as ev
    from tuneforge.training.v1 import training_pb2 as tr

    work = tmp_path_factory.mktemp("trained")
    with platform.client() as c:
        up = c.upload(write_rows(work / "colours.jsonl"), "colours",
                      validation_policy=ds.VALIDATION_POLICY_SKIP_INVALID)
        run = c.wait(c.curate(up.version.id, [ds.CurationStep(exact_dedup=ds.ExactDedupStep())],
                              split=ds.SplitConfig(validation_ratio=0.2, test_ratio=0.15, seed=3)), timeout=300)
        assert run.state == common_pb2.OPERATION_STATE_SUCCEEDED, run.error.message
        events: list[Any] = []
        spec = {**job_spec(run.output_version_id), "reporting": {"integrations": [{"kind": "tensorboard"}]}}
        job = c.wait(c.create_job(spec), on_event=events.append, timeout=600)
        assert job.status == tr.JOB_STATUS_SUCCEEDED, job.error.message
        evaluation = c.wait(c.create_evaluation(ev.CreateEvaluationRequest(
            model=ev.ModelRef(checkpoint_id=job.result_checkpoint_id), baseline=ev.ModelRef(base_model=BASE),
            datasets=[ev.EvalDataset(version_id=run.output_version_id, split="test", max_samples=6)],
            metrics=[ev.METRIC_PERPLEXITY, ev.METRIC_ROUGE],
            generation=ev.GenerationConfig(max_new_tokens=8, batch_size=6))), timeout=600)
        assert evaluation.state == common_pb2.OPERATION_STATE_SUCCEEDED, evaluation.error.message
    return Trained(up.version.id, run.output_version_id, run.id, job, evaluation, events)


@pytest.fixture
def cli(platform: Platform, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``cli(*argv, stdin=None) -> (exit code, stdout, stderr)`` as acme."""
    for key, value in platform.env().items():
        if key.startswith("TUNEFORGE_"):
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        from tuneforge.cli.__main__ import main

        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def ok_json(cli: Any, *argv: str) -> Any:
    """The JSON document a command prints with ``-o json`` (which must exit 0)."""
    code, out, err = cli("-o", "json", *argv)
    assert code == 0, out + err
    return json.loads(out)
