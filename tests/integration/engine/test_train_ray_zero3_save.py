"""ZeRO-3 on 2 Ray workers: the weights a checkpoint holds are exactly the trained parameters.

The workers run the engine's own pieces (model loading under ``HfDeepSpeedConfig``, the DeepSpeed
runtime, the loop, the checkpoint manager); after training, rank 0 gathers every partitioned
parameter with ``deepspeed.zero.GatheredParameters`` and writes that snapshot, which the test
compares with the checkpoint's ``model/`` folder. One Ray session serves the module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.unit.engine._train_support import make_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module", autouse=True)
def _ray_session():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _train_then_snapshot(config: dict[str, Any]) -> None:
    import deepspeed
    from safetensors.torch import save_file

    from tuneforge.engine.data.tokenize import tokenize_sft
    from tuneforge.engine.recipes import _common as c
    from tuneforge.engine.spec import load_spec
    from tuneforge.engine.train.loop import train_loop
    from tuneforge.engine.train.objectives import CausalLMObjective

    spec = load_spec(config["spec"])
    device = torch.device("cpu")
    ds_config = c.zero3_context(spec)
    model, tokenizer = c.load_model(spec, device, ds_config)
    train, _ = c.read_splits(spec)
    rows = [c.example_row(e) for e in tokenize_sft(train, tokenizer, max_len=spec.data.max_seq_length)]
    plan = c.step_plan(spec, len(rows))
    total, warmup = c.total_and_warmup(spec, plan)
    runtime = c.build_runtime(spec, model, device, total, warmup)
    checkpoints = c.checkpoint_manager(spec, tokenizer)
    outcome = train_loop(runtime, CausalLMObjective(tokenizer.pad_token_id), rows, [], plan,
                         c.loop_config(spec, total), checkpoints=checkpoints)
    checkpoints.cleanup()
    params = list(model.parameters())
    assert any(p.numel() == 0 for p in params)  # really partitioned: rank-local tensors are empty
    with deepspeed.zero.GatheredParameters(params):
        if runtime.rank == 0:
            snapshot = {n: p.detach().clone().contiguous() for n, p in model.named_parameters()}
            save_file(snapshot, config["snapshot"])
            Path(config["uri_file"]).write_text(outcome.last_checkpoint_uri)


def _saved_name(param_name: str) -> str:
    return param_name.replace(".default.", ".")  # peft drops the adapter name when it saves


@pytest.mark.parametrize("method", ["full", "lora"])
def test_zero3_checkpoint_equals_gathered_parameters(tiny_model_dir: Path, tmp_path: Path, method: str) -> None:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tuneforge.engine.distributed import ensure_ray

    spec = make_spec(
        tiny_model_dir, tmp_path, method=method,
        resources={"num_workers": 2, "zero_stage": 3, "object_store_memory_mb": 300},
        hyperparameters={"max_steps": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
                         "learning_rate": 1e-2 if method == "lora" else 2e-3},
    )
    snapshot_file, uri_file = tmp_path / "gathered.safetensors", tmp_path / "uri.txt"
    ensure_ray(spec)
    TorchTrainer(
        _train_then_snapshot,
        train_loop_config={"spec": spec.resolved_dict(), "snapshot": str(snapshot_file), "uri_file": str(uri_file)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
        run_config=RunConfig(name=f"zero3-save-{method}", storage_path=str(tmp_path / "ray")),
    ).fit()

    gathered = load_file(str(snapshot_file))
    saved_dir = Path(uri_file.read_text().removeprefix("file://")) / "model"
    saved = load_file(str(saved_dir / ("model.safetensors" if method == "full" else "adapter_model.safetensors")))
    trained = {_saved_name(n): t for n, t in gathered.items() if method == "full" or "lora_" in n}
    assert trained and set(saved) == set(trained), (sorted(set(saved) ^ set(trained))[:5])
    for name, tensor in saved.items():
        assert tensor.shape == trained[name].shape and tensor.numel() > 0, name
        assert torch.equal(tensor, trained[name]), name
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    if method == "full":
        assert any(not torch.equal(saved[k], base[k]) for k in base if k in saved)  # it trained
    else:
        assert any(float(t.abs().sum()) > 0 for k, t in saved.items() if "lora_B" in k)
