"""Benchmark of dataset curation against baselines in the same run.

Generates an Alpaca-style instruction dataset (JSONL) with ~10% exact and ~5% near duplicates,
then measures, each phase in its own subprocess so that peak RSS is per phase:

(a) validate + normalize + exact dedup: tuneforge's one call (``UploadDataset`` with
    ``metadata.curation``: ``ingest_file`` with the ``normalize`` and ``exact_dedup`` steps in the
    same pass, Parquet out) vs pandas (``read_json(lines=True)``, NFC + whitespace normalization,
    ``drop_duplicates``), with tuneforge's two-call path (upload a raw version, then
    ``CurateDataset``) beside them; the run fails if the two tuneforge paths store different content;
(b) near-dup dedup: tuneforge ``NearDupIndex`` vs datasketch ``MinHash`` + ``MinHashLSH`` at the
    same parameters (threshold, n-gram size, permutations), with recall of the baseline's
    duplicates.

Timings exclude interpreter start-up and imports; (b) times only the index work (both sides read
the file the same way, untimed). Each (a) phase runs ``--repeats`` times, alternating with its
baseline, and the median is reported with the CPU seconds (all threads) of the child process.

Usage: ``python bench/datasets_curation.py --rows 1000000`` (``--rows 20000`` for a quick check).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
    """One call: ``UploadDataset`` with ``metadata.curation`` (ingest and steps in one pass)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from tuneforge.datasets.domain import config as cfg
    from tuneforge.datasets.domain.ingest import IngestOptions, ingest_file

    pc.equal(pa.array([""]), "")  # pyarrow imports pandas on its first scalar conversion: do it untimed
    start = time.perf_counter()
    config = cfg.PipelineConfig((cfg.Normalize(), cfg.ExactDedup()), max_removal_fraction=0.9)
    result = ingest_file(path, IngestOptions(path.name), work / "ingest", curation=config)
    return {"seconds": time.perf_counter() - start, "rows_out": result.shards.rows,
            "content_hash": result.shards.content_hash}


def phase_ours_a_two_calls(path: Path, work: Path) -> dict[str, float]:
    """Two calls: ``UploadDataset`` (a raw version) then ``CurateDataset`` on it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from tuneforge.datasets.domain import config as cfg
    from tuneforge.datasets.domain.ingest import IngestOptions, ingest_file
    from tuneforge.datasets.domain.pipeline import run_pipeline

    pc.equal(pa.array([""]), "")
    start = time.perf_counter()
    staged = ingest_file(path, IngestOptions(path.name), work / "ingest")
    config = cfg.PipelineConfig((cfg.Normalize(), cfg.ExactDedup()), max_removal_fraction=0.9)
    result = run_pipeline(staged.shards.files, config, work / "curate", eval_records=lambda ids: [])
    return {"seconds": time.perf_counter() - start, "rows_out": result.shards.rows,
            "content_hash": result.shards.content_hash}


def phase_pandas_a(path: Path, work: Path) -> dict[str, float]:
    import pandas as pd

    start = time.perf_counter()
    frame = pd.read_json(path, lines=True, dtype=False)
    for column in ("instruction", "input", "output"):
        frame[column] = (frame[column].str.normalize("NFC").str.replace(r"[ \t]+", " ", regex=True).str.strip())
    frame = frame.drop_duplicates(subset=["instruction", "input", "output"])
    return {"seconds": time.perf_counter() - start, "rows_out": len(frame)}


def _text_batches(path: Path, rows: int = 8192) -> Iterator[list[str]]:
    """The file's texts in batches, streamed (both (b) sides read the same way, untimed)."""
    batch: list[str] = []
    with path.open() as f:
        for line in f:
            row = json.loads(line)
            batch.append(f"{row['instruction']}\n\n{row['input']} {row['output']}".strip())
            if len(batch) == rows:
                yield batch
                batch = []
    if batch:
        yield batch


def phase_ours_b(path: Path, work: Path) -> dict[str, float]:
    from tuneforge.datasets.domain.neardup import NearDupIndex

    index = NearDupIndex(THRESHOLD, NUM_PERM, NGRAM)
    dups: list[int] = []
    seconds = 0.0
    offset = 0
    for batch in _text_batches(path):
        start = time.perf_counter()
        keys = list(range(offset, offset + len(batch)))
        dups += [k for k, m in zip(keys, index.check_batch(keys, batch), strict=True) if m is not None]
        seconds += time.perf_counter() - start
        offset += len(batch)
    (work / "ours_b.json").write_text(json.dumps(dups))
    return {"seconds": seconds, "duplicates": len(dups)}


