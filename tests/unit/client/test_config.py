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
        "model": {"name": "m"}, "tenant": "ignored", "output": {"checkpoint_uri": "file:///x", "run_name": "ignored"},
        "data": {"mixture": [{"source": {"dataset_version": "dsv_a"}, "weight": 2, "task": "qa"}], "packing": True},
        "method": {"kind": "qlora", "qlora": {"quant_type": "nf4"}}, "objective": {"kind": "sft", "dpo": {"beta": 0.2}},
        "hyperparameters": {"lr_scheduler": "cosine", "epochs": 2}, "resources": {"num_workers": 2, "zero_stage": 2},
        "schedule": {"keep_best_n": 3}, "precision": "bf16", "labels": {"team": "x"}, "suffix": "s",
        "reporting": {"integrations": [{"kind": "wandb", "project": "p", "secret": "wandb-team"}]}})
    assert req.mixture[0].weight == 2 and req.hyperparameters.packing and req.hyperparameters.qlora_quant_type == "nf4"
    assert req.objective == jobspec.tr.OBJECTIVE_SFT and req.hyperparameters.dpo_beta == 0.2
    assert req.hyperparameters.lr_scheduler == jobspec.tr.LR_SCHEDULER_COSINE and req.resources.zero_stage == 2
    assert req.hyperparameters.precision == jobspec.tr.PRECISION_BF16 and req.labels["team"] == "x"
    assert req.integrations[0].kind == jobspec.tr.INTEGRATION_KIND_WANDB and req.integrations[0].secret == "wandb-team"
    minimal = jobspec.to_request({"model": {"name": "m"}, "data": {"train": {"dataset_version": "dsv_a"}}})
    assert (minimal.method, minimal.objective) == (jobspec.tr.METHOD_LORA, jobspec.tr.OBJECTIVE_SFT)  # spec defaults
    with pytest.raises(errors.InvalidArgument) as info:
        jobspec.to_request({"method": {"kind": "lorax"}, "hyperparameters": {"lr": 1, "max_steps": "many"},
                            "data": {"assistant_only_loss": False, "train": {"path": "rows.jsonl"}},
                            "reporting": {"integrations": [{"kind": "tensorboard", "api_key": "sk-x"}]}})
    by_field = {v.field: v.description for v in info.value.violations}
    assert set(by_field) == {"model", "method.kind", "hyperparameters.lr", "hyperparameters.max_steps",
                             "data.assistant_only_loss", "data.train.path", "reporting.integrations[0].api_key"}
    assert "learning_rate" in by_field["hyperparameters.lr"]
    assert "engine-only" in by_field["data.assistant_only_loss"] and "upload it first" in by_field["data.train.path"]


def _spec_fields() -> list[tuple[str, str]]:
    """(spec field, CreateJob field) of every row of docs/training-spec.md that a request can set."""
    from pathlib import Path

    doc = Path(__file__).resolve().parents[3] / "docs" / "training-spec.md"
    rows = [[c.strip().strip("`") for c in line.split("|")[1:3]] for line in doc.read_text().splitlines()
            if line.startswith("| `")]
    return [(spec, api) for spec, api in rows if api]


# What a field needs beside it to be valid (its method or objective chosen, a ZeRO stage, ...).
_COMPANIONS = {"method.qlora": {"method.kind": "qlora"}, "method.prefix": {"method.kind": "prefix"},
               "method.prompt": {"method.kind": "prompt"}, "method.lora": {"method.kind": "lora"},
               "objective.dpo": {"objective.kind": "dpo"}, "objective.orpo": {"objective.kind": "orpo"},
               "objective.simpo": {"objective.kind": "simpo"},
               "resources.offload_optimizer": {"resources.zero_stage": 2},
               "resources.offload_params": {"resources.zero_stage": 3},
               "schedule.early_stopping_patience": {"schedule.eval_every_steps": 2},
               "reporting.integrations[]": {"reporting.integrations[].kind": "tensorboard"},
               # Online RL needs a reward; each built-in reward takes only its own parameter.
               "objective.rl": {"objective.kind": "grpo", "objective.rl.rewards[].name": "exact_match"},
               "objective.rl.rewards[].pattern": {"objective.rl.rewards[].name": "regex"},
               "objective.rl.rewards[].target_length": {"objective.rl.rewards[].name": "length"}}


