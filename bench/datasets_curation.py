"""Benchmark of dataset curation against baselines in the same run.

Generates an Alpaca-style instruction dataset (JSONL) with ~10% exact and ~5% near duplicates,
then measures, each phase in its own subprocess so that peak RSS is per phase:

(a) validate + normalize + exact dedup: tuneforge (``ingest_file`` then the ``normalize`` and
    ``exact_dedup`` steps, Parquet in and out) vs pandas (``read_json(lines=True)``, NFC +
    whitespace normalization, ``drop_duplicates``);
(b) near-dup dedup: tuneforge ``NearDupIndex`` vs datasketch ``MinHash`` + ``MinHashLSH`` at the
    same parameters (threshold, n-gram size, permutations), with recall of the baseline's
    duplicates.

Usage: ``python bench/datasets_curation.py --rows 1000000`` (``--rows 20000`` for a quick check).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "services"))

WORDS = ["time", "person", "year", "way", "day", "thing", "man", "world", "life", "hand", "part", "child", "eye", "woman", "place", "work", "week", "case", "point", "government", "company", "number", "group", "problem", "fact", "water", "money", "story", "month", "lot", "right", "study", "book", "job", "word", "business", "issue", "side", "kind", "head", "house", "service", "friend", "father", "power", "hour", "game", "line", "end", "member", "law", "car", "city", "community", "name", "president", "team", "minute", "idea", "kid", "body", "information", "back", "parent", "face", "others", "level", "office", "door", "health", "art", "war", "history", "party", "result", "change", "morning", "reason", "research", "girl", "guy", "moment", "air", "teacher", "force"]
NGRAM, THRESHOLD, NUM_PERM = 5, 0.8, 128


def generate(path: Path, rows: int, seed: int = 0) -> dict[str, int]:
    """Write the dataset; returns how many exact and near duplicates it holds."""
    rng = random.Random(seed)
    kept: list[dict[str, str]] = []
    exact = near = 0
    with path.open("w") as f:
        for i in range(rows):
            roll = rng.random()
            if kept and roll < 0.10:
                row = rng.choice(kept)
                exact += 1
            elif kept and roll < 0.15:
                base = rng.choice(kept)
                words = base["output"].split()
                words[rng.randrange(len(words))] = rng.choice(WORDS)  # one word of ~60 changed
                row = {**base, "output": " ".join(words)}
                near += 1
            else:
                row = {"instruction": f"Explain {' '.join(rng.choices(WORDS, k=6))} ({i})", "input": "",
                       "output": " ".join(rng.choices(WORDS, k=60)), "category": rng.choice(("qa", "code", "chat"))}
                if len(kept) < 50_000:
                    kept.append(row)
                else:
                    kept[rng.randrange(len(kept))] = row
            f.write(json.dumps(row) + "\n")
    return {"exact": exact, "near": near}


def phase_ours_a(path: Path, work: Path) -> dict[str, float]:
    from tuneforge.datasets.domain import config as cfg
    from tuneforge.datasets.domain.ingest import IngestOptions, ingest_file
    from tuneforge.datasets.domain.pipeline import run_pipeline

    start = time.perf_counter()
    staged = ingest_file(path, IngestOptions(path.name), work / "ingest")
    config = cfg.PipelineConfig((cfg.Normalize(), cfg.ExactDedup()), max_removal_fraction=0.9)
    result = run_pipeline(staged.shards.files, config, work / "curate", eval_records=lambda ids: [])
    return {"seconds": time.perf_counter() - start, "rows_out": result.shards.rows}


def phase_pandas_a(path: Path, work: Path) -> dict[str, float]:
    import pandas as pd

    start = time.perf_counter()
    frame = pd.read_json(path, lines=True, dtype=False)
    for column in ("instruction", "input", "output"):
        frame[column] = (frame[column].str.normalize("NFC").str.replace(r"[ \t]+", " ", regex=True).str.strip())
    frame = frame.drop_duplicates(subset=["instruction", "input", "output"])
    return {"seconds": time.perf_counter() - start, "rows_out": len(frame)}


def _texts(path: Path) -> list[str]:
    out = []
    with path.open() as f:
        for line in f:
            row = json.loads(line)
            out.append(f"{row['instruction']}\n\n{row['input']} {row['output']}".strip())
    return out


def phase_ours_b(path: Path, work: Path) -> dict[str, float]:
    from tuneforge.datasets.domain.neardup import NearDupIndex

    texts = _texts(path)
    start = time.perf_counter()
    index = NearDupIndex(THRESHOLD, NUM_PERM, NGRAM)
    dups: list[int] = []
    for offset in range(0, len(texts), 8192):
        batch = texts[offset : offset + 8192]
        keys = list(range(offset, offset + len(batch)))
        dups += [k for k, m in zip(keys, index.check_batch(keys, batch), strict=True) if m is not None]
    seconds = time.perf_counter() - start
    (work / "ours_b.json").write_text(json.dumps(dups))
    return {"seconds": seconds, "duplicates": len(dups)}


def phase_datasketch_b(path: Path, work: Path) -> dict[str, float]:
    from datasketch import MinHash, MinHashLSH

    from tuneforge.datasets.domain.neardup import hash32, shingles

    texts = _texts(path)
    start = time.perf_counter()
    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    dups: list[int] = []
    for key, text in enumerate(texts):  # the documented pattern: query, then insert if new
        m = MinHash(num_perm=NUM_PERM, hashfunc=hash32, scheme="affine32")
        m.update_batch(shingles(text, NGRAM))
        if lsh.query(m):
            dups.append(key)
        else:
            lsh.insert(key, m)
    seconds = time.perf_counter() - start
    (work / "base_b.json").write_text(json.dumps(dups))
    return {"seconds": seconds, "duplicates": len(dups)}


PHASES = {"ours_a": phase_ours_a, "pandas_a": phase_pandas_a, "ours_b": phase_ours_b, "datasketch_b": phase_datasketch_b}


def run_phase(name: str, path: Path, work: Path) -> dict[str, float]:
    """Run one phase in a fresh interpreter; adds its peak RSS."""
    out = subprocess.run([sys.executable, __file__, "--phase", name, "--input", str(path), "--work", str(work)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--phase", choices=sorted(PHASES))
    parser.add_argument("--input", type=Path)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--skip-b-baseline", action="store_true", help="skip the (slow) datasketch baseline")
    args = parser.parse_args()
    if args.phase:
        result = PHASES[args.phase](args.input, args.work)
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    work = Path(tempfile.mkdtemp(prefix="bench-datasets-"))
    try:
        path = work / "data.jsonl"
        planted = generate(path, args.rows)
        print(f"rows={args.rows} planted exact={planted['exact']} near={planted['near']} "
              f"file={path.stat().st_size / 2**20:.0f} MiB")
        for name in ("ours_a", "pandas_a", "ours_b", *(() if args.skip_b_baseline else ("datasketch_b",))):
            r = run_phase(name, path, work)
            extra = f"rows_out={r.get('rows_out', '')}" if "rows_out" in r else f"duplicates={r['duplicates']}"
            print(f"{name:14s} {r['seconds']:8.2f} s  {args.rows / r['seconds']:10.0f} rows/s  "
                  f"peak RSS {r['peak_rss_mib']:7.0f} MiB  {extra}")
        if not args.skip_b_baseline:
            ours = set(json.loads((work / "ours_b.json").read_text()))
            base = set(json.loads((work / "base_b.json").read_text()))
            recall = len(ours & base) / len(base) if base else 1.0
            print(f"near-dup recall vs datasketch: {recall:.4f} ({len(ours & base)}/{len(base)}), "
                  f"ours-only {len(ours - base)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
