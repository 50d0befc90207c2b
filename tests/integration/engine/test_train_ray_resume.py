"""Resume on 2 Ray workers under DeepSpeed ZeRO-2 and ZeRO-3: DeepSpeed's optimizer state comes back,
and (ZeRO-2) a worker that dies mid-run is restarted by Ray and the run finishes from the latest
checkpoint.

Both are compared with one uninterrupted run (module fixture): the same loss at every step and the
same learning-rate curve. Without the Adam moments and fp32 master weights of step 3, the update of
step 4 differs and the losses of steps 5 and 6 with it. One Ray session serves the module.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.engine._train_support import make_spec
from tuneforge.common.errors import InvalidInput
from tuneforge.engine.api import run_training
from tuneforge.engine.spec import LrScheduler, TrainingSpec
from tuneforge.engine.train import _artifacts
from tuneforge.engine.train.checkpoint import CheckpointManager
from tuneforge.engine.train.events import EngineEvent, EventKind, RunStatus
from tuneforge.engine.train.faults import FAULT_ENV
from tuneforge.engine.train.optim import lr_curve

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 6


@pytest.fixture(scope="module", autouse=True)
def _ray_session():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _spec(model_dir: Path, tmp: Path, run_name: str, max_failures: int = 0, stage: int = 2) -> TrainingSpec:
    return make_spec(
        model_dir, tmp, method="full",
        resources={"num_workers": 2, "zero_stage": stage, "object_store_memory_mb": 300, "max_failures": max_failures},
        hyperparameters={"max_steps": STEPS, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                         "learning_rate": 2e-3, "lr_scheduler": "cosine", "warmup_steps": 2},
        schedule={"save_every_steps": 3, "keep_latest_n": 2},
        output={"checkpoint_uri": f"file://{tmp}/ckpt", "run_name": run_name},
    )


def _step_metrics(events: list[EngineEvent]) -> dict[int, dict[str, float]]:
    # A restarted attempt reports its steps again: the last report of a step wins.
    return {e.step: e.metrics for e in events if e.kind is EventKind.STEP}


@pytest.fixture(scope="module")
def stage(request: pytest.FixtureRequest) -> int:
    """The ZeRO stage of the module's reference run (tests choose it with indirect parametrization)."""
    return int(request.param)


@pytest.fixture(scope="module")
def reference(stage: int, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainingSpec, dict]:
    """An uninterrupted run at ``stage``; its spec (whose store keeps the step-3 and step-6 checkpoints)."""
    spec = _spec(tiny_model_dir, tmp_path_factory.mktemp(f"reference-zero{stage}"), "reference", stage=stage)
    events: list[EngineEvent] = []
    result = run_training(spec, on_event=events.append)
    assert result.status is RunStatus.COMPLETED and result.steps == STEPS
    steps = _step_metrics(events)
    assert sorted(steps) == list(range(1, STEPS + 1))
    return spec, steps


def _assert_same_run(got: dict[int, dict[str, float]], want: dict[int, dict[str, float]], steps: range) -> None:
    expected_lr = lr_curve(LrScheduler.COSINE, 2e-3, 2, STEPS)
    for s in steps:
        assert got[s]["lr"] == pytest.approx(expected_lr[s - 1], rel=1e-9), s
        assert got[s]["loss"] == pytest.approx(want[s]["loss"], abs=1e-5), (s, got[s]["loss"], want[s]["loss"])


# ZeRO-3 partitions the parameters too: the resumed run must put back the model weights (gathered
# on save, re-partitioned on load) and each worker's fp32 master partition and Adam moments.
@pytest.mark.parametrize("stage", [2, 3], indirect=True)
def test_resume_restores_deepspeed_optimizer_state(reference: tuple[TrainingSpec, dict]) -> None:
    spec, want = reference
    manager = CheckpointManager(spec.output.checkpoint_uri, spec.output.run_name)
    files = {e.path for e in _artifacts.read_manifest(manager.store, manager.prefix(3) + "/").files}
    optim = sorted(f for f in files if f.startswith("deepspeed/") and f.endswith("optim_states.pt"))
    assert len(optim) == 2, files  # one ZeRO partition (Adam moments, fp32 master) per worker
    assert not any(f.endswith(".py") for f in files)
    # As if the run had been killed after writing its step-3 checkpoint.
    _artifacts.delete(manager.store, manager.prefix(6))

    events: list[EngineEvent] = []
    resumed = run_training(spec, on_event=events.append)

    assert resumed.status is RunStatus.COMPLETED and resumed.steps == STEPS
    assert resumed.resumed_from_uri.endswith("/reference/step-3/")
    assert [e.kind for e in events][:2] == [EventKind.RESUMED, EventKind.STARTED]
    got = _step_metrics(events)
    assert sorted(got) == [4, 5, 6]
    _assert_same_run(got, want, range(4, STEPS + 1))


