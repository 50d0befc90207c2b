"""DeepSpeed pieces that need no process group: the config, and the weights_only state loader."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
