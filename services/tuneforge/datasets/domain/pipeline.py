"""The curation runner: steps chained over record batches, counted, guarded, then split.

Records stream from the input shards through the steps (each a batch generator) into local
staging shards; only barrier steps (balance) and the split hold data back, and they spool it
to local Parquet rather than memory. A step that removes more than ``max_removal_fraction`` of
its input fails the run with its numbers (the removal guard) and nothing is published.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tuneforge.common.errors import ResourceExhausted
from tuneforge.datasets.domain import config as cfg
from tuneforge.datasets.domain.records import Split, to_table
from tuneforge.datasets.domain.rejects import RejectedRow
from tuneforge.datasets.domain.shards import (
    RejectsWriter,
    ShardSet,
    ShardWriter,
    iter_batches,
    iter_tables,
    read_ahead,
)
from tuneforge.datasets.domain.steps import (
    ExactDedupStep,
    LanguageStep,
    LengthFilterStep,
    NearDedupStep,
    NormalizeStep,
    PiiStep,
    QualityFilterStep,
    Record,
    Step,
    ToxicityStep,
)
from tuneforge.datasets.domain.steps_gen import GenerativeAugmentStep, GeneratorProvider
from tuneforge.datasets.domain.steps_mix import UNCATEGORIZED, AugmentStep, BalanceStep, DecontaminateStep


@dataclass
class StepCount:
    """Rows in and out of one step, with its figures."""

    step: str
    rows_in: int = 0
    rows_out: int = 0
    rows_modified: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (lineage, manifest)."""
        return {"step": self.step, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "rows_modified": self.rows_modified, "details": self.details}


@dataclass
class PipelineResult:
    """Staged output of a run."""

    shards: ShardSet
    rejected_path: Path | None
    rejected_count: int
    steps: list[StepCount]


EvalRecords = Callable[[tuple[str, ...]], Iterable[Record]]
Progress = Callable[[StepCount], None]


def build_step(config: cfg.StepConfig, reject: Callable[[Record, str, str], None], workdir: Path, eval_records: EvalRecords,
               generators: GeneratorProvider | None = None) -> Step:
    """Instantiate the step for a configuration (``generators``: the models of ``generative_augment``)."""
    simple: dict[type, type[Step]] = {
        cfg.Normalize: NormalizeStep, cfg.ExactDedup: ExactDedupStep, cfg.NearDedup: NearDedupStep,
        cfg.LengthFilter: LengthFilterStep, cfg.QualityFilter: QualityFilterStep, cfg.Pii: PiiStep,
        cfg.Toxicity: ToxicityStep, cfg.Language: LanguageStep, cfg.Augment: AugmentStep,
    }
    if isinstance(config, cfg.Balance):
        return BalanceStep(reject, config, workdir)
    if isinstance(config, cfg.Decontaminate):
        return DecontaminateStep(reject, config, lambda: eval_records(config.eval_version_ids))
    if isinstance(config, cfg.GenerativeAugment):
        return GenerativeAugmentStep(reject, config, generators)
    if isinstance(config, cfg.LengthFilter):  # tokenizers are the service's models, by name
        return LengthFilterStep(reject, config, generators.models_dir if generators else None)
    return simple[type(config)](reject, config)  # type: ignore[call-arg]


def _guard(count: StepCount, max_fraction: float) -> None:
    removed = count.rows_in - count.rows_out
    if count.rows_in and removed / count.rows_in > max_fraction:
        raise ResourceExhausted(
            f"step '{count.step}' would remove {removed} of {count.rows_in} rows "
            f"({removed / count.rows_in:.1%}), more than max_removal_fraction={max_fraction:g}: loosen the "
            "step's parameters or raise max_removal_fraction if this is intended",
            reason="REMOVAL_GUARD",
        )


Batch: TypeAlias = list[Record] | pa.Table
"""Records as dicts, or as an Arrow table of ``RECORD_SCHEMA`` (kept so while steps are columnar)."""


def _rows(batch: Batch) -> int:
    return batch.num_rows if isinstance(batch, pa.Table) else len(batch)


def _process(step: Step, batch: Batch) -> Batch:
    if step.columnar:
        return step.process_table(batch if isinstance(batch, pa.Table) else to_table(batch))
    return step.process(batch.to_pylist() if isinstance(batch, pa.Table) else batch)


def _chain(batches: Iterator[Batch], step: Step, count: StepCount, max_fraction: float,
           progress: Progress) -> Iterator[Batch]:
    for batch in batches:
        count.rows_in += _rows(batch)
        out = _process(step, batch)
        count.rows_out += _rows(out)
        if _rows(out):
            yield out
    for out in step.finish():
        count.rows_out += _rows(out)
        if _rows(out):
            yield out
    count.rows_modified = step.rows_modified
    count.details = step.report()
    _guard(count, max_fraction)
    progress(count)


