"""Which samples each optimizer step consumes, so that a resumed run sees exactly the same ones.

An epoch visits the rows in ``epoch_order(n, seed, epoch)`` (a permutation that depends only on its
arguments). Each optimizer step consumes ``micro_batch * grad_accum * world_size`` consecutive rows
of that order; the tail that does not fill a whole step is dropped (drop-last, as every rank must
run the same number of micro-steps). Worker ``rank`` takes, for micro-step ``k``, the slice
``[(k * world + rank) * micro_batch, ... + micro_batch)`` of the step's rows.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from tuneforge.common.errors import InvalidInput
from tuneforge.engine.data.sampling import epoch_order


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    return tuple(epoch_order(n, seed, epoch))


@dataclass(frozen=True)
class DataPosition:
    """Where training stands in the data: resumable from these three numbers.

    Attributes:
        epoch: the current epoch (0-based).
        step_in_epoch: optimizer steps already taken in this epoch.
        samples_consumed: rows consumed in this epoch by all workers together.
    """

    epoch: int
    step_in_epoch: int
    samples_consumed: int


@dataclass(frozen=True)
class StepPlan:
    """The geometry of one optimizer step.

    Attributes:
        num_rows: rows in the training set.
        micro_batch: rows per micro-batch per worker.
        grad_accum: micro-batches per optimizer step.
        world_size: number of workers.
        seed: the run's seed (selects the permutation of each epoch).
    """

    num_rows: int
    micro_batch: int
    grad_accum: int
    world_size: int
    seed: int

    @property
    def rows_per_step(self) -> int:
        """Rows all workers consume together in one optimizer step."""
        return self.micro_batch * self.grad_accum * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Whole optimizer steps in one pass over the data."""
        return self.num_rows // self.rows_per_step

    def check(self) -> None:
        """Raise when the data cannot fill a single optimizer step.

        Raises:
            InvalidInput: fewer rows than one step consumes, naming the knobs to turn.
        """
        if self.steps_per_epoch == 0:
            raise InvalidInput.field_error(
                "data",
                f"the training split has {self.num_rows} rows but one optimizer step needs "
                f"{self.rows_per_step} (micro_batch_size {self.micro_batch} x gradient_accumulation "
                f"{self.grad_accum} x workers {self.world_size}): add rows or lower those settings",
            )

    def position(self, global_step: int) -> DataPosition:
        """Data position after ``global_step`` optimizer steps."""
        epoch, in_epoch = divmod(global_step, self.steps_per_epoch)
        return DataPosition(epoch, in_epoch, in_epoch * self.rows_per_step)

    def micro_batches(self, global_step: int, rank: int) -> list[list[int]]:
        """Row indices of each micro-batch worker ``rank`` runs in optimizer step ``global_step``."""
        pos = self.position(global_step)
        order = _epoch_order(self.num_rows, self.seed, pos.epoch)
        rows = order[pos.samples_consumed : pos.samples_consumed + self.rows_per_step]
        out = []
        for k in range(self.grad_accum):
            start = (k * self.world_size + rank) * self.micro_batch
            out.append(list(rows[start : start + self.micro_batch]))
        return out

    def step_rows(self, global_step: int) -> list[int]:
        """Every row consumed by optimizer step ``global_step`` (all workers), in order."""
        pos = self.position(global_step)
        order = _epoch_order(self.num_rows, self.seed, pos.epoch)
        return list(order[pos.samples_consumed : pos.samples_consumed + self.rows_per_step])
