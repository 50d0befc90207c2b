"""What the evaluation domain needs from the outside world; ``adapters/`` implement these."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tuneforge.common.auth import Identity
from tuneforge.common.peers.types import ResolvedModel
from tuneforge.common.storage.refs import StoredFolder
from tuneforge.evaluation.domain.model import (
    Evaluation,
    ModelRef,
    ProgressEvent,
    State,
)


@dataclass(frozen=True)
class ModelTask:
    """One engine run: one model on one dataset's examples (picklable, crosses Ray)."""

    model_dir: str
    adapter_dir: str | None
    examples: list[dict[str, Any]]
    metrics: list[str]
    generation: Mapping[str, Any]
    max_length: int = 0
    stride: int = 0
    prefer_gpu: bool = True
    # The same folders by store reference (None: only on the service's disk). A runner on other
    # machines (Ray) sends these, never the paths: its workers fetch and check the files themselves.
    model_source: StoredFolder | None = None
    adapter_source: StoredFolder | None = None


ProgressFn = Callable[[int, int], None]


class EvaluationRepository(Protocol):
    """Evaluations, their progress events, exported pairs and ratings (tenant-scoped)."""

    def add(self, evaluation: Evaluation) -> Evaluation:
        """Insert; on an existing (tenant, request_id) return the stored one unchanged."""
        ...

    def get(self, tenant: str, evaluation_id: str) -> Evaluation:
        """One evaluation; ``NotFound`` when absent or of another tenant."""
        ...

    def list(self, tenant: str, *, limit: int, offset: int) -> list[Evaluation]:
        """Newest first."""
        ...

    def save(self, evaluation: Evaluation, *, expected: Collection[State] = ()) -> bool:
        """Update state, results, report, error, end time of the tenant's evaluation.

        With ``expected``, only while the stored state is one of them (compare-and-set); returns
        whether it was updated.
        """
        ...

    def fail_unfinished(self, message: str) -> builtins.list[Evaluation]:
        """At start-up: mark every QUEUED/RUNNING evaluation FAILED (``ABORTED``); returns them."""
        ...

    def add_event(self, tenant: str, evaluation_id: str, state: State, done: int, total: int,
                  message: str) -> ProgressEvent:
        """Append a progress event with the next sequence number; ``NotFound`` for another tenant's."""
        ...

    def events_after(self, tenant: str, evaluation_id: str, sequence: int) -> builtins.list[ProgressEvent]:
        """The tenant's evaluation's events with a sequence greater than ``sequence``, in order."""
        ...

    def save_pairs(self, tenant: str, evaluation_id: str,
                   pairs: Sequence[Mapping[str, Any]]) -> builtins.list[dict[str, Any]]:
        """Store the first export of pairs; when pairs exist already, keep and return those."""
        ...

    def get_pairs(self, tenant: str, evaluation_id: str) -> builtins.list[dict[str, Any]]:
        """Exported pairs with their hidden ``left_is_model``."""
        ...

    def save_ratings(self, tenant: str, evaluation_id: str, ratings: Sequence[Mapping[str, Any]]) -> int:
        """Upsert ratings keyed by (pair_id, rater); returns how many were stored."""
        ...

    def get_ratings(self, tenant: str, evaluation_id: str) -> builtins.list[dict[str, Any]]:
        """All ratings of an evaluation."""
        ...


class ReportStore(Protocol):
    """Full reports (JSON with generations) in the object store."""

    def put_report(self, tenant: str, evaluation_id: str, report: Mapping[str, Any]) -> tuple[str, str]:
        """Store a report; returns (object key, URI)."""
        ...

    def get_report(self, tenant: str, key: str) -> dict[str, Any]:
        """Read a stored report back."""
        ...


class DatasetReader(Protocol):
    """Canonical records of a dataset version's split, read on behalf of ``caller``.

    ``caller`` is the identity that created the evaluation (tenant and bearer token): peers are
    called with it, so a tenant reaches only its own versions.
    """

    def check(self, caller: Identity, version_id: str, split: str) -> None:
        """Raise now (``NotFound``, ``InvalidInput``) if the version or split cannot be read."""
        ...

    def read(self, caller: Identity, version_id: str, split: str, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` records of ``split`` (empty: ``test`` of a split version, else every row)."""
        ...


class DatasetLeases(Protocol):
    """Leases on dataset versions (the dataset service refuses to delete a leased version)."""

    def acquire(self, caller: Identity, version_id: str, holder: str) -> None:
        """Lease ``version_id`` for ``holder`` (idempotent); ``NotFound`` for unknown or foreign versions."""
        ...

    def release(self, caller: Identity, version_id: str, holder: str) -> None:
        """Release ``holder``'s lease; no error when it is not held or the version is gone."""
        ...


class TenantCredentials(Protocol):
    """The identity to act as for a tenant when the caller's token is gone (after a restart)."""

    def identity_for(self, tenant: str) -> Identity | None:
        """An identity of ``tenant`` its peers accept, or None when none is configured."""
        ...


class ModelResolver(Protocol):
    """Turns a ``ModelRef`` into local folders on behalf of ``caller`` (downloading if needed)."""

    def check(self, caller: Identity, ref: ModelRef) -> None:
        """Raise now (``NotFound``, ``InvalidInput``) if the model cannot be found; downloads nothing."""
        ...

    def resolve(self, caller: Identity, ref: ModelRef, *, download: bool = True) -> ResolvedModel:
        """Local folders of the model and their store references; ``NotFound``/``InvalidInput`` naming
        the field otherwise. ``download=False``: the references only (nothing fetched here)."""
        ...


class CheckpointAliases(Protocol):
    """The checkpoint service's alias API (only ``best`` is moved by evaluations)."""

    def set_alias(self, caller: Identity, job_id: str, alias: str, checkpoint_id: str) -> None:
        """Point ``alias`` of ``job_id`` at ``checkpoint_id`` on behalf of ``caller``."""
        ...


class ModelRunner(Protocol):
    """Runs a ``ModelTask`` on the engine: in this process or on Ray (GPU when there is one)."""

    name: str
    # False: the task's folders are fetched where it runs (from model_source/adapter_source), so
    # the service downloads nothing for it.
    reads_local_folders: bool

    def run(self, task: ModelTask, progress: ProgressFn, cancelled: Callable[[], bool]) -> dict[str, Any]:
        """Raw engine outputs (``tuneforge.engine.evaluate.job.run_task``); raises ``Cancelled``."""
        ...


class SafetyScorer(Protocol):
    """The curation toxicity/bias scorer (``tuneforge.common.text.toxicity.ToxicityScorer``)."""

    def flagged(self, text: str) -> bool:
        """Whether a generation is flagged."""
        ...
