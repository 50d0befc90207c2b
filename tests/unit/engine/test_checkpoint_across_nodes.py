"""Checkpoints of workers on different nodes (no shared staging folder, as Ray pods on Kubernetes):
every worker's files reach the committed checkpoint through the store."""

from __future__ import annotations

import threading
from pathlib import Path

from tuneforge.common.storage.artifacts import read_manifest
from tuneforge.engine.train.checkpoint import CheckpointManager
from tuneforge.engine.train.state import TrainerState


class _NodeRuntime:
    """One worker of a two-worker run: barriers shared, files per worker (a ZeRO partition)."""

    def __init__(self, rank: int, barrier: threading.Barrier) -> None:
        self.rank, self._barrier = rank, barrier

    def barrier(self) -> None:
        self._barrier.wait(timeout=30)

    def save_model(self, folder: Path) -> None:
        if self.rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "adapter.safetensors").write_bytes(b"weights")

    def save_training_state(self, folder: Path) -> None:
        part = folder / "deepspeed" / "state"
        part.mkdir(parents=True, exist_ok=True)
        (part / f"zero_pp_rank_{self.rank}_optim_states.pt").write_bytes(b"partition %d" % self.rank)


def _save_on_two_nodes(tmp_path: Path, staging: list[Path]) -> set[str]:
    uri = f"file://{tmp_path / 'store'}"
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        try:
            manager = CheckpointManager(uri, "run", staging_dir=staging[rank])
            manager.save(_NodeRuntime(rank, barrier), TrainerState(global_step=2), None)
        except BaseException as exc:  # noqa: BLE001  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    manager = CheckpointManager(uri, "run", staging_dir=tmp_path / "reader")
    assert not list(manager.store.list("run/.parts/")), "the workers' parts stay behind"
    return {f.path for f in read_manifest(manager.store, manager.prefix(2) + "/").files}


def test_workers_on_other_nodes_send_their_files_to_the_checkpoint(tmp_path: Path) -> None:
    files = _save_on_two_nodes(tmp_path, [tmp_path / "node-a", tmp_path / "node-b"])
    assert {"rng_state_rank0.pt", "rng_state_rank1.pt", "deepspeed/state/zero_pp_rank_0_optim_states.pt",
            "deepspeed/state/zero_pp_rank_1_optim_states.pt", "model/adapter.safetensors"} <= files


def test_workers_sharing_a_folder_write_the_same_checkpoint(tmp_path: Path) -> None:
    files = _save_on_two_nodes(tmp_path, [tmp_path / "node", tmp_path / "node"])
    assert {"rng_state_rank0.pt", "rng_state_rank1.pt", "deepspeed/state/zero_pp_rank_1_optim_states.pt"} <= files
