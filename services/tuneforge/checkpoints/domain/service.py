"""Checkpoint use cases: register, read, alias, retain, delete, pin, export.

Registration is the only way a checkpoint becomes visible: the engine's workers first write the
files straight to the object store (``tuneforge.common.storage`` checkpoint writer), then the
service checks that every listed file is there with the announced size and sha256, writes the
manifest object, and commits the row. A crash anywhere before the commit leaves nothing listed.
"""

from __future__ import annotations

import builtins
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tuneforge.checkpoints.domain.model import (
    BEST,
    DEFAULT_METRIC,
    LATEST,
    SERVICE_ONLY_ALIASES,
    Alias,
    CheckpointDraft,
    CheckpointKind,
    CheckpointOrder,
    ExportFormat,
    FieldViolation,
    Manifest,
    Pin,
    RetentionPolicy,
    check_alias_name,
    check_job_id,
    draft_violations,
    has_safetensors,
)
from tuneforge.checkpoints.domain.ports import CheckpointFiles, CheckpointRepository, Exporter, ExportResult
from tuneforge.checkpoints.domain.retention import (
    RetentionPlan,
    best_checkpoint,
    plan_retention,
    rank_by_metric,
)
from tuneforge.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    NotFound,
)
from tuneforge.common.public_text import echo

log = logging.getLogger(__name__)

DEFAULT_URL_EXPIRY = timedelta(hours=1)
MAX_URL_EXPIRY = timedelta(days=7)
DEFAULT_CHUNK = 1 << 20


@dataclass(frozen=True)
class Registration:
    """The result of ``register``: the manifest, whether it is new, what retention deleted."""

    manifest: Manifest
    created: bool
    retention_deleted: tuple[str, ...]


def _now() -> datetime:
    return datetime.now(UTC)