@pytest.mark.parametrize("stage", [2], indirect=True)
def test_worker_crash_restarts_group_and_resumes(
    reference: tuple[TrainingSpec, dict], tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _spec_ref, want = reference
    marker = tmp_path / "fault-fired"
    monkeypatch.setenv(FAULT_ENV, f"rank=1,step=4,marker={marker}")
    spec = _spec(tiny_model_dir, tmp_path, "crash", max_failures=1)
    events: list[EngineEvent] = []

    result = run_training(spec, on_event=events.append)

    assert marker.exists()  # rank 1 really died before step 4 on the first attempt
    assert result.status is RunStatus.COMPLETED and result.steps == STEPS
    assert result.resumed_from_uri.endswith("/crash/step-3/")
    resumed = [e for e in events if e.kind is EventKind.RESUMED]
    assert len(resumed) == 1 and resumed[0].step == 3 and resumed[0].uri == result.resumed_from_uri
    kinds = [e.kind for e in events]
    assert kinds.count(EventKind.STARTED) == 2 and kinds[-1] is EventKind.FINISHED
    _assert_same_run(_step_metrics(events), want, range(1, STEPS + 1))


# -- another worker count --------------------------------------------------------------------------


def _resized(reference: tuple[TrainingSpec, dict], tiny_model_dir: Path, tmp: Path, grad_accum: int) -> TrainingSpec:
    """A 1-worker spec whose run holds (a copy of) the 2-worker reference's step-3 checkpoint."""
    source = CheckpointManager(reference[0].output.checkpoint_uri, reference[0].output.run_name)
    spec = make_spec(
        tiny_model_dir, tmp, method="full", resources={"num_workers": 1, "zero_stage": 2},
        hyperparameters={"max_steps": STEPS, "micro_batch_size": 2, "gradient_accumulation_steps": grad_accum,
                         "learning_rate": 2e-3, "lr_scheduler": "cosine", "warmup_steps": 2},
        schedule={"save_every_steps": 3, "keep_latest_n": 2},
        output={"checkpoint_uri": f"file://{tmp}/ckpt", "run_name": "resized"},
    )
    target = CheckpointManager(spec.output.checkpoint_uri, spec.output.run_name)
    _artifacts.download(source.store, source.prefix(3), tmp / "copy")
    _artifacts.write(target.store, tmp / "copy", target.prefix(3), {"step": 3, "run_name": "resized"})
    return spec


@pytest.mark.parametrize("stage", [2], indirect=True)
def test_fewer_workers_same_batch_resumes_weights_and_reports_fresh_optimizer(
    reference: tuple[TrainingSpec, dict], tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 2 workers x 1 accumulation -> 1 worker x 2: the same 4 rows per step, in the same order.
    spec = _resized(reference, tiny_model_dir, tmp_path, grad_accum=2)
    events: list[EngineEvent] = []

    with caplog.at_level("WARNING"):
        result = run_training(spec, on_event=events.append)

    assert result.status is RunStatus.COMPLETED and result.steps == STEPS
    assert result.resumed_from_uri.endswith("/resized/step-3/")
    note = next(e.message for e in events if e.kind is EventKind.RESUMED)
    assert "written by DeepSpeed" in note and "optimizer state (Adam moments) starts fresh" in note, note
    assert note in caplog.text
    got, want = _step_metrics(events), reference[1]
    assert sorted(got) == [4, 5, 6]
    # Weights, data position and LR curve are exact: step 4's loss (before its update) is the reference's.
    _assert_same_run(got, want, range(4, 5))
    assert [got[s]["lr"] for s in (5, 6)] == pytest.approx([want[s]["lr"] for s in (5, 6)], rel=1e-9)
    # The optimizer really starts fresh (what the note says): step 4's update, hence step 5's loss, differ.
    assert abs(got[5]["loss"] - want[5]["loss"]) > 1e-4, (got[5]["loss"], want[5]["loss"])


@pytest.mark.parametrize("stage", [2], indirect=True)
def test_other_worker_count_with_other_batch_is_refused(
    reference: tuple[TrainingSpec, dict], tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = _resized(reference, tiny_model_dir, tmp_path, grad_accum=1)  # 2 rows per step instead of 4

    with pytest.raises(InvalidInput, match="num_workers") as caught:
        run_training(spec)

    assert [v.field for v in caught.value.violations] == ["resources.num_workers"]
    message = str(caught.value)
    assert "4 rows per optimizer step on 2 workers" in message and "this run takes 2" in message, message
    assert "set resources.num_workers back to 2" in message and "gradient_accumulation_steps to 2" in message
    assert CheckpointManager(spec.output.checkpoint_uri, "resized").steps() == [3]  # nothing trained or written


def test_more_workers_same_batch_resumes_weights_and_reports_fresh_optimizer(tiny_model_dir: Path, tmp_path: Path) -> None:
    # 1 worker x 2 accumulation (plain torch, no DeepSpeed state) -> 2 workers x 1 under ZeRO-3.
    one = make_spec(
        tiny_model_dir, tmp_path, method="full", resources={"num_workers": 1, "zero_stage": 3},
        hyperparameters={"max_steps": STEPS, "micro_batch_size": 2, "gradient_accumulation_steps": 2,
                         "learning_rate": 2e-3, "lr_scheduler": "cosine", "warmup_steps": 2},
        schedule={"save_every_steps": 3, "keep_latest_n": 2},
        output={"checkpoint_uri": f"file://{tmp_path}/ckpt", "run_name": "grown"},
    )
    events: list[EngineEvent] = []
    assert run_training(one, on_event=events.append).status is RunStatus.COMPLETED
    want = _step_metrics(events)
    manager = CheckpointManager(one.output.checkpoint_uri, "grown")
    _artifacts.delete(manager.store, manager.prefix(6))
    two = _spec(tiny_model_dir, tmp_path, "grown", stage=3)

    events = []
    result = run_training(two, on_event=events.append)

    assert result.status is RunStatus.COMPLETED and result.resumed_from_uri.endswith("/grown/step-3/")
    note = next(e.message for e in events if e.kind is EventKind.RESUMED)
    assert "holds no DeepSpeed optimizer state" in note and "starts fresh" in note, note
    got = _step_metrics(events)
    assert sorted(got) == [4, 5, 6]
    _assert_same_run(got, want, range(4, 5))  # weights re-partitioned, data position and LR exact
    assert [got[s]["lr"] for s in (5, 6)] == pytest.approx([want[s]["lr"] for s in (5, 6)], rel=1e-9)
    assert abs(got[5]["loss"] - want[5]["loss"]) > 1e-4, (got[5]["loss"], want[5]["loss"])
