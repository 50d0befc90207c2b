"""Client configuration: arguments > environment > profile > local stack; doctests of the SDK run here."""

from __future__ import annotations

import doctest

import pytest

from tuneforge.client import ClientConfig, ConfigError, config, errors, jobspec


@pytest.mark.parametrize("module", [config, errors, jobspec])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def _profile(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_precedence_arguments_then_environment_then_profile(tmp_path):
    (tmp_path / "tok").write_text("from-file\n")
    path = _profile(tmp_path, f"""
default_profile: prod
profiles:
  prod: {{address: "gw:443", tls: true, token_file: "{tmp_path / 'tok'}", timeout_s: 5}}
  local: {{base_port: 60000, token: abc}}
""")
    cfg = ClientConfig.load(environ={}, config_file=path)
    assert set(cfg.addresses.values()) == {"gw:443"} and cfg.tls and cfg.token == "from-file" and cfg.timeout_s == 5
    cfg = ClientConfig.load(environ={"TUNEFORGE_PROFILE": "local"}, config_file=path)
    assert cfg.addresses["checkpoints"] == "127.0.0.1:60003" and cfg.token == "abc" and not cfg.tls
    cfg = ClientConfig.load(environ={"TUNEFORGE_TOKEN": "env", "TUNEFORGE_EVALUATION_ADDRESS": "ev:1"},
                            config_file=path)
    assert cfg.token == "env" and cfg.addresses["evaluation"] == "ev:1" and cfg.addresses["datasets"] == "gw:443"
    cfg = ClientConfig.load(token="arg", address="one:1", environ={"TUNEFORGE_TOKEN": "env"}, config_file=path)
    assert cfg.token == "arg" and cfg.addresses["evaluation"] == "one:1"
    assert "token" not in str(cfg.describe()).replace("'token': 'set'", "")


@pytest.mark.parametrize(("text", "environ", "message"), [
    ("profiles: {a: {}}", {"TUNEFORGE_PROFILE": "b"}, "no profile 'b'"),
    ("profiles: {a: {adress: x}}", {"TUNEFORGE_PROFILE": "a"}, "unknown keys ['adress']"),
    ("profiles: {a: {token_file: /nonexistent/t}}", {"TUNEFORGE_PROFILE": "a"}, "does not exist"),
])
def test_bad_profiles_say_what_to_fix(tmp_path, text, environ, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ClientConfig.load(environ=environ, config_file=_profile(tmp_path, text))


def test_missing_config_file_with_a_profile_named_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no config file"):
        ClientConfig.load(environ={"TUNEFORGE_PROFILE": "x"}, config_file=tmp_path / "none.yaml")


def test_jobspec_maps_every_section_and_reports_all_problems():
    req = jobspec.to_request({
        "model": {"name": "m"}, "tenant": "ignored", "output": {"run_name": "ignored"},
        "data": {"mixture": [{"source": {"dataset_version": "dsv_a"}, "weight": 2, "task": "qa"}], "packing": True},
        "method": {"kind": "qlora", "qlora": {"quant_type": "nf4"}}, "objective": {"kind": "dpo", "dpo": {"beta": 0.2}},
        "hyperparameters": {"lr_scheduler": "cosine", "epochs": 2}, "resources": {"num_workers": 2, "zero_stage": 2},
        "schedule": {"keep_best_n": 3}, "precision": "bf16", "labels": {"team": "x"}, "suffix": "s"})
    assert req.mixture[0].weight == 2 and req.hyperparameters.packing and req.hyperparameters.qlora_quant_type == "nf4"
    assert req.objective == jobspec.tr.OBJECTIVE_DPO and req.hyperparameters.dpo_beta == 0.2
    assert req.hyperparameters.lr_scheduler == jobspec.tr.LR_SCHEDULER_COSINE and req.resources.zero_stage == 2
    assert req.hyperparameters.precision == jobspec.tr.PRECISION_BF16 and req.labels["team"] == "x"
    with pytest.raises(errors.InvalidArgument) as info:
        jobspec.to_request({"method": {"kind": "lorax"}, "hyperparameters": {"lr": 1, "max_steps": "many"}})
    fields = {v.field for v in info.value.violations}
    assert fields == {"model.name", "data.train", "method.kind", "hyperparameters.lr", "hyperparameters.max_steps"}


def test_the_example_files_parse():
    from pathlib import Path

    from tuneforge.cli.datasets import load_pipeline
    from tuneforge.datasets.v1 import datasets_pb2 as ds

    root = Path(__file__).resolve().parents[3] / "examples"
    req = jobspec.load(root / "job.yaml")
    assert req.base_model == "smollm2-135m" and req.hyperparameters.max_steps == 200 and req.labels["team"] == "support"
    pipeline = load_pipeline(root / "pipeline.yaml", ds.IngestCuration)
    assert [s.WhichOneof("step") for s in pipeline.steps] == ["normalize", "exact_dedup", "near_dedup", "pii",
                                                              "quality_filter"]
    assert pipeline.split.validation_ratio == 0.1
    with pytest.raises(errors.InvalidArgument, match="not a curation pipeline"):
        load_pipeline(root / "job.yaml", ds.IngestCuration)
