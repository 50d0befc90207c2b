"""Deterministic sample orders: epochs, validation splits and weighted multi-task mixtures.

Public API:
    epoch_order(n, seed, epoch) -> list[int]
        A permutation of ``range(n)`` that depends only on (n, seed, epoch). Resume skips exactly the
        consumed samples with ``epoch_order(n, seed, epoch)[consumed:]``.
    split_indices(n, ratio, seed) -> (train_idx, validation_idx)
        A deterministic hold-out of ``round(n * ratio)`` samples (at least 1 when ratio > 0 and n > 1).
    mix(sources, seed, *, total=None) -> list[T]
        Weighted multi-task mixture: ``sources`` is a list of ``(items, weight)``; each source gives
        ``round(total * weight / sum(weights))`` items (cycling through a seeded permutation when it
        has fewer), and the result is shuffled with the seed. ``total`` defaults to the sum of the
        source sizes. Same inputs, same output.

Randomness comes from numpy's PCG64 seeded with ``[seed, epoch]`` / ``[seed, salt]``, never from a
global RNG, so the orders do not depend on what else ran in the process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from tuneforge.common.errors import InvalidInput

T = TypeVar("T")
_SPLIT_SALT = 0x5EED_5B11
_MIX_SALT = 0x31C7


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of ``epoch`` (a seeded permutation of ``range(n)``)."""
    if n < 0 or seed < 0 or epoch < 0:
        raise InvalidInput.field_error(
            "epoch_order", f"n, seed and epoch must be >= 0 (got {n}, {seed}, {epoch})"
        )
    return np.random.default_rng([seed, epoch]).permutation(n).tolist()


def split_indices(n: int, ratio: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into sorted train and validation index lists."""
    if not 0 <= ratio < 1:
        raise InvalidInput.field_error("data.validation_split_ratio", f"must be in [0, 1), got {ratio}")
    k = round(n * ratio)
    if ratio > 0 and n > 1:
        k = min(max(k, 1), n - 1)
    held = set(np.random.default_rng([seed, _SPLIT_SALT]).permutation(n)[:k].tolist())
    return [i for i in range(n) if i not in held], sorted(held)


def mix(sources: Sequence[tuple[Sequence[T], float]], seed: int, *, total: int | None = None) -> list[T]:
    """Draw a weighted, shuffled mixture of several sources (deterministic for a seed).

    Args:
        sources: ``(items, weight)`` per task; weights > 0 and need not sum to 1.
        seed: the mixture seed.
        total: number of items in the mixture; the sum of the source sizes when None.

    Raises:
        InvalidInput: a weight <= 0 or an empty source (named ``data.mixture[i]``).
    """
    for i, (items, weight) in enumerate(sources):
        if weight <= 0 or not items:
            raise InvalidInput.field_error(f"data.mixture[{i}]", "needs weight > 0 and at least one sample")
    total = sum(len(items) for items, _ in sources) if total is None else total
    weights = np.array([w for _, w in sources], dtype=float)
    counts = _apportion(total, weights / weights.sum())
    picked: list[T] = []
    for i, ((items, _), count) in enumerate(zip(sources, counts, strict=True)):
        rng = np.random.default_rng([seed, _MIX_SALT, i])
        order: list[int] = []
        while len(order) < count:  # cycle through fresh permutations when upsampling
            order.extend(rng.permutation(len(items)).tolist())
        picked.extend(items[j] for j in order[:count])
    shuffle = np.random.default_rng([seed, _MIX_SALT]).permutation(len(picked)).tolist()
    return [picked[j] for j in shuffle]


def _apportion(total: int, shares: np.ndarray) -> list[int]:
    """Largest-remainder rounding so the counts sum exactly to ``total``."""
    raw = shares * total
    counts = np.floor(raw).astype(int)
    for j in np.argsort(-(raw - counts), kind="stable")[: total - int(counts.sum())]:
        counts[j] += 1
    return counts.tolist()
