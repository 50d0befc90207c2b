"""Evaluation use cases: create/run, get/list, progress, cancel, compare, A/B pairs, best alias."""

from __future__ import annotations

import builtins
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from tuneforge.common import tracing
from tuneforge.common.auth import Identity
from tuneforge.common.errors import Cancelled, FailedPrecondition, InvalidInput, TuneforgeError
from tuneforge.common.idempotency import Idempotency, digest_of
from tuneforge.common.public_text import echo, public_message
from tuneforge.common.streams import follow
from tuneforge.evaluation.domain import examples as ex
from tuneforge.evaluation.domain import pairs as ab
from tuneforge.evaluation.domain import scoring
from tuneforge.evaluation.domain.metrics import WinRate
from tuneforge.evaluation.domain.model import (
    ErrorInfo,
    Evaluation,
    EvaluationSpec,
    Limits,
    Metric,
    MetricResult,
    ProgressEvent,
    Role,
    State,
)
from tuneforge.evaluation.domain.ports import (
    CheckpointAliases,
    DatasetLeases,
    DatasetReader,
    EvaluationRepository,
    ModelResolver,
    ModelRunner,
    ModelTask,
    ReportStore,
    ResolvedModel,
    SafetyScorer,
    TenantCredentials,
)

log = logging.getLogger(__name__)

BEST_ALIAS = "best"
STOPPED_MESSAGE = "the service stopped during the evaluation: create the evaluation again"
RESTARTED_MESSAGE = "the service restarted while the evaluation was queued or running: create the evaluation again"
_UNFINISHED = (State.QUEUED, State.RUNNING)


def lease_holder(evaluation: Evaluation) -> str:
    """The dataset-lease holder name of an evaluation (named by the dataset service when it refuses a delete)."""
    return f"evaluation:{evaluation.id}"


def read_versions(spec: EvaluationSpec) -> builtins.list[str]:
    """The dataset versions an evaluation reads, in request order, each once."""
    extra = (spec.forgetting_dataset,) if spec.forgetting_dataset and Metric.FORGETTING in spec.metrics else ()
    return builtins.list(dict.fromkeys(d.version_id for d in (*spec.datasets, *extra)))


def new_evaluation_id() -> str:
    """A time-ordered id: ``eval_<ms timestamp hex><random hex>``."""
    return f"eval_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


@dataclass
class Runners:
    """Where model tasks run: in-process always; Ray for jobs above the inline threshold, if set."""

    inline: ModelRunner
    remote: ModelRunner | None = None

    def pick(self, work_units: int, limits: Limits) -> ModelRunner:
        """The remote runner for large jobs when configured, else the in-process one."""
        if self.remote is not None and work_units > limits.inline_threshold_samples:
            return self.remote
        return self.inline


@dataclass
class Dependencies:
    """The ports the service is wired with (see ``app.py``).

    ``leases`` keeps every dataset version an evaluation reads from being deleted until it ends;
    ``credentials`` is the identity that releases them when the creator's token is gone (restart).
    """

    repository: EvaluationRepository
    reports: ReportStore
    datasets: DatasetReader
    models: ModelResolver
    runners: Runners
    executor: Executor
    leases: DatasetLeases
    credentials: TenantCredentials
    aliases: CheckpointAliases | None = None
    safety: SafetyScorer | None = None
    limits: Limits = field(default_factory=Limits)
    idempotency: Idempotency | None = None  # request ids (None: every create is a new evaluation)