def _value_for(path: str) -> object:
    """A valid, non-default value of a spec field, from its type and bounds."""

    import annotated_types as at

    from tuneforge.engine.spec import TrainingSpec
    from tuneforge.training.reference import _enum_in, _fields

    info = dict(_fields(TrainingSpec))[path]
    kinds = _enum_in(info.annotation)
    if path == "objective.kind":  # the last kinds (online RL) need rewards and prompt data beside them
        return "simpo"
    if kinds is not None:
        return next(k.value for k in reversed(list(kinds)) if k != info.default and k.value != "fp16")
    ann = str(info.annotation)
    if "bool" in ann:
        return not info.default
    if "list" in ann:
        return ["q_proj", "v_proj"]
    if "str" in ann:
        return {"model.name": "tiny-base", "schedule.best_metric": "eval_perplexity"}.get(
            path, "wandb-team" if path.endswith("secret") else "dsv_x" if "dataset_version" in path else "run-1")
    bounds = {type(m): m for m in info.metadata if isinstance(m, at.Gt | at.Ge | at.Lt | at.Le)}
    for candidate in ((16, 2) if "int" in ann else (0.25, 0.05)):
        ok = all(m.gt < candidate if isinstance(m, at.Gt) else m.ge <= candidate if isinstance(m, at.Ge)
                 else m.lt > candidate if isinstance(m, at.Lt) else m.le >= candidate for m in bounds.values())
        if ok and candidate != info.default:
            return candidate
    raise AssertionError(f"no test value for {path}")


def _put(doc: dict, path: str, value: object) -> None:
    from tuneforge.training.convert import _put as put

    put(doc, path.replace("[]", "[0]"), value)


def _get(obj: object, path: str) -> object:
    for part in path.replace("[]", "[0]").split("."):
        name, _, index = part.partition("[")
        obj = obj[name] if isinstance(obj, dict) else getattr(obj, name)
        if index:
            obj = obj[int(index[:-1])]
    return obj


@pytest.mark.parametrize(("spec_field", "api_field"), _spec_fields())
def test_every_documented_field_is_settable_from_yaml_and_round_trips(spec_field, api_field):
    """Every spec field the reference gives a CreateJob name: YAML -> request (non-zero there) -> the
    service's own reading of the request (``convert.job_request``) gives the YAML's value back."""
    from tuneforge.training import convert

    doc: dict = {"model": {"name": "tiny-base"}}
    if not spec_field.startswith(("data.train", "data.mixture")):
        _put(doc, "data.train.dataset_version", "dsv_train")
    for prefix, extra in _COMPANIONS.items():
        if (spec_field == prefix or spec_field.startswith(prefix + ".")) and spec_field not in extra:
            for path, value in extra.items():
                _put(doc, path, value)
    if spec_field.startswith("data.mixture") and not spec_field.endswith("dataset_version"):
        _put(doc, "data.mixture[].source.dataset_version", "dsv_mix")
    value = _value_for(spec_field)
    _put(doc, spec_field, value)
    req = jobspec.to_request(doc)
    assert _get(req, api_field), f"{api_field} was not set from {spec_field}"
    assert _get(convert.job_request(req).spec, spec_field) == value


def test_the_example_files_parse():
    from pathlib import Path

    from tuneforge.cli.datasets import load_pipeline
    from tuneforge.datasets.v1 import datasets_pb2 as ds

    root = Path(__file__).resolve().parents[3] / "examples"
    req = jobspec.load(root / "job.yaml")
    assert req.base_model == "smollm2-135m" and req.hyperparameters.max_steps == 200 and req.labels["team"] == "support"
    assert [i.kind for i in req.integrations] == [jobspec.tr.INTEGRATION_KIND_TENSORBOARD]
    pipeline = load_pipeline(root / "pipeline.yaml", ds.IngestCuration)
    assert [s.WhichOneof("step") for s in pipeline.steps] == ["normalize", "exact_dedup", "near_dedup", "pii",
                                                              "quality_filter"]
    assert pipeline.split.validation_ratio == 0.1
    with pytest.raises(errors.InvalidArgument, match="not a curation pipeline"):
        load_pipeline(root / "job.yaml", ds.IngestCuration)
