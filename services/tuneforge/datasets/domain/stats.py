"""Version statistics: token-length percentiles and histogram, turns, categories, splits."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.datasets.domain.records import texts_of
from tuneforge.datasets.domain.shards import iter_batches
from tuneforge.datasets.domain.steps_mix import UNCATEGORIZED
from tuneforge.datasets.domain.tokens import TokenCounter

HISTOGRAM_BUCKETS = 20


def _percentiles(values: np.ndarray, keys: Iterable[str]) -> dict[str, float]:
    if values.size == 0:
        return {}
    out = {"max": float(values.max()), "mean": float(values.mean())}
    for key in keys:
        out[key] = float(np.percentile(values, int(key[1:])))
    return out


def _histogram(values: np.ndarray) -> list[dict[str, float]]:
    if values.size == 0:
        return []
    hi = max(float(values.max()), 1.0)
    edges = np.linspace(0.0, hi + 1.0, HISTOGRAM_BUCKETS + 1)
    counts, _ = np.histogram(values, bins=edges)
    return [{"lower": float(edges[i]), "upper": float(edges[i + 1]), "count": int(c)} for i, c in enumerate(counts)]


def compute_stats(files: list[Path], counter: TokenCounter) -> dict[str, Any]:
    """Statistics of a version's shards (streamed batch by batch)."""
    lengths: list[int] = []
    turns: list[int] = []
    categories: Counter[str] = Counter()
    splits: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    for batch in iter_batches(files, batch_rows=2048):
        lengths.extend(counter.count(["\n".join(texts_of(r)) for r in batch]))
        for record in batch:
            categories[record.get("category") or UNCATEGORIZED] += 1
            if record.get("split"):
                splits[record["split"]] += 1
            if record.get("messages"):
                turns.append(len(record["messages"]))
            if record.get("label") is not None:
                labels["desirable" if record["label"] else "undesirable"] += 1
    values = np.asarray(lengths, dtype=np.float64)
    return {
        "row_count": len(lengths),
        "tokenizer": counter.name,
        "token_length_percentiles": _percentiles(values, ("p50", "p90", "p99")),
        "token_length_histogram": _histogram(values),
        "turns_percentiles": _percentiles(np.asarray(turns, dtype=np.float64), ("p50", "p90")),
        "category_counts": dict(categories),
        "split_counts": dict(splits),
        "label_counts": dict(labels),
    }
