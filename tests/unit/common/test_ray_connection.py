"""A broken Ray connection is forgotten and reported as retryable UNAVAILABLE naming the cluster and setting."""

from __future__ import annotations

import pytest

from tuneforge.common.errors import Unavailable
from tuneforge.common.ray_connection import RAY_UNREACHABLE, forget, lost

ray = pytest.importorskip("ray")


def test_lost_names_the_cluster_the_cause_and_the_setting_and_is_retryable() -> None:
    err = lost("ray://head:10001", ConnectionAbortedError("Initialization failure from server"),
               "TUNEFORGE_EVAL_RAY_ADDRESS", during="while connecting")
    assert isinstance(err, Unavailable) and err.reason == RAY_UNREACHABLE
    assert "ray://head:10001" in err.message and "while connecting" in err.message
    assert "ConnectionAbortedError: Initialization failure from server" in err.message
    assert "TUNEFORGE_EVAL_RAY_ADDRESS" in err.message and err.message.count("retry") == 1


def test_lost_without_an_address_says_local_ray_and_cuts_long_causes() -> None:
    err = lost("", ConnectionError("x" * 5000), "TUNEFORGE_TRAIN_RAY_ADDRESS", during="during the run")
    assert "the local Ray" in err.message and len(err.message) < 700


def test_forget_leaves_no_connection_and_is_safe_without_one() -> None:
    forget()  # nothing connected: a no-op
    assert not ray.is_initialized()