def phase_datasketch_b(path: Path, work: Path) -> dict[str, float]:
    from datasketch import MinHash, MinHashLSH

    from tuneforge.datasets.domain.neardup import hash32, shingles

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    dups: list[int] = []
    seconds = 0.0
    key = 0
    for batch in _text_batches(path):
        start = time.perf_counter()
        for text in batch:  # the documented pattern: query, then insert if new
            m = MinHash(num_perm=NUM_PERM, hashfunc=hash32, scheme="affine32")
            m.update_batch(shingles(text, NGRAM))
            if lsh.query(m):
                dups.append(key)
            else:
                lsh.insert(key, m)
            key += 1
        seconds += time.perf_counter() - start
    (work / "base_b.json").write_text(json.dumps(dups))
    return {"seconds": seconds, "duplicates": len(dups)}


PHASES = {"ours_a": phase_ours_a, "pandas_a": phase_pandas_a, "ours_a_two_calls": phase_ours_a_two_calls,
          "ours_b": phase_ours_b, "datasketch_b": phase_datasketch_b}
PAIRS = {"a": ("ours_a", "pandas_a", "ours_a_two_calls"), "b": ("ours_b", "datasketch_b")}
"""Per pair: tuneforge, the baseline, then any other tuneforge paths shown beside them."""


def run_phase(name: str, path: Path, work: Path) -> dict[str, float]:
    """Run one phase in a fresh interpreter; adds its peak RSS and CPU seconds (all threads)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        out = subprocess.run([sys.executable, __file__, "--phase", name, "--input", str(path), "--work", str(scratch)],
                             check=True, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["cpu_seconds"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        for name_b in ("ours_b.json", "base_b.json"):
            if (scratch / name_b).exists():
                shutil.copy(scratch / name_b, work / name_b)
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _summary(runs: list[dict[str, float]], rows: int) -> dict[str, float]:
    seconds = statistics.median(r["seconds"] for r in runs)
    out = {k: v for k, v in runs[0].items() if k in ("rows_out", "duplicates", "content_hash")}
    return {**out, "runs": len(runs), "seconds": seconds, "rows_per_s": rows / seconds,
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs), "all_seconds": [r["seconds"] for r in runs]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (a) phase, alternating (median)")
    parser.add_argument("--repeats-b", type=int, default=1, help="runs of each (b) phase (the baseline is slow)")
    parser.add_argument("--phases", default="ab", help="which pairs to run: a, b or ab")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--phase", choices=sorted(PHASES))
    parser.add_argument("--input", type=Path)
    parser.add_argument("--work", type=Path)
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
              f"file={path.stat().st_size / 2**20:.0f} MiB load={os.getloadavg()[0]:.1f}", flush=True)
        figures: dict[str, object] = {"rows": args.rows, "planted": planted, "cpus": os.cpu_count()}
        for pair in args.phases:
            repeats = args.repeats if pair == "a" else args.repeats_b
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in PAIRS[pair]}
            for _ in range(repeats):  # alternate, so both sides see the same load over time
                for name in PAIRS[pair]:
                    runs[name].append(run_phase(name, path, work))
            for name in PAIRS[pair]:
                r = figures[name] = _summary(runs[name], args.rows)
                extra = f"rows_out={r['rows_out']}" if "rows_out" in r else f"duplicates={r['duplicates']}"
                print(f"{name:14s} median {r['seconds']:8.2f} s of {r['runs']}  {r['rows_per_s']:10.0f} rows/s  "
                      f"cpu {r['cpu_seconds']:7.2f} s  peak RSS {r['peak_rss_mib']:7.0f} MiB  {extra}", flush=True)
            ours, base = figures[PAIRS[pair][0]], figures[PAIRS[pair][1]]
            print(f"({pair}) speed ratio tuneforge/baseline: {base['seconds'] / ours['seconds']:.2f}x wall, "  # type: ignore[index]
                  f"{base['cpu_seconds'] / ours['cpu_seconds']:.2f}x cpu", flush=True)  # type: ignore[index]
            hashes = {figures[n].get("content_hash") for n in PAIRS[pair] if n.startswith("ours")}  # type: ignore[union-attr]
            if len(hashes) > 1:
                raise SystemExit(f"({pair}) tuneforge paths disagree on the content: {hashes}")
        if "b" in args.phases:
            ours_b = set(json.loads((work / "ours_b.json").read_text()))
            base_b = set(json.loads((work / "base_b.json").read_text()))
            recall = len(ours_b & base_b) / len(base_b) if base_b else 1.0
            figures["recall_b"] = recall
            print(f"near-dup recall vs datasketch: {recall:.4f} ({len(ours_b & base_b)}/{len(base_b)}), "
                  f"ours-only {len(ours_b - base_b)}", flush=True)
        figures["load_after"] = os.getloadavg()[0]
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
