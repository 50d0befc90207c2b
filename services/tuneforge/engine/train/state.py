"""Everything besides the weights that a resumed run needs: RNG streams, data position, bookkeeping.

Formats are chosen so that loading never unpickles code: JSON for numbers, and ``torch.save`` of
plain tensors/numbers only (loaded with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.engine.train.position import DataPosition

TRAINER_STATE_FILE = "trainer_state.json"


def capture_rng() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) RNG states as tensors and numbers (weights_only safe)."""
    version, mt, gauss = random.getstate()
    np_state: Any = np.random.get_state()  # the legacy tuple form (stubs also allow a dict)
    state: dict[str, Any] = {
        "python": {"version": version, "mt": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back what ``capture_rng`` returned."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["mt"].tolist()), py["gauss"]))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(folder: Path, rank: int) -> None:
    """Write this worker's RNG state to ``rng_state_rank<rank>.pt``."""
    torch.save(capture_rng(), folder / f"rng_state_rank{rank}.pt")


def load_rng(folder: Path, rank: int) -> None:
    """Restore this worker's RNG state (weights_only); rank 0's file when the world size changed."""
    path = folder / f"rng_state_rank{rank}.pt"
    if not path.exists():
        path = folder / "rng_state_rank0.pt"
    restore_rng(torch.load(path, weights_only=True))


@dataclass
class TrainerState:
    """The loop's bookkeeping, saved as JSON beside each checkpoint.

    Attributes:
        global_step: optimizer steps completed.
        position: where the next step starts in the data.
        early_stopping: ``EarlyStopping.state_dict()``.
        checkpoints: ``{"step": N, "metric": value or None}`` for each retained checkpoint.
        metrics: the latest step and eval metrics.
        lr_history: the learning rate of every completed step (the LR curve, checked on resume).
        world_size: workers of the run that wrote the state (0: not recorded).
        rows_per_step: rows one optimizer step consumed over all workers (0: not recorded); a
            resumed run must consume as many, or it would change the batch size and the data position.
    """

    global_step: int = 0
    position: DataPosition = field(default_factory=lambda: DataPosition(0, 0, 0))
    early_stopping: dict[str, float] = field(default_factory=dict)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    lr_history: list[float] = field(default_factory=list)
    world_size: int = 0
    rows_per_step: int = 0

    def save(self, folder: Path) -> None:
        """Write ``trainer_state.json``."""
        (folder / TRAINER_STATE_FILE).write_text(json.dumps(asdict(self), indent=1, sort_keys=True))

    @classmethod
    def load(cls, folder: Path) -> TrainerState:
        """Read ``trainer_state.json``."""
        doc = json.loads((folder / TRAINER_STATE_FILE).read_text())
        doc["position"] = DataPosition(**doc["position"])
        return cls(**doc)
