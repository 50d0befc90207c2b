"""DeepSpeed ZeRO through the engine's own runtime, one process: NCCL + bf16 on a GPU, gloo on CPU.

Part of the prepared GPU check (``bench/gpu_check.sh``): it drives ``DeepSpeedRuntime`` (the class
the Ray workers use) with the DeepSpeed config the engine builds from a ``TrainingSpec``, on a
randomly initialised model of SmolLM2-135M's shape (the same FLOPs per token as the real model; no
weights need to travel), for each ZeRO stage asked for. It reports per stage: loss at the first and
last step (the same batch is repeated, so the loss must fall), median step time after warm-up,
tokens/s, MFU (6 x parameters x tokens/s over the card's peak) and peak GPU memory.

    python3 bench/gpu_zero.py --stages 2,3 --steps 12              # on a GPU (NCCL, bf16)
    python bench/gpu_zero.py --size tiny --stages 2 --steps 4        # a CPU smoke run (gloo, fp32)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT / "services"), str(_ROOT)]

# SmolLM2-135M's shape (its config.json); "tiny" for a CPU smoke run.
SHAPES = {
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 512},
}
# Dense bf16 / fp32 peak TFLOP/s from the vendors' data sheets (no sparsity).
PEAK_TFLOPS = {"H200": {"bf16": 989.0, "fp32": 67.0}, "H100": {"bf16": 989.0, "fp32": 67.0},
               "A100": {"bf16": 312.0, "fp32": 19.5}}


def _init_process_group(cuda: bool) -> None:
    import torch.distributed as dist

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=0, world_size=1)


def _spec(model_dir: Path, data_file: Path, stage: int, micro_batch: int, seq_len: int, cuda: bool) -> Any:
    from tuneforge.engine.spec import load_spec

    return load_spec({
        "tenant": "bench",
        "model": {"path": str(model_dir)},
        "data": {"train": {"path": str(data_file)}, "max_seq_length": seq_len},
        "method": {"kind": "full"},
        "hyperparameters": {"learning_rate": 1e-4, "max_steps": 1000, "micro_batch_size": micro_batch,
                            "lr_scheduler": "constant", "warmup_steps": 0},
        "precision": "bf16" if cuda else "fp32",
        "resources": {"num_workers": 1, "zero_stage": stage, "use_gpu": cuda},
        "output": {"checkpoint_uri": (model_dir.parent / "ckpt").as_uri(), "run_name": f"gpu-zero-{stage}"},
    })


def run_stage(stage: int, shape: dict[str, int], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Train ``args.steps`` steps at one ZeRO stage on one repeated random batch."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.engine.train.ds_runtime import DeepSpeedRuntime

    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=max(2048, args.seq_len),
                                         tie_word_embeddings=True))
    params = sum(p.numel() for p in model.parameters())
    model.to(device)
    model_dir = work / f"model-{stage}"
    model_dir.mkdir(parents=True, exist_ok=True)
    data_file = work / "unused.jsonl"
    data_file.write_text('{"kind": "text", "text": "unused"}\n')
    spec = _spec(model_dir, data_file, stage, args.micro_batch, args.seq_len, cuda)
    runtime = DeepSpeedRuntime(model, spec, device=device, total_steps=args.steps, warmup_steps=0)
    batch = torch.randint(0, shape["vocab_size"], (args.micro_batch, args.seq_len),
                          generator=torch.Generator().manual_seed(1)).to(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    losses, times = [], []
    for _ in range(args.steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with runtime.autocast():
            loss = runtime.model(input_ids=batch, labels=batch).loss
        runtime.backward(loss)
        runtime.optimizer_step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    step_s = statistics.median(times[args.warmup:] or times)
    tokens_per_s = args.micro_batch * args.seq_len / step_s
    result: dict[str, Any] = {
        "stage": stage, "device": torch.cuda.get_device_name() if cuda else "cpu",
        "backend": "nccl" if cuda else "gloo", "precision": spec.precision.value, "params": params,
        "loss_first": losses[0], "loss_last": losses[-1], "step_s_median": step_s,
        "tokens_per_s": tokens_per_s,
    }
    if cuda:
        name = torch.cuda.get_device_name()
        peak = next((t for key, t in PEAK_TFLOPS.items() if key in name), None)
        result["peak_cuda_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if peak:
            result["mfu"] = 6 * params * tokens_per_s / (peak[spec.precision.value] * 1e12)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run each stage, print one JSON line per stage, fail if a loss did not fall or is not finite."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", default="2,3")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--size", choices=sorted(SHAPES), default="smollm2-135m")
    parser.add_argument("--cpu", action="store_true", help="gloo on CPU even where a GPU is visible")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import math

    import torch

    _init_process_group(torch.cuda.is_available() and not args.cpu)
    results, ok = [], True
    with tempfile.TemporaryDirectory(prefix="gpu-zero-") as tmp:
        for stage in (int(s) for s in args.stages.split(",")):
            result = run_stage(stage, SHAPES[args.size], args, Path(tmp))
            result["loss_fell"] = math.isfinite(result["loss_last"]) and result["loss_last"] < result["loss_first"]
            ok &= result["loss_fell"]
            print(json.dumps(result), flush=True)
            results.append(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
