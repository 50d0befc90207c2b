"""Per-step measurements (throughput, peak memory) and early stopping."""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass

import torch


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this worker: ``max_memory_allocated`` on CUDA, peak RSS of the process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    return int(peak if sys.platform == "darwin" else peak * 1024)


class Throughput:
    """Tokens and samples per second over the last optimizer step."""

    def __init__(self) -> None:
        self._start = time.perf_counter()

    def restart(self) -> None:
        """Start timing a new step."""
        self._start = time.perf_counter()

    def rates(self, tokens: int, samples: int) -> dict[str, float]:
        """Rates since the last ``restart``."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        return {"tokens_per_s": tokens / elapsed, "samples_per_s": samples / elapsed, "step_time_s": elapsed}


def perplexity(mean_loss: float) -> float:
    """exp(loss), capped so that a diverged run reports inf rather than overflowing."""
    return math.exp(mean_loss) if mean_loss < 700 else math.inf


@dataclass
class EarlyStopping:
    """Stop when the monitored metric (lower is better) has not improved for ``patience`` evaluations.

    Attributes:
        patience: evaluations without improvement before stopping; 0 disables early stopping.
        min_delta: an improvement smaller than this does not count.
        best: best value seen (restored on resume).
        bad_evals: consecutive evaluations without improvement (restored on resume).
    """

    patience: int = 0
    min_delta: float = 0.0
    best: float = math.inf
    bad_evals: int = 0

    def update(self, value: float) -> bool:
        """Record one evaluation; returns True when training should stop."""
        if value < self.best - self.min_delta:
            self.best = value
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        return self.patience > 0 and self.bad_evals >= self.patience

    def state_dict(self) -> dict[str, float]:
        """Numbers only, so it is saved in the checkpoint's JSON state."""
        return {"best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore what ``state_dict`` returned."""
        self.best = float(state["best"])
        self.bad_evals = int(state["bad_evals"])
