"""Use cases of the dataset service: ingest, versions, preview, stats, rejects, leases, mixtures.

Every method takes the caller's tenant first; a resource of another tenant is NOT_FOUND.
A version is staged locally, published to the object store (manifest last) and only then
recorded in the catalog; a failure at any point removes what was published, so a malformed
upload leaves nothing behind.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pyarrow.parquet as pq

from tuneforge.common.db import utcnow
from tuneforge.common.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidInput,
    NotFound,
    PermissionDenied,
)
from tuneforge.common.public_text import echo
from tuneforge.common.storage import tenant_prefix
from tuneforge.common.workdirs import WorkFolders
from tuneforge.datasets.domain import config as cfg
from tuneforge.datasets.domain.ingest import IngestLimits, IngestOptions, IngestResult, ingest_file
from tuneforge.datasets.domain.model import Catalog, Dataset, Version, new_id
from tuneforge.datasets.domain.shards import ShardSet, ShardWriter, iter_batches, iter_records
from tuneforge.datasets.domain.stats import compute_stats
from tuneforge.datasets.domain.steps_gen import GeneratorProvider, check_models
from tuneforge.datasets.domain.tokens import WhitespaceCounter, token_counter

MAX_PAGE = 1000
MAX_PREVIEW = 500
WORK_PREFIXES = ("upload-", "stage-", "register-")  # the temporary folders of the work folder
MAX_MIXTURE_COMPONENTS = 100
MAX_MIXTURE_WEIGHT = 1e6


class VersionFiles(Protocol):
    """Object-store access for versions (``adapters.objects.StoreVersionFiles``)."""

    def prefix(self, tenant: str, dataset_id: str, version_id: str) -> str: ...
    def uri(self, prefix: str) -> str: ...
    def publish(self, prefix: str, files: list[Path], rejected: Path | None, extra: dict[str, Any]) -> None: ...
    def fetch(self, prefix: str, version_id: str) -> tuple[list[Path], Path | None]: ...
    def delete(self, prefix: str, version_id: str) -> None: ...
    def open_source(self, key: str, dest: Path) -> Path: ...


@dataclass(frozen=True)
class Staged:
    """A version ready to publish."""

    shards: ShardSet
    rejected: Path | None
    rejected_count: int
    document: dict[str, Any]
    parent_version_id: str = ""


class DatasetCatalogService:
    """Datasets and versions for many tenants."""

    def __init__(self, catalog: Catalog, files: VersionFiles, work_dir: Path, store_uri: str,
                 limits: IngestLimits | None = None, generators: GeneratorProvider | None = None) -> None:
        self.catalog = catalog
        self.generators = generators  # the models generative_augment steps may use
        self.files = files
        self.work_dir = work_dir
        # Without the query (endpoint options): sources are named s3://bucket/key or file:///dir/key.
        self.store_uri = store_uri.split("?", 1)[0].rstrip("/")
        self.limits = limits or IngestLimits()
        # Spools, staging and downloads: tracked, so leftovers of a crash are swept (``WorkFolders``).
        self.folders = WorkFolders(work_dir, WORK_PREFIXES)

    def staging(self) -> Path:
        """A fresh local staging folder (the caller hands it back with ``discard``)."""
        return self.folders.make("stage-")

    def discard(self, folder: Path) -> None:
        """Remove a folder made by ``staging`` (or another ``folders.make``)."""
        self.folders.release(folder)

    # ---- ingest -------------------------------------------------------------------------
    def ingest(self, tenant: str, dataset_name: str, description: str, path: Path, options: IngestOptions,
               curation: cfg.PipelineConfig | None = None) -> tuple[Dataset, Version]:
        """Validate a local file and publish it as a new version (request ids: ``common.idempotency``).

        Without ``curation`` the version holds the validated rows (a raw version); with it, the
        validated rows go through the steps in the same pass and only the curated rows are stored.
        """
        if not dataset_name.strip():
            raise InvalidInput.field_error("dataset_name", "is empty: name the dataset")
        if curation:
            cfg.check_pipeline(curation, "curation.")
            check_models(curation, self.generators, "curation.")
        staging = self.staging()
        try:
            result = ingest_file(path, options, staging, limits=self.limits, curation=curation,
                                 eval_records=lambda ids: self.eval_records(tenant, ids), generators=self.generators)
            document = _ingest_document(options, result, curation)
            staged = Staged(result.shards, result.rejected_path, _rejected_total(result), document)
            return self.publish(tenant, dataset_name, description, staged)
        finally:
            self.discard(staging)

    def eval_records(self, tenant: str, version_ids: Iterable[str]) -> Iterator[dict[str, Any]]:
        """The records of several versions in turn (decontamination's evaluation sets)."""
        for version_id in version_ids:
            yield from self.records(tenant, version_id)

    def register(self, tenant: str, dataset_name: str, source_uri: str, options: IngestOptions,
                 curation: cfg.PipelineConfig | None = None) -> tuple[Dataset, Version]:
        """Ingest an object already in the service's store, under the caller's tenant prefix."""
        key = self._source_key(tenant, source_uri)
        download = self.folders.make("register-")
        try:
            local = self.files.open_source(key, download / "source")
            return self.ingest(tenant, dataset_name, "", local, options, curation)
        finally:
            self.discard(download)

    def _source_key(self, tenant: str, uri: str) -> str:
        if not uri.startswith(self.store_uri + "/"):
            raise InvalidInput.field_error(
                "source_uri", f"must be an object in this service's store: start it with {self.store_uri}/")
        key = uri[len(self.store_uri) + 1 :]
        if not key.startswith(tenant_prefix(tenant)):
            raise PermissionDenied(f"source_uri is outside your tenant's area: use {self.store_uri}/{tenant_prefix(tenant)}...")
        return key

    # ---- publishing --------------------------------------------------------------------
    def publish(self, tenant: str, dataset_name: str, description: str, staged: Staged) -> tuple[Dataset, Version]:
        """Upload a staged version (manifest last), then record it; undo the upload on failure."""
        stats = compute_stats(staged.shards.files, WhitespaceCounter())
        kinds = staged.shards.kinds
        kind = max(kinds, key=lambda k: kinds[k]) if kinds else "text"
        found = self.catalog.find_dataset(tenant, dataset_name)
        dataset = found or Dataset(new_id("ds"), tenant, dataset_name, description, kind, utcnow())
        version_id = new_id("dsv")
        prefix = self.files.prefix(tenant, dataset.id, version_id)
        document = {**staged.document, "split_counts": staged.shards.split_counts, "stats": stats,
                    "rejected_count": staged.rejected_count, "content_hash": staged.shards.content_hash}
        self.files.publish(prefix, staged.shards.files, staged.rejected, {"version_id": version_id, **document})
        try:
            dataset = self.catalog.get_or_create_dataset(dataset)
            version = Version(version_id, tenant, dataset.id, staged.shards.content_hash, staged.parent_version_id,
                              staged.shards.rows, kind, prefix, utcnow(), None, document)
            self.catalog.add_version(version)
        except BaseException:
            self.files.delete(prefix, version_id)
            raise
        dataset.latest_version_id = version_id
        return dataset, version

    # ---- reads -------------------------------------------------------------------------
    def _dataset_of(self, version: Version) -> Dataset:
        dataset = self.catalog.find_dataset(version.tenant, version.dataset_id)
        if dataset is None:
            raise NotFound(f"dataset {echo(version.dataset_id)} not found")
        return dataset

    def get_dataset(self, tenant: str, ref: str) -> Dataset:
        """By id or name; NotFound otherwise."""
        dataset = self.catalog.find_dataset(tenant, ref) if ref else None
        if dataset is None:
            raise NotFound(f"dataset {echo(ref)} not found: check the id or name (ListDatasets shows yours)")
        return dataset

    def list_datasets(self, tenant: str, offset: int, limit: int) -> list[Dataset]:
        """A page of datasets."""
        return self.catalog.list_datasets(tenant, offset, limit)

    def get_version(self, tenant: str, version_id: str) -> Version:
        """One version; NotFound otherwise."""
        version = self.catalog.get_version(tenant, version_id) if version_id else None
        if version is None:
            raise NotFound(f"dataset version {echo(version_id)} not found: check the id (ListDatasetVersions shows yours)")
        return version

    def list_versions(self, tenant: str, ref: str, offset: int, limit: int) -> list[Version]:
        """Versions of a dataset, newest first."""
        return self.catalog.list_versions(tenant, self.get_dataset(tenant, ref).id, offset, limit)

    def local_files(self, version: Version) -> tuple[list[Path], Path | None]:
        """Local, verified copies of a version's shards and rejected report."""
        return self.files.fetch(version.prefix, version.id)

    def records(self, tenant: str, version_id: str) -> Iterator[dict[str, Any]]:
        """Stream a version's canonical records."""
        shards, _ = self.local_files(self.get_version(tenant, version_id))
        return iter_records(shards)

    def preview(self, tenant: str, version_id: str, split: str, offset: int, limit: int) -> list[dict[str, Any]]:
        """Rows of a version (optionally of one split) from ``offset``."""
        if not 0 <= limit <= MAX_PREVIEW:
            raise InvalidInput.field_error("limit", f"is {limit}: use 0 (20 rows) up to {MAX_PREVIEW}")
        limit = limit or 20
        if offset < 0:
            raise InvalidInput.field_error("offset", "is negative: use 0 or more")
        out: list[dict[str, Any]] = []
        seen = 0
        for record in self.records(tenant, version_id):
            if split and record.get("split") != split:
                continue
            if seen >= offset:
                out.append(record)
                if len(out) >= limit:
                    break
            seen += 1
        return out

    def stats(self, tenant: str, version_id: str, tokenizer: str) -> dict[str, Any]:
        """Stats of a version; with a tokenizer, token lengths are recounted with it."""
        version = self.get_version(tenant, version_id)
        stats = dict(version.document.get("stats", {}))
        if tokenizer:
            shards, _ = self.local_files(version)
            models_dir = self.generators.models_dir if self.generators else None
            stats = compute_stats(shards, token_counter(tokenizer, models_dir=models_dir))
        steps = version.document.get("steps", [])
        stats["duplicates_removed"] = sum(s["rows_in"] - s["rows_out"] for s in steps
                                          if s["step"] in ("exact_dedup", "near_dedup"))
        pii: dict[str, int] = next((s["details"].get("found", {}) for s in steps if s["step"] == "pii"), {})
        stats["pii_found"] = dict(pii)
        return stats

    def rejected_rows(self, tenant: str, version_id: str, offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """A page of the version's rejected-rows report and the total."""
        version = self.get_version(tenant, version_id)
        _, path = self.local_files(version)
        if path is None:
            return [], 0
        table = pq.read_table(path)
        return table.slice(offset, limit).to_pylist(), table.num_rows

    # ---- deletes and leases ------------------------------------------------------------
    def _refuse_if_leased(self, tenant: str, version_ids: list[str]) -> None:
        leases = self.catalog.leases(tenant, version_ids)
        if leases:
            held = "; ".join(f"{v} by {', '.join(h)}" for v, h in sorted(leases.items()))
            raise FailedPrecondition(f"version in use ({held}): wait for the jobs to end or release their leases")

    def delete_version(self, tenant: str, version_id: str) -> None:
        """Delete one version unless leased."""
        version = self.get_version(tenant, version_id)
        self._refuse_if_leased(tenant, [version.id])
        self.catalog.delete_version(tenant, version.id)
        self.files.delete(version.prefix, version.id)

    def delete_dataset(self, tenant: str, ref: str) -> None:
        """Delete a dataset and every version unless one is leased."""
        dataset = self.get_dataset(tenant, ref)
        versions = self.catalog.list_versions(tenant, dataset.id, 0, 1_000_000)
        self._refuse_if_leased(tenant, [v.id for v in versions])
        self.catalog.delete_dataset(tenant, dataset.id)
        for version in versions:
            self.files.delete(version.prefix, version.id)

    def acquire_lease(self, tenant: str, version_id: str, holder: str) -> Version:
        """Mark a version as used by ``holder`` (e.g. ``job:<id>``); idempotent."""
        if not holder.strip():
            raise InvalidInput.field_error("holder", "is empty: name the job, e.g. 'job:<id>'")
        version = self.get_version(tenant, version_id)
        self.catalog.add_lease(tenant, version.id, holder)
        return version

    def release_lease(self, tenant: str, version_id: str, holder: str) -> bool:
        """Forget a lease; returns whether one was held."""
        self.get_version(tenant, version_id)
        return self.catalog.remove_lease(tenant, version_id, holder)

    # ---- mixtures ----------------------------------------------------------------------
    def create_mixture(self, tenant: str, dataset_name: str, components: list[tuple[str, float, str]],
                       total_rows: int, seed: int) -> Version:
        """Sample several versions by weight into one new version, each row labelled with its task."""
        self._check_mixture(components, total_rows, seed)
        versions = [self.get_version(tenant, vid) for vid, _, _ in components]
        total_weight = sum(w for _, w, _ in components)
        shares = [w / total_weight for _, w, _ in components]
        if not total_rows:
            total_rows = int(min(v.row_count / s for v, s in zip(versions, shares, strict=True)))
        wanted = [round(total_rows * s) for s in shares]
        rng = random.Random(seed)
        staging = self.staging()
        try:
            writer = ShardWriter(staging / "data")
            for version, n, (_, _, task) in zip(versions, wanted, components, strict=True):
                label = task or self._dataset_of(version).name
                self._sample_into(writer, version, n, label, rng)
            shards = writer.close()
            document = {"pipeline": {"mixture": [{"version_id": v, "weight": w, "task": t} for v, w, t in components],
                                     "total_rows": total_rows, "seed": seed},
                        "steps": [{"step": "mixture", "rows_in": sum(v.row_count for v in versions),
                                   "rows_out": shards.rows, "rows_modified": 0, "details": {}}]}
            _, version = self.publish(tenant, dataset_name, "", Staged(shards, None, 0, document))
            return version
        finally:
            self.discard(staging)

    def _check_mixture(self, components: list[tuple[str, float, str]], total_rows: int, seed: int) -> None:
        """Every problem of a mixture request at once (ranges documented in the proto)."""
        out: list[FieldViolation] = []
        if not components:
            out.append(FieldViolation("components", "is empty: give at least one version and weight"))
        if len(components) > MAX_MIXTURE_COMPONENTS:
            out.append(FieldViolation("components", f"has {len(components)} entries: at most {MAX_MIXTURE_COMPONENTS}"))
        for i, (_, weight, _) in enumerate(components[:MAX_MIXTURE_COMPONENTS]):
            if not (math.isfinite(weight) and 0 < weight <= MAX_MIXTURE_WEIGHT):
                out.append(FieldViolation(f"components[{i}].weight", f"is {weight}: give a weight in "
                                          f"(0, {MAX_MIXTURE_WEIGHT:g}] (only the ratios matter)"))
        cap = self.limits.max_mixture_rows
        if not 0 <= total_rows <= cap:
            out.append(FieldViolation("total_rows", f"is {total_rows}: use 0 (as many as the weights allow "
                                      f"without repeating rows) up to {cap} (TUNEFORGE_MAX_MIXTURE_ROWS)"))
        if seed < 0:
            out.append(FieldViolation("seed", f"is {seed}: seeds are 0 or more"))
        if out:
            raise InvalidInput.of(out, "mixture")

    def _sample_into(self, writer: ShardWriter, version: Version, n: int, task: str, rng: random.Random) -> None:
        shards, _ = self.local_files(version)
        # Oversampling repeats every row n // rows times and the first n % rows once more: counted,
        # never materialised as a list of n indices (n is capped by max_mixture_rows, not by memory).
        counts: dict[int, int] = {}
        if n <= version.row_count:
            counts = dict.fromkeys(rng.sample(range(version.row_count), n), 1)
        else:
            whole, extra = divmod(n, version.row_count)
            counts = {i: whole + (1 if i < extra else 0) for i in range(version.row_count)}
        index = 0
        for batch in iter_batches(shards):
            for record in batch:
                for _ in range(counts.get(index, 0)):
                    writer.add({**record, "category": task, "split": None})
                index += 1


def _rejected_total(result: IngestResult) -> int:
    return result.rows_rejected + (result.curation.rejected_count if result.curation else 0)


def _ingest_document(options: IngestOptions, result: IngestResult, curation: cfg.PipelineConfig | None) -> dict[str, Any]:
    """A version's lineage document for an ingest (and the curation run inside it, if any)."""
    pipeline: dict[str, Any] = {"ingest": {"file_name": options.file_name, "format": result.format.value,
                                           "policy": options.policy.value,
                                           "max_tokens_per_row": options.max_tokens_per_row}}
    steps = [{"step": "validate", "rows_in": result.rows_read, "rows_out": result.rows_accepted,
              "rows_modified": 0, "details": {"rejected": result.rows_rejected}}]
    if result.curation and curation:
        pipeline["curation"] = curation.to_dict()
        steps += [count.as_dict() for count in result.curation.steps]
    return {
        "pipeline": pipeline,
        "steps": steps,
        "validation": {"rows_read": result.rows_read, "rows_accepted": result.rows_accepted,
                       "rows_rejected": result.rows_rejected, "format": result.format.value},
        "sources": result.sources,
    }


def request_key() -> str:
    """A random id for internal requests."""
    return uuid.uuid4().hex