class CheckpointRegistry:
    """The checkpoint use cases, on a repository, the object store and an exporter.

    Args:
        repo: committed checkpoints, aliases, policies, pins.
        files: the tenant-confined object-store side.
        exporter: writes exports (None: ExportCheckpoint answers FAILED_PRECONDITION).
        clock: current UTC time (tests pass a fake one).
    """

    def __init__(
        self,
        repo: CheckpointRepository,
        files: CheckpointFiles,
        exporter: Exporter | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._repo = repo
        self._files = files
        self._exporter = exporter
        self._clock = clock

    # ---- register ----------------------------------------------------------------------------

    def register(self, tenant: str, draft: CheckpointDraft) -> Registration:
        """Check the files, commit the manifest last, move ``latest``/``best``, apply retention.

        Raises:
            InvalidInput: malformed request (every bad field listed).
            FailedPrecondition: a listed file is missing or differs from what the store recorded.
            AlreadyExists: another checkpoint with different content holds this job and step.
        """
        if violations := draft_violations(draft):
            raise InvalidInput.of(violations, what="checkpoint registration")
        digest = draft.content_digest()
        existing = self._find_step(tenant, draft.job_id, draft.step)
        if existing is not None:
            return Registration(self._same_or_conflict(existing, digest), False, ())
        self._check_files(tenant, draft)
        manifest = Manifest(
            checkpoint_id=f"ckpt_{uuid.uuid4().hex}",
            tenant=tenant,
            draft=draft,
            digest=digest,
            create_time=self._clock(),
        )
        self._files.write_manifest(tenant, manifest)
        stored = self._repo.insert_or_get(manifest)
        if stored.checkpoint_id != manifest.checkpoint_id:  # lost a race with an identical retry
            return Registration(self._same_or_conflict(stored, digest), False, ())
        log.info("registered checkpoint %s (tenant %s, job %s, step %d, %d files)",
                 manifest.checkpoint_id, tenant, draft.job_id, draft.step, len(draft.files))
        self._refresh_system_aliases(tenant, draft.job_id)
        deleted = self._apply_policy(tenant, draft.job_id).delete
        return Registration(self._get(tenant, manifest.checkpoint_id), True, deleted)

    def _find_step(self, tenant: str, job_id: str, step: int) -> Manifest | None:
        return next((m for m in self._repo.list_job(tenant, job_id) if m.step == step), None)

    @staticmethod
    def _same_or_conflict(existing: Manifest, digest: str) -> Manifest:
        if existing.digest != digest:
            raise AlreadyExists(
                f"job {echo(existing.job_id)} already has checkpoint {existing.checkpoint_id} at step "
                f"{existing.step} with different content: register under a new step, or delete "
                "that checkpoint first",
                reason="CHECKPOINT_STEP_TAKEN",
            )
        return existing

    def _check_files(self, tenant: str, draft: CheckpointDraft) -> None:
        problems: list[FieldViolation] = []
        for i, entry in enumerate(draft.files):
            stored = self._files.stat(tenant, draft.prefix, entry.path)
            where = f"files[{i}]"
            if stored is None:
                problems.append(FieldViolation(
                    f"{where}.path", f"{echo(entry.path)} is not in the object store under {echo(draft.prefix)}: "
                    "upload it (CheckpointWriter) before registering"))
            elif stored.size != entry.size:
                problems.append(FieldViolation(
                    f"{where}.size", f"{echo(entry.path)} is {stored.size} bytes in the store, "
                    f"{entry.size} announced: re-upload the file"))
            elif stored.sha256 != entry.sha256:
                problems.append(FieldViolation(
                    f"{where}.sha256", f"{echo(entry.path)} has sha256 {stored.sha256} in the store, "
                    f"{entry.sha256} announced: re-upload the file"))
        if problems:
            raise FailedPrecondition(
                f"checkpoint of job {echo(draft.job_id)} at step {draft.step} is not fully uploaded: "
                f"{len(problems)} file problem(s), first: {problems[0]}",
                violations=problems,
                reason="CHECKPOINT_FILES_INCOMPLETE",
            )

    # ---- read --------------------------------------------------------------------------------

    def get(self, tenant: str, ref: str) -> Manifest:
        """A checkpoint by id (``ckpt_...``) or by ``<job_id>@<alias>``.

        Raises:
            NotFound: no such checkpoint or alias for this tenant.
        """
        if "@" not in ref:
            return self._get(tenant, ref)
        job_id, _, name = ref.partition("@")
        if v := check_job_id(job_id, "checkpoint"):
            raise InvalidInput.of([v])
        check_alias_name(name)
        alias = self._repo.get_alias(tenant, job_id, name)
        if alias is None:
            raise NotFound(f"job {echo(job_id)} has no alias {echo(name)}: list aliases with ListAliases")
        return self._get(tenant, alias.checkpoint_id)

    def _get(self, tenant: str, checkpoint_id: str) -> Manifest:
        manifest = self._repo.get(tenant, checkpoint_id) if checkpoint_id else None
        if manifest is None:
            raise NotFound(f"checkpoint {echo(checkpoint_id)} does not exist: list them with ListCheckpoints")
        return manifest

    def list(
        self,
        tenant: str,
        job_id: str,
        order: CheckpointOrder = CheckpointOrder.STEP,
        metric: str = "",
        greater_is_better: bool = False,
    ) -> list[Manifest]:
        """A job's checkpoints by step (ascending) or by ``metric`` (best first; those lacking it last)."""
        if v := check_job_id(job_id):
            raise InvalidInput.of([v])
        checkpoints = self._repo.list_job(tenant, job_id)
        if order is CheckpointOrder.STEP:
            return checkpoints
        if not metric:
            raise InvalidInput.field_error("metric", "is empty: name the metric to order by, e.g. eval_loss")
        ranked = rank_by_metric(checkpoints, metric, greater_is_better)
        ids = {m.checkpoint_id for m in ranked}
        return ranked + [m for m in checkpoints if m.checkpoint_id not in ids]

    def read_file(
        self, tenant: str, checkpoint_id: str, path: str, offset: int = 0, chunk_size: int = DEFAULT_CHUNK
    ) -> Iterator[bytes]:
        """Stream a file from ``offset``, verified (errors before the first chunk are raised here).

        Raises:
            NotFound: no such checkpoint; InvalidInput: unknown path or bad offset.
        """
        manifest = self._get(tenant, checkpoint_id)
        entry = manifest.file(path)
        if not 0 <= offset <= entry.size:
            raise InvalidInput.field_error("offset", f"{offset} is outside 0..{entry.size} (size of {echo(path)})")
        return self._files.read(tenant, manifest, entry, offset, chunk_size)

    def download_url(
        self, tenant: str, checkpoint_id: str, path: str, expires_in_s: int = 0
    ) -> tuple[str, datetime]:
        """A presigned URL for one file and its expiry time (``expires_in_s`` 0: one hour).

        Raises:
            InvalidInput: expiry outside 1 s .. 7 days; unknown path.
        """
        max_s = int(MAX_URL_EXPIRY.total_seconds())
        if not 0 <= expires_in_s <= max_s:  # checked as a number: timedelta(2^62 s) overflows
            raise InvalidInput.field_error("expires_in_seconds", f"{expires_in_s} is outside 1 .. {max_s} "
                                                                 "(0: one hour)")
        expires = timedelta(seconds=expires_in_s) if expires_in_s else DEFAULT_URL_EXPIRY
        manifest = self._get(tenant, checkpoint_id)
        entry = manifest.file(path)
        issued = self._clock()
        return self._files.presign(tenant, manifest, entry, expires), issued + expires

    def latest_complete_checkpoint(self, tenant: str, job_id: str, *, deep: bool = True) -> Manifest | None:
        """The newest checkpoint whose every file is present and (``deep``) matches its sha256.

        Resume logic calls this: a corrupt or incomplete checkpoint is skipped (and logged) and the
        previous complete one is returned; None when there is none.
        """
        for manifest in sorted(self._repo.list_job(tenant, job_id), key=lambda m: -m.step):
            problem = self._verify(tenant, manifest, deep=deep)
            if problem is None:
                return manifest
            log.warning("checkpoint %s (job %s, step %d) skipped for resume: %s",
                        manifest.checkpoint_id, job_id, manifest.step, problem)
        return None

    def _verify(self, tenant: str, manifest: Manifest, *, deep: bool) -> str | None:
        for entry in manifest.draft.files:
            stored = self._files.stat(tenant, manifest.draft.prefix, entry.path)
            if stored is None or (stored.size, stored.sha256) != (entry.size, entry.sha256):
                return f"file {echo(entry.path)} is missing or differs from the manifest"
            if deep:
                try:
                    for _ in self._files.read(tenant, manifest, entry, 0, DEFAULT_CHUNK):
                        pass
                except (IntegrityError, NotFound) as exc:
                    return str(exc)
        return None

    # ---- aliases -----------------------------------------------------------------------------

    def set_alias(self, tenant: str, job_id: str, name: str, checkpoint_id: str) -> Alias:
        """Point an alias at a checkpoint of the same job, atomically; history kept.

        User aliases (e.g. ``production``) move only here. ``best`` may be moved here too (an
        evaluation marking the checkpoint that won on its metric); the service still re-points it
        by the retention metric on the next registration. ``latest`` is the service's alone.

        Raises:
            InvalidInput: bad name, or ``latest`` (the service moves it itself).
            NotFound: no such checkpoint; FailedPrecondition: it belongs to another job.
        """
        check_alias_name(name)
        if name in SERVICE_ONLY_ALIASES:
            raise InvalidInput.field_error(
                "alias", f"{echo(name)} is moved by the service after each registration: choose another name")
        manifest = self._get(tenant, checkpoint_id)
        if manifest.job_id != job_id:
            raise FailedPrecondition(
                f"checkpoint {checkpoint_id} belongs to job {echo(manifest.job_id)}, not {echo(job_id)}: "
                "aliases point at checkpoints of their own job")
        return self._repo.move_alias(tenant, job_id, name, checkpoint_id, self._clock())

    def list_aliases(self, tenant: str, job_id: str) -> builtins.list[Alias]:
        """The aliases of a job with their history."""
        if v := check_job_id(job_id):
            raise InvalidInput.of([v])
        return self._repo.list_aliases(tenant, job_id)

    def _refresh_system_aliases(self, tenant: str, job_id: str) -> None:
        checkpoints = self._repo.list_job(tenant, job_id)
        if not checkpoints:
            return
        policy = self._repo.get_policy(tenant, job_id) or RetentionPolicy(metric=DEFAULT_METRIC)
        targets = {
            LATEST: max(checkpoints, key=lambda m: m.step),
            BEST: best_checkpoint(checkpoints, policy.metric, policy.greater_is_better),
        }
        for name, target in targets.items():
            if target is None:
                continue
            current = self._repo.get_alias(tenant, job_id, name)
            if current is None or current.checkpoint_id != target.checkpoint_id:
                self._repo.move_alias(tenant, job_id, name, target.checkpoint_id, self._clock())

    # ---- retention and deletion --------------------------------------------------------------

    def set_policy(self, tenant: str, job_id: str, policy: RetentionPolicy) -> RetentionPlan:
        """Store a job's retention policy, re-point ``best`` by its metric and apply it now."""
        violations = policy.violations()
        if v := check_job_id(job_id):
            violations.insert(0, v)
        if violations:
            raise InvalidInput.of(violations, what="retention policy")
        self._repo.set_policy(tenant, job_id, policy)
        self._refresh_system_aliases(tenant, job_id)
        return self._apply_policy(tenant, job_id)

    def apply_retention(self, tenant: str, job_id: str) -> RetentionPlan:
        """Apply the job's policy now (a job without a policy keeps everything)."""
        if v := check_job_id(job_id):
            raise InvalidInput.of([v])
        return self._apply_policy(tenant, job_id)

    def _apply_policy(self, tenant: str, job_id: str) -> RetentionPlan:
        checkpoints = self._repo.list_job(tenant, job_id)
        policy = self._repo.get_policy(tenant, job_id)
        if policy is None:
            return RetentionPlan(keep=tuple(m.checkpoint_id for m in checkpoints), delete=())
        plan = plan_retention(checkpoints, policy, self._protected(tenant, checkpoints))
        by_id = {m.checkpoint_id: m for m in checkpoints}
        # A checkpoint pinned or aliased after the plan was made is kept (the repository checks).
        kept = {c for c in plan.delete if not self._remove(tenant, by_id[c])}
        if kept:
            plan = RetentionPlan(keep=tuple(c for c in by_id if c in kept or c in plan.keep),
                                 delete=tuple(c for c in plan.delete if c not in kept))
        if plan.delete:
            log.info("retention for job %s deleted %d checkpoint(s): %s",
                     job_id, len(plan.delete), ", ".join(plan.delete))
        return plan

    def _protected(self, tenant: str, checkpoints: builtins.list[Manifest]) -> set[str]:
        aliased = {m.checkpoint_id for m in checkpoints if m.aliases}
        pinned = {p.checkpoint_id for p in self._repo.list_pins(tenant, [m.checkpoint_id for m in checkpoints])}
        return aliased | pinned

    def delete(self, tenant: str, checkpoint_id: str, *, force: bool = False) -> None:
        """Delete a checkpoint; refused while aliased or pinned unless ``force``.

        Raises:
            NotFound: no such checkpoint.
            FailedPrecondition: referenced and not forced (the message names the references).
        """
        manifest = self._get(tenant, checkpoint_id)
        # The reference check happens inside the repository's hiding transaction: a pin or alias
        # that lands after any check made here would otherwise be dropped with the checkpoint.
        references = self._repo.begin_delete(tenant, checkpoint_id, force=force)
        if references:
            raise FailedPrecondition(
                f"checkpoint {checkpoint_id} is referenced ({', '.join(references)}): move the aliases, "
                "wait for the job to finish, or delete with force=true",
                reason="CHECKPOINT_REFERENCED",
            )
        self._purge(tenant, manifest)
        if manifest.aliases or force:
            self._refresh_system_aliases(tenant, manifest.job_id)

    def _remove(self, tenant: str, manifest: Manifest) -> bool:
        """Delete an unreferenced checkpoint; returns False when a pin or alias now protects it."""
        try:
            if self._repo.begin_delete(tenant, manifest.checkpoint_id, force=False):
                return False
        except NotFound:
            return True  # deleted meanwhile by another call
        self._purge(tenant, manifest)
        return True

    def _purge(self, tenant: str, manifest: Manifest) -> None:
        # Hidden first (begin_delete: readers stop seeing it), then the objects, then the row: a
        # crash in between leaves a hidden row whose folder a later delete or GC finishes.
        self._files.delete_folder(tenant, manifest.draft.prefix)
        self._repo.finish_delete(tenant, manifest.checkpoint_id)

    # ---- pins --------------------------------------------------------------------------------

    def pin(self, tenant: str, checkpoint_id: str, holder: str) -> Pin:
        """Protect a checkpoint from retention and deletion while ``holder`` (a job) uses it."""
        if v := check_job_id(holder, "holder"):
            raise InvalidInput.of([v])
        self._get(tenant, checkpoint_id)
        pin = Pin(checkpoint_id=checkpoint_id, holder=holder, create_time=self._clock())
        self._repo.add_pin(tenant, pin)
        return pin

    def unpin(self, tenant: str, checkpoint_id: str, holder: str) -> bool:
        """Release a pin; returns whether it existed."""
        return self._repo.remove_pin(tenant, checkpoint_id, holder)

    # ---- export ------------------------------------------------------------------------------

    def export(self, tenant: str, ref: str, fmt: ExportFormat, destination: str = "") -> ExportResult:
        """Export a checkpoint as a safetensors folder in the tenant's export area.

        Raises:
            FailedPrecondition: the format does not fit the checkpoint kind, or no exporter.
        """
        manifest = self.get(tenant, ref)
        kind = manifest.draft.kind
        fits = {ExportFormat.MERGED: CheckpointKind.LORA, ExportFormat.ADAPTER: CheckpointKind.LORA,
                ExportFormat.FULL: CheckpointKind.FULL}
        if fits[fmt] is not kind:
            raise FailedPrecondition(
                f"checkpoint {manifest.checkpoint_id} is a {kind.value} checkpoint: {fmt.value} export "
                f"needs a {fits[fmt].value} checkpoint")
        if not has_safetensors(manifest.draft):
            raise FailedPrecondition(
                f"checkpoint {manifest.checkpoint_id} holds no safetensors weights: only safetensors are "
                "exported (pickled weights are never loaded); re-save it with safe_serialization=True and "
                "register it again", reason="NO_SAFETENSORS")
        if fmt is ExportFormat.MERGED and not manifest.draft.lineage.base_model:
            raise FailedPrecondition(
                f"checkpoint {manifest.checkpoint_id} records no lineage.base_model: a merged export "
                "needs the base model the adapter was trained on")
        if self._exporter is None:
            raise FailedPrecondition("this service was started without export support")
        dest = destination or f"{manifest.checkpoint_id}/{fmt.value}"
        return self._exporter.export(tenant, manifest, fmt, dest)