class EvaluationService:
    """The evaluation use cases; every call is scoped by tenant."""

    def __init__(self, deps: Dependencies) -> None:
        self._d = deps
        self._cancel: dict[str, threading.Event] = {}
        # The creator of each evaluation this process runs (its token releases the leases at the end).
        self._callers: dict[str, Identity] = {}
        self._changed = threading.Condition()
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ create / read

    def create(self, caller: Identity, spec: EvaluationSpec) -> Evaluation:
        """Create an evaluation; with ``spec.request_id``, at most once per body (``common.idempotency``):
        an identical retry gets the same evaluation (a new one if that one FAILED), another body
        under the same id is ALREADY_EXISTS."""
        idem = self._d.idempotency
        if idem is None or not spec.request_id:
            return self._create(caller, spec)
        body = replace(spec, request_id="")
        digest = digest_of(json.dumps(asdict(body), sort_keys=True, default=lambda v: getattr(v, "value", str(v))))
        return idem.run(caller.tenant, "CreateEvaluation", spec.request_id, digest,
                        create=lambda: self._create(caller, body).id,
                        load=lambda evaluation_id: self.get(caller.tenant, evaluation_id),
                        retry_if=lambda e: e.state is State.FAILED)

    def _create(self, caller: Identity, spec: EvaluationSpec) -> Evaluation:
        """Validate, check the references, lease the dataset versions, store as QUEUED and start in the background.

        ``caller`` (tenant and bearer token) is kept in memory only,
        for the run's calls to the dataset and checkpoint services on the caller's behalf. Each
        dataset version read is leased (holder ``evaluation:<id>``) until the evaluation ends, so it
        cannot be deleted under the run; a create that fails holds no lease and records nothing.

        Raises:
            InvalidInput: a bad field (every one listed) or a split the dataset version lacks.
            NotFound: a dataset version, checkpoint or base model the caller cannot see.
            TuneforgeError: the dataset service's error when a lease cannot be taken.
        """
        spec.validate(self._d.limits)
        self._check_models(caller, spec)
        evaluation = Evaluation(new_evaluation_id(), caller.tenant, spec, State.QUEUED, datetime.now(UTC))
        self._lease_all(caller, evaluation)  # an unknown or foreign version fails here: NotFound
        try:
            self._check_datasets(caller, spec)  # splits, under the lease
            stored = self._d.repository.add(evaluation)
        except BaseException:
            self._release_leases(evaluation, caller)
            raise
        if stored.id != evaluation.id:  # an earlier call with the same request_id (it holds its own leases)
            self._release_leases(evaluation, caller)
            return stored
        self._callers[stored.id] = caller
        self._cancel[stored.id] = threading.Event()
        self._event(stored.tenant, stored.id, State.QUEUED, 0, 0, "queued")
        self._d.executor.submit(self._run_guarded, stored, caller)
        return stored

    def _check_models(self, caller: Identity, spec: EvaluationSpec) -> None:
        """Fail the create call, not the background run, on models the caller cannot read."""
        judge = spec.reward_model if Metric.REWARD_WIN_RATE in spec.metrics else None
        for ref in (spec.model, spec.baseline, judge):
            if ref is not None:
                self._d.models.check(caller, ref)

    def _check_datasets(self, caller: Identity, spec: EvaluationSpec) -> None:
        """Fail the create call, not the background run, on dataset splits the caller cannot read."""
        extra = (spec.forgetting_dataset,) if spec.forgetting_dataset and Metric.FORGETTING in spec.metrics else ()
        for d in (*spec.datasets, *extra):
            self._d.datasets.check(caller, d.version_id, d.split)

    def _lease_all(self, caller: Identity, evaluation: Evaluation) -> None:
        """Lease every version the evaluation reads; on a failure release those leased and re-raise."""
        leased: builtins.list[str] = []
        try:
            for version_id in read_versions(evaluation.spec):
                self._d.leases.acquire(caller, version_id, lease_holder(evaluation))
                leased.append(version_id)
        except BaseException:
            self._release_leases(evaluation, caller, leased)
            raise

    def _release_leases(self, evaluation: Evaluation, caller: Identity | None,
                        versions: Sequence[str] | None = None) -> None:
        """Release the evaluation's leases; failures are logged with the remedy, never raised."""
        holder = lease_holder(evaluation)
        if caller is None:
            log.warning("evaluation %s: no token of tenant %s is configured (TUNEFORGE_AUTH_TOKENS) to release its "
                        "dataset leases; release them with ReleaseVersionLease holder=%s", evaluation.id,
                        evaluation.tenant, holder)
            return
        for version_id in read_versions(evaluation.spec) if versions is None else versions:
            try:
                self._d.leases.release(caller, version_id, holder)
            except TuneforgeError as exc:
                log.warning("evaluation %s: could not release its lease on dataset version %s (%s); release it "
                            "with ReleaseVersionLease holder=%s", evaluation.id, version_id, exc.message, holder)

    def get(self, tenant: str, evaluation_id: str) -> Evaluation:
        """One evaluation of the tenant."""
        return self._d.repository.get(tenant, evaluation_id)

    def list(self, tenant: str, *, limit: int, offset: int) -> list[Evaluation]:
        """The tenant's evaluations, newest first."""
        return self._d.repository.list(tenant, limit=limit, offset=offset)

    def cancel(self, tenant: str, evaluation_id: str) -> Evaluation:
        """Stop a queued or running evaluation; returns it (a finished one is unchanged).

        A run of this process is asked to stop and ends itself as CANCELLED. An evaluation that no
        run of this process holds (queued, or orphaned by a restart) is ended here, by a
        compare-and-set that cannot overwrite a state a run reached meanwhile.
        """
        evaluation = self.get(tenant, evaluation_id)
        if not evaluation.state.terminal:
            flag = self._cancel.get(evaluation_id)
            if flag is None:
                self._finish(evaluation, State.CANCELLED, "cancelled (no run of this service held it)")
            else:
                flag.set()
                if evaluation.state is State.QUEUED:
                    self._finish(evaluation, State.CANCELLED, "cancelled before it started", expected=(State.QUEUED,))
        return self.get(tenant, evaluation_id)

    def fail_interrupted(self) -> int:
        """At start-up: fail the evaluations a stopped process left QUEUED or RUNNING; returns how many.

        Their runs died with that process; callers see FAILED (``ABORTED``) with the remedy. Their
        dataset leases are released as the tenant (its configured token: the creator's is gone).
        """
        failed = self._d.repository.fail_unfinished(RESTARTED_MESSAGE)
        for evaluation in failed:
            self._event(evaluation.tenant, evaluation.id, State.FAILED, 0, 0, f"failed: {RESTARTED_MESSAGE}")
            self._release_leases(evaluation, self._d.credentials.identity_for(evaluation.tenant))
        if failed:
            log.warning("failed %d evaluation(s) interrupted by a restart: %s",
                        len(failed), ", ".join(e.id for e in failed))
        return len(failed)

    def follow_events(self, tenant: str, evaluation_id: str, after: int,
                      is_active: Callable[[], bool]) -> Iterator[ProgressEvent]:
        """Events after ``after`` until the evaluation's final event (``common.streams.follow``)."""
        if after < 0:
            raise InvalidInput.field_error("after_sequence", f"is {after}: use 0 (from the start) or a sequence seen")
        self.get(tenant, evaluation_id)  # tenancy check, before anything is streamed

        def wait(seconds: float) -> None:
            with self._changed:
                self._changed.wait(seconds)

        return follow(lambda cursor: self._d.repository.events_after(tenant, evaluation_id, cursor),
                      cursor=after, sequence=lambda e: e.sequence, is_final=lambda e: e.state.terminal,
                      subject_ended=lambda: self.get(tenant, evaluation_id).state.terminal,
                      is_active=is_active, wait=wait)

    def wait_events(self, tenant: str, evaluation_id: str, after: int, timeout_s: float) -> builtins.list[ProgressEvent]:
        """Progress events after ``after``, waiting up to ``timeout_s`` for a new one."""
        if after < 0:
            raise InvalidInput.field_error("after_sequence", f"is {after}: use 0 (from the start) or a sequence seen")
        self.get(tenant, evaluation_id)  # tenancy check
        deadline = time.monotonic() + timeout_s
        while True:
            events = self._d.repository.events_after(tenant, evaluation_id, after)
            left = deadline - time.monotonic()
            if events or left <= 0:
                return events
            with self._changed:
                self._changed.wait(min(left, 1.0))

    # ------------------------------------------------------------------ comparison / A-B

    def compare(self, tenant: str, evaluation_id: str) -> tuple[builtins.list[scoring.Comparison], str, bool]:
        """Metric-by-metric comparison of a finished comparison evaluation."""
        evaluation = self._finished(tenant, evaluation_id, need_baseline=True)
        comparisons = scoring.compare(evaluation.results)
        return comparisons, scoring.summary(comparisons, evaluation.forgetting_flagged), evaluation.forgetting_flagged

    def export_pairs(self, tenant: str, evaluation_id: str, seed: int) -> builtins.list[dict[str, Any]]:
        """Blind, shuffled pairs of the two models' generations (stored with the hidden sides).

        Idempotent: the first export is stored and every later call returns it, so ratings already
        recorded against those pairs stay valid. ``seed`` orders the first export only.
        """
        if seed < 0:
            raise InvalidInput.field_error("seed", f"is {seed}: seeds are 0 or more")
        evaluation = self._finished(tenant, evaluation_id, need_baseline=True)
        if stored := self._d.repository.get_pairs(tenant, evaluation_id):
            return stored  # exported before: the same pairs and blinding, whatever the seed
        report = self._d.reports.get_report(tenant, evaluation.report_key)
        gens = report.get("generations", [])
        model = [g for g in gens if g["role"] == Role.MODEL.value]
        base = [g for g in gens if g["role"] == Role.BASELINE.value]
        pairs = ab.build_pairs(evaluation_id, model, base, seed)
        # Exported once: a repeated call returns the stored pairs (same blinding, ratings kept).
        return self._d.repository.save_pairs(tenant, evaluation_id, pairs)

    def samples(self, tenant: str, evaluation_id: str) -> builtins.list[dict[str, Any]]:
        """The evaluation's generations side by side, in dataset order: ``dataset_version_id``, ``index``,
        ``prompt``, ``model_output``, ``baseline_output`` (empty without a baseline), ``reference``.

        Raises:
            FailedPrecondition: the evaluation has not SUCCEEDED.
        """
        evaluation = self._finished(tenant, evaluation_id, need_baseline=False)
        gens = self._d.reports.get_report(tenant, evaluation.report_key).get("generations", [])
        return ab.side_by_side(gens)

    def record_ratings(self, tenant: str, evaluation_id: str, ratings: Sequence[Mapping[str, Any]]) -> int:
        """Validate and store human ratings of exported pairs."""
        self.get(tenant, evaluation_id)
        known = {p["pair_id"] for p in self._d.repository.get_pairs(tenant, evaluation_id)}
        if not known:
            raise FailedPrecondition(f"evaluation {evaluation_id} has no exported pairs: call ExportPairs first")
        ab.check_ratings(ratings, known)
        return self._d.repository.save_ratings(tenant, evaluation_id, ratings)

    def win_rates(self, tenant: str, evaluation_id: str) -> WinRate:
        """The model's win rate over the baseline from the recorded ratings."""
        self.get(tenant, evaluation_id)
        pairs = self._d.repository.get_pairs(tenant, evaluation_id)
        return ab.win_rates(pairs, self._d.repository.get_ratings(tenant, evaluation_id))

    def _finished(self, tenant: str, evaluation_id: str, *, need_baseline: bool) -> Evaluation:
        evaluation = self.get(tenant, evaluation_id)
        if evaluation.state is not State.SUCCEEDED:
            raise FailedPrecondition(
                f"evaluation {evaluation_id} is {evaluation.state.name}: wait until it has SUCCEEDED"
            )
        if need_baseline and evaluation.spec.baseline is None:
            raise FailedPrecondition(
                f"evaluation {evaluation_id} evaluated one model: create it with a baseline to compare"
            )
        return evaluation

    # ------------------------------------------------------------------ the run

    def shutdown(self) -> None:
        """Stop: queued runs are dropped (the next start-up fails them), running ones are asked to stop
        and end FAILED saying so; returns when no run touches storage any more."""
        self._stopping.set()
        for flag in list(self._cancel.values()):
            flag.set()
        self._d.executor.shutdown(wait=True, cancel_futures=True)

    def _run_guarded(self, evaluation: Evaluation, caller: Identity) -> None:
        try:
            with tracing.span("evaluation.run", {"tuneforge.tenant": evaluation.tenant,
                                                 "tuneforge.evaluation_id": evaluation.id}):
                self._run(evaluation, caller)
        except Cancelled:
            if self._stopping.is_set():
                evaluation.error = ErrorInfo("UNAVAILABLE", STOPPED_MESSAGE)
                self._finish(evaluation, State.FAILED, f"failed: {STOPPED_MESSAGE}")
            else:
                self._finish(evaluation, State.CANCELLED, "cancelled")
        except TuneforgeError as exc:
            log.warning("evaluation %s failed: %s", evaluation.id, exc)
            public = public_message(exc.message)  # stored and shown to the caller: bounded, no server path
            evaluation.error = ErrorInfo(exc.family.value, public, exc.field or "")
            self._finish(evaluation, State.FAILED, f"failed: {public}")
        except Exception:
            log.exception("evaluation %s failed unexpectedly", evaluation.id)
            evaluation.error = ErrorInfo("INTERNAL", "internal error while evaluating; see the service log")
            self._finish(evaluation, State.FAILED, "failed: internal error")
        finally:
            self._cancel.pop(evaluation.id, None)
            self._callers.pop(evaluation.id, None)

    def _run(self, evaluation: Evaluation, caller: Identity) -> None:
        spec, tenant = evaluation.spec, evaluation.tenant
        if self._is_cancelled(evaluation.id):
            raise Cancelled("cancelled")
        evaluation.state = State.RUNNING
        if not self._d.repository.save(evaluation, expected=(State.QUEUED,)):
            raise Cancelled("cancelled before it started")  # a cancel won the race
        data = {d.version_id: self._examples(caller, d) for d in spec.datasets}
        roles = [(Role.MODEL, spec.model)] + ([(Role.BASELINE, spec.baseline)] if spec.baseline else [])
        total = len(roles) * (sum(len(v) for v in data.values()) + self._forgetting_size(caller, spec))
        runner = self._d.runners.pick(total, self._d.limits)
        evaluation.placement = runner.name
        self._event(tenant, evaluation.id, State.RUNNING, 0, total, f"running on {runner.name}")
        report: dict[str, Any] = {"evaluation_id": evaluation.id, "generations": [], "placement": runner.name}
        progress = _Progress(self, evaluation.tenant, evaluation.id, total)
        resolved = {}
        # Forgetting always runs in this process; otherwise a runner elsewhere fetches the folders itself.
        forgetting = Metric.FORGETTING in spec.metrics and spec.forgetting_dataset is not None and spec.baseline
        local = runner.reads_local_folders or bool(forgetting)
        for role, ref in roles:
            resolved[role] = self._d.models.resolve(caller, ref, download=local)
            self._run_role(evaluation, role, resolved[role], data, runner, progress, report)
        self._forgetting(evaluation, caller, resolved, report)
        self._win_rate(evaluation, caller, report)
        report["best_alias"] = self._mark_best(evaluation, caller, resolved[Role.MODEL])
        report.update(_report_header(evaluation))
        evaluation.report_key, evaluation.report_uri = self._d.reports.put_report(tenant, evaluation.id, report)
        self._finish(evaluation, State.SUCCEEDED, "succeeded")

    def _run_role(
        self, evaluation: Evaluation, role: Role, resolved: ResolvedModel, data: Mapping[str, builtins.list[dict[str, Any]]],
        runner: ModelRunner, progress: _Progress, report: dict[str, Any],
    ) -> None:
        spec = evaluation.spec
        report.setdefault("resolved", {})[role.value] = {"checkpoint_id": resolved.checkpoint_id, "job_id": resolved.job_id}
        metrics = [m for m in spec.metrics if m is not Metric.FORGETTING]
        for version_id, examples in data.items():
            if not metrics:
                break
            task = self._task(resolved, examples, metrics, evaluation)
            raw = runner.run(task, progress.phase(f"{role.value} on {version_id}", len(examples)),
                             lambda: self._is_cancelled(evaluation.id))
            flagged = self._d.safety.flagged if self._d.safety else None
            evaluation.results += scoring.score(raw, metrics, role, version_id, flagged)
            for g in raw.get("generations", []):
                report["generations"].append({**g, "role": role.value, "dataset_version_id": version_id})

    def _task(self, resolved: Any, examples: builtins.list[dict[str, Any]], metrics: Sequence[Metric], evaluation: Evaluation) -> ModelTask:
        g = evaluation.spec.generation
        generation = {"max_new_tokens": g.max_new_tokens, "do_sample": g.do_sample, "temperature": g.temperature,
                      "top_p": g.top_p, "seed": g.seed, "stop": list(g.stop), "batch_size": g.batch_size}
        return ModelTask(str(resolved.model_dir), str(resolved.adapter_dir) if resolved.adapter_dir else None,
                         examples, [m.name.lower() for m in metrics], generation,
                         model_source=resolved.model_source, adapter_source=resolved.adapter_source)

    def _win_rate(self, evaluation: Evaluation, caller: Identity, report: dict[str, Any]) -> None:
        """METRIC_REWARD_WIN_RATE: the reward model scores both models' answers to each prompt."""
        spec = evaluation.spec
        if Metric.REWARD_WIN_RATE not in spec.metrics or spec.reward_model is None:
            return
        judge = self._d.models.resolve(caller, spec.reward_model)
        report["reward_model"] = {"checkpoint_id": judge.checkpoint_id, "job_id": judge.job_id}
        for version_id, pairs in scoring.answer_pairs(report["generations"]).items():
            task = ModelTask(str(judge.model_dir), str(judge.adapter_dir) if judge.adapter_dir else None, pairs,
                             ["reward_accuracy"], {})
            raw = self._d.runners.inline.run(
                task, _Progress(self, evaluation.tenant, evaluation.id, len(pairs)).phase(
                    f"reward model judging {version_id}", len(pairs)), lambda: self._is_cancelled(evaluation.id))
            evaluation.results += scoring.win_rate(raw["reward_pairs"], version_id)

    def _forgetting_size(self, caller: Identity, spec: EvaluationSpec) -> int:
        if Metric.FORGETTING not in spec.metrics or spec.forgetting_dataset is None:
            return 0
        return len(self._examples(caller, spec.forgetting_dataset))

    def _forgetting(self, evaluation: Evaluation, caller: Identity, resolved: Mapping[Role, ResolvedModel],
                    report: dict[str, Any]) -> None:
        spec = evaluation.spec
        if Metric.FORGETTING not in spec.metrics or spec.forgetting_dataset is None or spec.baseline is None:
            return
        fd = spec.forgetting_dataset
        examples = self._examples(caller, fd)
        ppl: dict[Role, float] = {}
        for role in (Role.MODEL, Role.BASELINE):
            raw = self._d.runners.inline.run(
                self._task(resolved[role], examples, [Metric.FORGETTING], evaluation),
                _Progress(self, evaluation.tenant, evaluation.id, len(examples)).phase(f"forgetting ({role.value})", len(examples)),
                lambda: self._is_cancelled(evaluation.id),
            )
            for r in scoring.score(raw, [Metric.PERPLEXITY], role, fd.version_id):
                evaluation.results.append(replace(r, name=f"general_{r.name}"))
                if r.name == "perplexity":
                    ppl[role] = r.value
        ratio = scoring.forgetting_ratio(ppl[Role.MODEL], ppl[Role.BASELINE])
        evaluation.forgetting_flagged = ratio > spec.forgetting_threshold
        evaluation.results.append(MetricResult(Role.MODEL, fd.version_id, "forgetting_ratio", ratio, len(examples)))
        report["forgetting"] = {"ratio": ratio, "threshold": spec.forgetting_threshold, "flagged": evaluation.forgetting_flagged}

    def _mark_best(self, evaluation: Evaluation, caller: Identity, model: ResolvedModel) -> dict[str, Any] | None:
        """Move the checkpoint service's ``best`` alias to the model if it beat the baseline on the metric."""
        spec = evaluation.spec
        if not spec.mark_best_by:
            return None
        wins = [c for c in scoring.compare(evaluation.results) if c.name == spec.mark_best_by]
        if spec.baseline is None or not wins:
            raise FailedPrecondition(
                f"mark_best_by={echo(spec.mark_best_by)} was not computed for both models: request a metric "
                "that produces it and a baseline"
            )
        won = all(c.model_better for c in wins)
        if won:
            if self._d.aliases is None:
                raise FailedPrecondition("no checkpoint service is configured: set TUNEFORGE_CHECKPOINTS_ADDRESS")
            # The resolved id: the request may name the checkpoint as <job_id>@<alias>.
            self._d.aliases.set_alias(caller, model.job_id, BEST_ALIAS, model.checkpoint_id)
        return {"metric": spec.mark_best_by, "moved": won, "job_id": model.job_id, "checkpoint_id": model.checkpoint_id}

    def _examples(self, caller: Identity, d: Any) -> builtins.list[dict[str, Any]]:
        limit = min(d.max_samples or self._d.limits.max_samples, self._d.limits.max_samples)
        records = self._d.datasets.read(caller, d.version_id, d.split, limit)
        return ex.to_examples(records, max_samples=limit)

    # ------------------------------------------------------------------ state

    def _is_cancelled(self, evaluation_id: str) -> bool:
        flag = self._cancel.get(evaluation_id)
        return self._stopping.is_set() or (flag is not None and flag.is_set())

    def _event(self, tenant: str, evaluation_id: str, state: State, done: int, total: int, message: str) -> None:
        self._d.repository.add_event(tenant, evaluation_id, state, done, total, message)
        with self._changed:
            self._changed.notify_all()

    def _finish(self, evaluation: Evaluation, state: State, message: str,
                expected: Sequence[State] = _UNFINISHED) -> bool:
        """End the evaluation unless it has ended (or left ``expected``) meanwhile; returns whether it did.

        Its dataset leases are released as its creator when this process ran it, else as the tenant
        (an evaluation no run of this process holds). When the save can fail only on an evaluation
        that has ended already, they are released first, so whoever sees it ended finds the versions
        free; otherwise (a cancel racing the run's start) only once the save succeeded.
        """
        caller = self._callers.get(evaluation.id) or self._d.credentials.identity_for(evaluation.tenant)
        early = set(_UNFINISHED) <= set(expected)
        if early:
            self._release_leases(evaluation, caller)
        evaluation.state = state
        evaluation.ended_at = datetime.now(UTC)
        if not self._d.repository.save(evaluation, expected=expected):
            return False
        if not early:
            self._release_leases(evaluation, caller)
        self._event(evaluation.tenant, evaluation.id, state, 0, 0, message)
        return True


