"""Deterministic orders: epochs (resume), validation splits, weighted mixtures."""

from __future__ import annotations

from collections import Counter

import pytest

from tuneforge.common.errors import InvalidInput
from tuneforge.engine.data import epoch_order, mix, split_indices


def test_epoch_order_is_a_seeded_permutation() -> None:
    order = epoch_order(100, seed=7, epoch=0)
    assert sorted(order) == list(range(100))
    assert order == epoch_order(100, seed=7, epoch=0)
    assert order != epoch_order(100, seed=7, epoch=1)
    assert order != epoch_order(100, seed=8, epoch=0)


def test_resume_skips_exactly_the_consumed_samples() -> None:
    consumed = 37
    full = epoch_order(50, seed=1, epoch=2)
    resumed = epoch_order(50, seed=1, epoch=2)[consumed:]
    assert full[:consumed] + resumed == full


def test_split_indices_deterministic_and_disjoint() -> None:
    train, val = split_indices(20, 0.1, seed=3)
    assert len(val) == 2 and sorted(train + val) == list(range(20))
    assert (train, val) == split_indices(20, 0.1, seed=3)
    assert any(split_indices(20, 0.1, seed=s)[1] != val for s in (4, 5, 6))
    assert len(split_indices(5, 0.01, seed=0)[1]) == 1  # a requested split is never empty
    with pytest.raises(InvalidInput):
        split_indices(5, 1.5, seed=0)


def test_mixture_weights_and_determinism() -> None:
    a = [("a", i) for i in range(10)]
    b = [("b", i) for i in range(40)]
    mixed = mix([(a, 3.0), (b, 1.0)], seed=11, total=100)
    counts = Counter(task for task, _ in mixed)
    assert counts == {"a": 75, "b": 25}
    assert Counter(mixed)[("a", 0)] >= 7  # upsampled source cycles through all its items
    assert {item for item in mixed if item[0] == "a"} == set(a)
    assert mixed == mix([(a, 3.0), (b, 1.0)], seed=11, total=100)
    assert mixed != mix([(a, 3.0), (b, 1.0)], seed=12, total=100)
    assert len(mix([(a, 1.0), (b, 1.0)], seed=0)) == 50
    with pytest.raises(InvalidInput) as info:
        mix([(a, 1.0), ([], 1.0)], seed=0)
    assert info.value.field == "data.mixture[1]"