def run_pipeline(
    inputs: list[Path],
    config: cfg.PipelineConfig,
    staging: Path,
    *,
    eval_records: EvalRecords,
    progress: Progress = lambda _: None,
    generators: GeneratorProvider | None = None,
) -> PipelineResult:
    """Run the configured steps over the input shards into ``staging``.

    ``generators`` provides the models of ``generative_augment`` steps (None: such steps fail).

    Raises:
        ResourceExhausted: the removal guard tripped (the message gives the step and numbers).
        InvalidInput: a step's parameters cannot be used (e.g. a missing tokenizer folder).
    """
    return curate_batches(read_ahead(iter_tables(inputs)), config, staging, eval_records=eval_records,
                          progress=progress, generators=generators)


def curate_batches(
    source: Generator[Batch, None, None],
    config: cfg.PipelineConfig,
    staging: Path,
    *,
    eval_records: EvalRecords,
    progress: Progress = lambda _: None,
    generators: GeneratorProvider | None = None,
) -> PipelineResult:
    """Run the configured steps over batches of canonical records into ``staging``.

    ``source`` is closed when a step fails, so a producer behind it (a read-ahead thread, an
    ingest) stops at once. Raises as ``run_pipeline``.
    """
    staging.mkdir(parents=True, exist_ok=True)
    rejects = RejectsWriter(staging / "rejected.parquet")
    counts: list[StepCount] = []
    batches: Iterator[Batch] = source
    for step_config in config.steps:
        name = cfg.STEP_NAMES[type(step_config)]

        def reject(record: Record, fld: str, reason: str, name: str = name) -> None:
            prov = record["provenance"]
            rejects.add(RejectedRow(prov["row"], fld, reason, name, prov["source"]))

        step = build_step(step_config, reject, staging, eval_records, generators)
        counts.append(StepCount(name))
        batches = _chain(batches, step, counts[-1], config.max_removal_fraction, progress)
    writer = ShardWriter(staging / ("stage" if config.split else "data"))
    try:
        for batch in batches:
            if isinstance(batch, pa.Table):
                writer.add_table(batch)
            else:
                writer.add_many(batch)
    except BaseException:
        writer.discard()
        source.close()  # stops the read-ahead thread now rather than when the frames are freed
        raise
    shards = writer.close()
    if config.split:
        shards = apply_split(shards, config.split, staging / "data")
    return PipelineResult(shards, rejects.close(), rejects.count, counts)


def assign_splits(categories: list[str | None], split: cfg.SplitConfig, groups: list[object] | None = None) -> np.ndarray:
    """Deterministic split labels (0 train, 1 validation, 2 test) per row, stratified by category.

    Rows of one group (an original row and its augmented copies) share a label, so no variant
    of a training row leaks into validation or test. Within each stratum the groups are
    permuted by ``seed``; the first ``round(n * validation_ratio)`` go to validation and the
    next ``round(n * test_ratio)`` to test.
    """
    groups = groups if groups is not None else list(range(len(categories)))
    first: dict[object, int] = {}
    members: list[list[int]] = []
    for i, g in enumerate(groups):
        if g not in first:
            first[g] = len(members)
            members.append([])
        members[first[g]].append(i)
    strata: dict[str, list[int]] = {}
    for gi, rows in enumerate(members):
        category = categories[rows[0]]
        strata.setdefault((category or UNCATEGORIZED) if split.stratify else "", []).append(gi)
    labels = np.zeros(len(categories), dtype=np.int8)
    rng = np.random.default_rng(split.seed)
    for key in sorted(strata):
        gids = np.asarray(strata[key])
        order = gids[rng.permutation(len(gids))]
        n_val = round(len(gids) * split.validation_ratio)
        n_test = round(len(gids) * split.test_ratio)
        for label, chosen in ((1, order[:n_val]), (2, order[n_val : n_val + n_test])):
            for gi in chosen:
                labels[members[gi]] = label
    return labels


_SPLIT_NAMES = (Split.TRAIN.value, Split.VALIDATION.value, Split.TEST.value)


def apply_split(shards: ShardSet, split: cfg.SplitConfig, folder: Path) -> ShardSet:
    """Rewrite staged shards with the ``split`` column set."""
    categories: list[str | None] = []
    groups: list[object] = []
    for path in shards.files:
        table = pq.read_table(path, columns=["category", "provenance"])
        categories.extend(table.column("category").to_pylist())
        provenance = table.column("provenance").combine_chunks()
        groups.extend(zip(provenance.field("source").to_pylist(), provenance.field("row").to_pylist(), strict=True))
    labels = assign_splits(categories, split, groups)
    writer = ShardWriter(folder)
    index = 0
    for batch in iter_batches(shards.files):
        for record in batch:
            record["split"] = _SPLIT_NAMES[labels[index]]
            index += 1
        writer.add_many(batch)
    for path in shards.files:
        path.unlink()
    return writer.close()