class _Progress:
    """Turns per-phase engine progress into evaluation-wide events; raises Cancelled when asked."""

    def __init__(self, service: EvaluationService, tenant: str, evaluation_id: str, total: int) -> None:
        self._s, self._tenant, self._id, self._total, self._base = service, tenant, evaluation_id, total, 0

    def phase(self, name: str, size: int) -> Callable[[int, int], None]:
        start = self._base
        self._base += size

        def report(done: int, total: int) -> None:
            if self._s._is_cancelled(self._id):
                raise Cancelled("cancelled")
            scaled = start + (size * done // total if total else size)
            self._s._event(self._tenant, self._id, State.RUNNING, min(scaled, self._total), self._total, name)

        return report


def _report_header(evaluation: Evaluation) -> dict[str, Any]:
    spec = evaluation.spec
    return {
        "model": spec.model.to_dict(),
        "baseline": spec.baseline.to_dict() if spec.baseline else None,
        "datasets": [d.to_dict() for d in spec.datasets],
        "metrics": [m.name for m in spec.metrics],
        "results": [
            {"role": r.role.value, "dataset_version_id": r.dataset_version_id, "name": r.name, "value": r.value,
             "count": r.count, "ci_low": r.ci_low, "ci_high": r.ci_high}
            for r in evaluation.results
        ],
        "forgetting_flagged": evaluation.forgetting_flagged,
    }
