"""Optional reporters: off by default, TensorBoard writes the loss scalars, missing libraries are
named with the fix, and a broken reporter does not stop training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.unit.engine._train_support import make_spec
from tuneforge.common.errors import FailedPrecondition, InvalidInput
from tuneforge.engine.__main__ import main
from tuneforge.engine.api import ReporterConfig, ReporterKind, run_training
from tuneforge.engine.train.events import EngineEvent, EventKind
from tuneforge.engine.train.reporters import build_reporter, fan_out


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``log_dir``, read back with tensorboardX's proto."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    files = sorted(log_dir.rglob("events.out.tfevents.*"))
    assert files, f"no event file under {log_dir}"
    for path in files:
        data, pos = path.read_bytes(), 0
        while pos < len(data):  # TFRecord: length (8), crc (4), payload, crc (4)
            length = int.from_bytes(data[pos : pos + 8], "little")
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 16 + length
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_tensorboard_reporter_writes_loss(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(tiny_model_dir, tmp_path, hyperparameters={"max_steps": 3},
                     data={"validation_split_ratio": 0.25, "max_seq_length": 64})
    events: list[EngineEvent] = []
    board = tmp_path / "tb"
    run_training(spec, on_event=events.append,
                 reporters=[ReporterConfig(ReporterKind.TENSORBOARD, "run", log_dir=board)])

    scalars = _scalars(board / "run")
    losses = [m.metrics["loss"] for m in events if m.kind is EventKind.STEP]
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx(losses, rel=1e-6)
    assert {"train/lr", "train/grad_norm", "eval/eval_loss"} <= set(scalars)


def test_no_reporter_by_default(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    spec_file = tmp_path / "job.yaml"
    spec = make_spec(tiny_model_dir, tmp_path, hyperparameters={"max_steps": 1})
    import yaml

    spec_file.write_text(yaml.safe_dump(spec.resolved_dict()))
    assert main(["--config", str(spec_file)]) == 0
    assert not list(tmp_path.rglob("events.out.tfevents.*")) and not (tmp_path / "mlruns").exists()
    assert not (tmp_path / "wandb").exists()


def test_the_specs_integrations_report_from_the_engine_door(tiny_model_dir: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``reporting.integrations`` in a YAML run with ``python -m tuneforge.engine`` (./runs by default)."""
    import yaml

    monkeypatch.chdir(tmp_path)
    spec = make_spec(tiny_model_dir, tmp_path, hyperparameters={"max_steps": 2},
                     reporting={"integrations": [{"kind": "tensorboard", "run_name": "board"}]})
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(spec.resolved_dict()))
    assert main(["--config", str(spec_file)]) == 0
    assert [s for s, _ in _scalars(tmp_path / "runs" / "board")["train/loss"]] == [1, 2]


@pytest.mark.parametrize(("kind", "module"), [(ReporterKind.MLFLOW, "mlflow"), (ReporterKind.WANDB, "wandb")])
def test_missing_library_is_named(tmp_path: Path, kind: ReporterKind, module: str) -> None:
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed here")
    with pytest.raises(FailedPrecondition, match=f"pip install {module}"):
        build_reporter(ReporterConfig(kind, "run", log_dir=tmp_path))


def test_tensorboard_needs_a_folder() -> None:
    with pytest.raises(InvalidInput, match="log_dir"):
        build_reporter(ReporterConfig(ReporterKind.TENSORBOARD, "run"))


def test_failing_reporter_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def __call__(self, event: EngineEvent) -> None:
            raise OSError("disk full")

        def close(self) -> None: ...

    seen: list[EngineEvent] = []
    emit = fan_out(seen.append, [Broken()])
    assert emit is not None
    emit(EngineEvent(EventKind.STEP, 1, {"loss": 1.0}))
    assert len(seen) == 1 and "Broken failed" in caplog.text
