"""DeepSpeed pieces that need no process group: the config, and the weights_only state loader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.engine._train_support import make_spec
from tuneforge.common.errors import Internal
from tuneforge.engine.train.ds_runtime import SafeCheckpointEngine, deepspeed_config


@pytest.mark.parametrize(("stage", "hidden", "expected"), [(3, 64, 640), (3, None, None), (2, 64, None)])
def test_zero3_partitions_small_models(tmp_path: Path, stage: int, hidden: int | None, expected: int | None) -> None:
    spec = make_spec(tmp_path / "model", tmp_path, resources={"num_workers": 2, "zero_stage": stage})
    cfg = deepspeed_config(spec, 2, hidden)
    assert cfg["zero_optimization"].get("stage3_param_persistence_threshold") == expected
    assert cfg["train_batch_size"] == 2 * 2 * 2  # micro-batch x accumulation x workers


def test_deepspeed_state_loads_weights_only_with_its_classes(tmp_path: Path) -> None:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    path = tmp_path / "optim_states.pt"
    state = {"zero_stage": ZeroStageEnum.gradients, "loss_scaler": LossScaler(1.0),
             "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}], "exp_avg": torch.ones(4)}
    torch.save(state, path)

    loaded = SafeCheckpointEngine().load(str(path))

    assert loaded["zero_stage"] is ZeroStageEnum.gradients
    assert loaded["loss_scaler"].cur_scale == 1.0
    assert loaded["param_slice_mappings"][0]["w"].numel == 4
    assert torch.equal(loaded["exp_avg"], torch.ones(4))


@dataclass
class Payload:
    """Stands for any class outside the allowed list (unpickling it could run code)."""

    command: str


def test_other_classes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload("rm -rf /")}, path)
    with pytest.raises(Internal, match="Payload"):
        SafeCheckpointEngine().load(str(path))


@dataclass
class PickledAs:
    """Pickles as ``func(*args)``: how Python 3.11.0-3.11.2 pickle Enum members (``getattr(cls, name)``)."""

    func: Any
    args: tuple[Any, ...]

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


def test_enum_members_pickled_by_name_as_python_3_11_2_does_load(tmp_path: Path) -> None:
    # Debian 12's Python 3.11.2 (the images) writes ZeroStageEnum.gradients as
    # GLOBAL builtins.getattr, GLOBAL ZeroStageEnum, 'gradients', REDUCE: resuming a ZeRO-2 job there
    # failed on "builtins.getattr" before _enum_member stood in for it.
    from deepspeed.runtime.zero.config import ZeroStageEnum

    path = tmp_path / "optim_states.pt"
    torch.save({"zero_stage": PickledAs(getattr, (ZeroStageEnum, "gradients")), "exp_avg": torch.ones(2)}, path)
    assert "builtins.getattr" in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))

    loaded = SafeCheckpointEngine().load(str(path))

    assert loaded["zero_stage"] is ZeroStageEnum.gradients
    assert torch.equal(loaded["exp_avg"], torch.ones(2))


@pytest.mark.parametrize(
    "target, name",
    [
        ("loss_scaler", "__init__"),  # an allowed class that is not an Enum
        ("zero_stage", "__class__"),  # an allowed Enum, but not one of its members
        ("zero_stage", "_member_map_"),
        ("member", "__init__"),  # chained: getattr on what an allowed getattr returned
    ],
)
def test_getattr_is_refused_beyond_enum_members(tmp_path: Path, target: str, name: str) -> None:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    member = PickledAs(getattr, (ZeroStageEnum, "gradients"))
    obj = {"loss_scaler": LossScaler, "zero_stage": ZeroStageEnum, "member": member}[target]
    path = tmp_path / "evil.pt"
    torch.save({"x": PickledAs(getattr, (obj, name))}, path)
    with pytest.raises(Internal, match=r"builtins\.getattr"):
        SafeCheckpointEngine().load(str(path))
