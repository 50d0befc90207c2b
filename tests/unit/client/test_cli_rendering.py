"""The CLI's renderers without servers: JSON shape, errors with their fixes, the watch view, charts."""

from __future__ import annotations

import json

import pytest

from tuneforge.cli._output import Output, emit, render_error, sparkline, to_data
from tuneforge.cli.watch import WatchState
from tuneforge.client.errors import FieldViolation, InvalidArgument
from tuneforge.training.v1 import training_pb2 as tr


@pytest.mark.parametrize(("values", "expected"), [
    ([1.0, 2.0, 3.0, 4.0], "▁▃▆█"), ([2.0, 2.0], "▁▁"), ([], ""), ([float("nan"), 1.0], "▁")])
def test_sparkline(values, expected):
    assert sparkline(values) == expected


def test_json_has_every_field_with_proto_names_and_null_for_unset_messages(capsys):
    job = tr.Job(id="job_1", status=tr.JOB_STATUS_RUNNING, trained_tokens=2**40)
    emit(Output.json, [job])
    (doc,) = json.loads(capsys.readouterr().out)
    assert set(doc) == {f.name for f in tr.Job.DESCRIPTOR.fields}
    assert doc["status"] == "JOB_STATUS_RUNNING" and doc["trained_tokens"] == 2**40 and doc["error"] is None
    assert doc["create_time"] is None and doc["hyperparameters"] is None and doc["labels"] == {}
    nested = to_data(tr.Job(hyperparameters=tr.Hyperparameters(lora_r=4)))
    assert nested["hyperparameters"]["lora_r"] == 4 and nested["hyperparameters"]["lora_target_modules"] == []


def test_errors_list_each_field_with_its_fix(capsys):
    exc = InvalidArgument("2 bad fields", violations=[FieldViolation("a.b", "must be > 0"),
                                                      FieldViolation("c", "unknown key; known: d")])
    render_error(exc, Output.table)
    text = capsys.readouterr().err
    assert "INVALID_ARGUMENT" in text and "• a.b: must be > 0" in text and "• c: unknown key; known: d" in text
    render_error(exc, Output.json)
    body = json.loads(capsys.readouterr().err)["error"]
    assert body["violations"] == [{"field": "a.b", "description": "must be > 0"},
                                  {"field": "c", "description": "unknown key; known: d"}]


def test_watch_state_follows_the_events():
    view = WatchState("job_1", total=4)
    lines = [view.apply(e) for e in (
        tr.JobEvent(sequence=1, status=tr.JOB_STATUS_RUNNING),
        tr.JobEvent(sequence=2, metrics=tr.Metrics(step=1, loss=2.0, tokens_per_second=100)),
        tr.JobEvent(sequence=3, metrics=tr.Metrics(step=2, loss=1.0)),
        tr.JobEvent(sequence=4, metrics=tr.Metrics(step=2, eval_loss=1.5)),
        tr.JobEvent(sequence=5, checkpoint_id="ckpt_a"),
        tr.JobEvent(sequence=6, log=tr.LogEntry(message="hello")))]
    assert lines == ["status RUNNING", "step 1/4 loss 2.0000", "step 2/4 loss 1.0000", "step 2 eval_loss 1.5000",
                     "checkpoint ckpt_a at step 2", None]
    assert view.step == 2 and view.loss == 1.0 and view.eval_loss == 1.5 and view.tokens_per_s == 100
    assert view.losses == [2.0, 1.0] and view.checkpoints == ["ckpt_a"] and view.last_log == "hello"
    assert view.eta() != "-"


def test_job_chart_marks_every_element():
    from tuneforge.cli.report import _svg, job_figure

    steps = [tr.Metrics(step=i, loss=3.0 / i, learning_rate=1e-3, tokens_per_second=50) for i in range(1, 7)]
    svg = _svg(job_figure(steps, [tr.Metrics(step=3, eval_loss=1.2)], [(3, "ckpt_a"), (6, "ckpt_b")]))
    for gid in ("loss-curve", "eval-loss-curve", "lr-curve", "tokens-curve", "checkpoint-0", "checkpoint-1"):
        assert f'id="{gid}"' in svg
    assert 'id="reward-curve"' not in svg  # a supervised job has no reward


def test_an_online_rl_job_chart_adds_the_reward_curve():
    from tuneforge.cli.report import _svg, job_figure

    steps = [tr.Metrics(step=i, loss=0.1, learning_rate=1e-3, tokens_per_second=50, reward_mean=-50.0 + 3 * i,
                        response_length=12.0) for i in range(1, 7)]
    svg = _svg(job_figure(steps, [], [(6, "ckpt_a")]))
    for gid in ("reward-curve", "loss-curve", "lr-curve", "tokens-curve", "checkpoint-0"):
        assert f'id="{gid}"' in svg


def test_config_set_profile_keeps_the_token_out_of_argv(tmp_path, monkeypatch, capsys):
    import io

    from tuneforge.cli.__main__ import main
    from tuneforge.client import ClientConfig

    config = tmp_path / "cfg" / "config.yaml"
    monkeypatch.setenv("TUNEFORGE_CONFIG", str(config))
    for var in ("TUNEFORGE_TOKEN", "TUNEFORGE_ADDRESS", "TUNEFORGE_PROFILE", "TUNEFORGE_TLS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["config", "set-profile", "prod", "--address", "gw:443", "--tls", "--token-stdin"]) == 0
    assert main(["config", "set-profile", "local", "--base-port", "60000"]) == 0  # not the default: prod stays
    token_file = config.parent / "prod.token"
    assert token_file.read_text() == "s3cret" and token_file.stat().st_mode & 0o777 == 0o600
    assert "s3cret" not in config.read_text()
    cfg = ClientConfig.load(config_file=None)
    assert cfg.token == "s3cret" and cfg.tls and set(cfg.addresses.values()) == {"gw:443"}
    capsys.readouterr()
    assert main(["-o", "json", "--profile", "local", "config", "show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["addresses"]["training"] == "127.0.0.1:60001" and "profile local" in shown["source"]
