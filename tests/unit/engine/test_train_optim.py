"""Weight decay groups: matrices are decayed, biases, norms and 1-D tensors are not, under ZeRO-3 too."""

from __future__ import annotations

import torch

from tuneforge.engine.train.optim import param_groups


def _param(*shape: int) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(*shape))


def test_matrices_decay_and_biases_norms_vectors_do_not() -> None:
    params = {"mlp.weight": _param(4, 4), "mlp.bias": _param(4), "input_layernorm.weight": _param(4),
              "frozen.weight": _param(4, 4)}
    params["frozen.weight"].requires_grad_(False)
    decay, no_decay = param_groups(params.items(), 0.1)
    assert decay["weight_decay"] == 0.1 and decay["params"] == [params["mlp.weight"]]
    assert no_decay["weight_decay"] == 0.0 and no_decay["params"] == [params["mlp.bias"], params["input_layernorm.weight"]]


def test_a_zero3_partition_is_grouped_by_its_real_shape() -> None:
    # Under ZeRO-3 a worker holds an empty 1-D slice; DeepSpeed keeps the full shape in ds_shape.
    partitioned = _param(0)
    partitioned.ds_shape = torch.Size([64, 64])  # type: ignore[attr-defined]
    bias = _param(0)
    bias.ds_shape = torch.Size([64])  # type: ignore[attr-defined]
    groups = param_groups([("mlp.weight", partitioned), ("mlp.bias", bias)], 0.1)
    assert [(g["weight_decay"], g["params"]) for g in groups] == [(0.1, [partitioned]), (0.0, [bias])]
