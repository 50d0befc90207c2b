"""SQLAlchemy repository of evaluations, progress events, A/B pairs and ratings (SQLite or PostgreSQL)."""

from __future__ import annotations

import builtins
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import CursorResult, RowMapping, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError as SqlIntegrityError
from sqlalchemy.orm import Session, sessionmaker

from tuneforge.common.db import session_scope
from tuneforge.common.errors import ErrorFamily, NotFound
from tuneforge.common.public_text import echo
from tuneforge.evaluation.adapters.tables import evaluations, events, pairs, ratings
from tuneforge.evaluation.domain.model import (
    DatasetRef,
    ErrorInfo,
    Evaluation,
    EvaluationSpec,
    GenerationOptions,
    Metric,
    MetricResult,
    ModelRef,
    ProgressEvent,
    Role,
    State,
)


def spec_to_json(spec: EvaluationSpec) -> dict[str, Any]:
    """The spec as a JSON document."""
    g = spec.generation
    return {
        "model": spec.model.to_dict(),
        "baseline": spec.baseline.to_dict() if spec.baseline else None,
        "datasets": [d.to_dict() for d in spec.datasets],
        "metrics": [m.name for m in spec.metrics],
        "generation": {**g.__dict__, "stop": list(g.stop)},
        "forgetting_dataset": spec.forgetting_dataset.to_dict() if spec.forgetting_dataset else None,
        "forgetting_threshold": spec.forgetting_threshold,
        "mark_best_by": spec.mark_best_by,
        "request_id": spec.request_id,
        "reward_model": spec.reward_model.to_dict() if spec.reward_model else None,
    }


def spec_from_json(doc: Mapping[str, Any]) -> EvaluationSpec:
    """Inverse of ``spec_to_json``."""
    g = dict(doc["generation"])
    g["stop"] = tuple(g.get("stop", ()))
    return EvaluationSpec(
        model=ModelRef(**doc["model"]),
        baseline=ModelRef(**doc["baseline"]) if doc.get("baseline") else None,
        reward_model=ModelRef(**doc["reward_model"]) if doc.get("reward_model") else None,
        datasets=tuple(DatasetRef(**d) for d in doc["datasets"]),
        metrics=tuple(Metric[m] for m in doc["metrics"]),
        generation=GenerationOptions(**g),
        forgetting_dataset=DatasetRef(**doc["forgetting_dataset"]) if doc.get("forgetting_dataset") else None,
        forgetting_threshold=doc["forgetting_threshold"],
        mark_best_by=doc["mark_best_by"],
        request_id=doc["request_id"],
    )


def _results_to_json(results: Sequence[MetricResult]) -> list[dict[str, Any]]:
    return [{**r.__dict__, "role": r.role.value} for r in results]


def _results_from_json(rows: Sequence[Mapping[str, Any]]) -> list[MetricResult]:
    return [MetricResult(**{**r, "role": Role(r["role"])}) for r in rows]


class SqlEvaluationRepository:
    """Implements ``EvaluationRepository``; every query filters on the tenant."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def add(self, evaluation: Evaluation) -> Evaluation:
        """Insert; an existing (tenant, request_id) returns the stored evaluation instead."""
        rid = evaluation.spec.request_id or None
        if rid:
            existing = self._by_request_id(evaluation.tenant, rid)
            if existing is not None:
                return existing
        try:
            with session_scope(self._sessions) as s:
                s.execute(insert(evaluations).values(**self._row(evaluation), request_id=rid))
        except SqlIntegrityError:
            found = self._by_request_id(evaluation.tenant, rid) if rid else None
            if found is None:
                raise
            return found  # a concurrent create with the same request_id won
        return evaluation

    def _by_request_id(self, tenant: str, request_id: str) -> Evaluation | None:
        with session_scope(self._sessions) as s:
            row = s.execute(
                select(evaluations).where(evaluations.c.tenant == tenant, evaluations.c.request_id == request_id)
            ).mappings().first()
            return _from_row(row) if row else None

    def get(self, tenant: str, evaluation_id: str) -> Evaluation:
        """One evaluation; NotFound for another tenant's."""
        with session_scope(self._sessions) as s:
            row = s.execute(
                select(evaluations).where(evaluations.c.tenant == tenant, evaluations.c.id == evaluation_id)
            ).mappings().first()
        if row is None:
            raise NotFound(f"evaluation {echo(evaluation_id)} not found: list evaluations to see the ids you can read")
        return _from_row(row)

    def list(self, tenant: str, *, limit: int, offset: int) -> list[Evaluation]:
        """Newest first."""
        q = (select(evaluations).where(evaluations.c.tenant == tenant)
             .order_by(evaluations.c.created_at.desc(), evaluations.c.id.desc()).limit(limit).offset(offset))
        with session_scope(self._sessions) as s:
            return [_from_row(r) for r in s.execute(q).mappings()]

    def save(self, evaluation: Evaluation, *, expected: Collection[State] = ()) -> bool:
        """Update the mutable columns of the tenant's evaluation.

        Args:
            evaluation: the evaluation (its tenant scopes the update).
            expected: when given, update only if the stored state is one of these (a compare-and-set
                that a concurrent cancel or finish cannot be overwritten by).

        Returns:
            Whether a row was updated.
        """
        row = self._row(evaluation)
        for key in ("id", "tenant", "spec", "created_at"):
            row.pop(key)
        q = update(evaluations).where(evaluations.c.tenant == evaluation.tenant, evaluations.c.id == evaluation.id)
        if expected:
            q = q.where(evaluations.c.state.in_([s.name for s in expected]))
        with session_scope(self._sessions) as s:
            return bool(cast(CursorResult[Any], s.execute(q.values(**row))).rowcount)

    def fail_unfinished(self, message: str) -> builtins.list[Evaluation]:
        """Mark every QUEUED or RUNNING evaluation FAILED (ABORTED): no run of this process owns them.

        Called at start-up: the runs of a process that stopped are gone, and without this their
        evaluations would stay RUNNING forever. Returns the evaluations it failed.
        """
        unfinished = [State.QUEUED.name, State.RUNNING.name]
        error = ErrorInfo(ErrorFamily.ABORTED.value, message)
        failed = []
        with session_scope(self._sessions) as s:
            for row in s.execute(select(evaluations).where(evaluations.c.state.in_(unfinished))).mappings().all():
                ended = datetime.now(UTC)
                done = s.execute(update(evaluations).where(
                    evaluations.c.id == row["id"], evaluations.c.state.in_(unfinished),
                ).values(state=State.FAILED.name, error=error.__dict__, ended_at=ended))
                if cast(CursorResult[Any], done).rowcount:
                    evaluation = _from_row(row)
                    evaluation.state, evaluation.error, evaluation.ended_at = State.FAILED, error, ended
                    failed.append(evaluation)
        return failed

    @staticmethod
    def _row(e: Evaluation) -> dict[str, Any]:
        return {
            "id": e.id, "tenant": e.tenant, "state": e.state.name, "spec": spec_to_json(e.spec),
            "results": _results_to_json(e.results), "report_key": e.report_key, "report_uri": e.report_uri,
            "error": e.error.__dict__ if e.error else None, "forgetting_flagged": e.forgetting_flagged,
            "placement": e.placement, "created_at": e.created_at, "ended_at": e.ended_at,
        }

    def add_event(self, tenant: str, evaluation_id: str, state: State, done: int, total: int,
                  message: str) -> ProgressEvent:
        """Append an event with the next sequence number (retried on a concurrent append).

        Raises:
            NotFound: the evaluation is not the tenant's.
        """
        for attempt in range(3):
            try:
                with session_scope(self._sessions) as s:
                    self._check_owner(s, tenant, evaluation_id)
                    seq = (s.execute(select(func.max(events.c.sequence)).where(events.c.evaluation_id == evaluation_id))
                           .scalar() or 0) + 1
                    now = datetime.now(UTC)
                    s.execute(insert(events).values(evaluation_id=evaluation_id, sequence=seq, state=state.name,
                                                    done=done, total=total, message=message[:2000], time=now))
                return ProgressEvent(seq, state, done, total, message, now)
            except SqlIntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @staticmethod
    def _check_owner(s: Session, tenant: str, evaluation_id: str) -> None:
        found = s.execute(select(evaluations.c.id).where(
            evaluations.c.tenant == tenant, evaluations.c.id == evaluation_id)).first()
        if found is None:
            raise NotFound(f"evaluation {echo(evaluation_id)} not found: list evaluations to see the ids you can read")

    def events_after(self, tenant: str, evaluation_id: str, sequence: int) -> builtins.list[ProgressEvent]:
        """The tenant's evaluation's events after ``sequence``, in order (none for another tenant's)."""
        q = (select(events).join(evaluations, evaluations.c.id == events.c.evaluation_id)
             .where(evaluations.c.tenant == tenant, events.c.evaluation_id == evaluation_id,
                    events.c.sequence > sequence)
             .order_by(events.c.sequence))
        with session_scope(self._sessions) as s:
            return [ProgressEvent(r["sequence"], State[r["state"]], r["done"], r["total"], r["message"], r["time"])
                    for r in s.execute(q).mappings()]

    def save_pairs(self, tenant: str, evaluation_id: str,
                   items: Sequence[Mapping[str, Any]]) -> builtins.list[dict[str, Any]]:
        """Store the first export of the evaluation's pairs; returns the pairs stored.

        An evaluation is exported once: when pairs exist already (an earlier or a concurrent
        export) they are returned unchanged, with their blinding, and their ratings are kept.
        """
        if existing := self.get_pairs(tenant, evaluation_id):
            return existing
        try:
            with session_scope(self._sessions) as s:
                s.execute(insert(pairs), [
                    {"pair_id": p["pair_id"], "evaluation_id": evaluation_id, "tenant": tenant, "position": i,
                     "prompt": p["prompt"], "left_text": p["left"], "right_text": p["right"],
                     "left_is_model": p["left_is_model"]}
                    for i, p in enumerate(items)
                ])
        except SqlIntegrityError:
            if existing := self.get_pairs(tenant, evaluation_id):
                return existing  # a concurrent export won
            raise
        return self.get_pairs(tenant, evaluation_id)

    def get_pairs(self, tenant: str, evaluation_id: str) -> builtins.list[dict[str, Any]]:
        """Exported pairs in export order."""
        q = (select(pairs).where(pairs.c.tenant == tenant, pairs.c.evaluation_id == evaluation_id)
             .order_by(pairs.c.position))
        with session_scope(self._sessions) as s:
            return [{"pair_id": r["pair_id"], "prompt": r["prompt"], "left": r["left_text"], "right": r["right_text"],
                     "left_is_model": r["left_is_model"]} for r in s.execute(q).mappings()]

    def save_ratings(self, tenant: str, evaluation_id: str, items: Sequence[Mapping[str, Any]]) -> int:
        """Upsert by (pair_id, rater): a rater's later judgement of a pair replaces the earlier one."""
        now = datetime.now(UTC)
        with session_scope(self._sessions) as s:
            for r in items:
                s.execute(delete(ratings).where(
                    ratings.c.tenant == tenant, ratings.c.evaluation_id == evaluation_id,
                    ratings.c.pair_id == r["pair_id"], ratings.c.rater == r["rater"]))
                s.execute(insert(ratings).values(pair_id=r["pair_id"], rater=r["rater"], evaluation_id=evaluation_id,
                                                 tenant=tenant, preference=r["preference"], created_at=now))
        return len(items)

    def get_ratings(self, tenant: str, evaluation_id: str) -> builtins.list[dict[str, Any]]:
        """All ratings of the evaluation."""
        q = select(ratings).where(ratings.c.tenant == tenant, ratings.c.evaluation_id == evaluation_id)
        with session_scope(self._sessions) as s:
            return [{"pair_id": r["pair_id"], "rater": r["rater"], "preference": r["preference"]}
                    for r in s.execute(q).mappings()]


def _from_row(row: RowMapping) -> Evaluation:
    err = row["error"]
    return Evaluation(
        id=row["id"], tenant=row["tenant"], spec=spec_from_json(row["spec"]), state=State[row["state"]],
        created_at=row["created_at"], results=_results_from_json(row["results"]), report_key=row["report_key"],
        report_uri=row["report_uri"], error=ErrorInfo(**err) if err else None, ended_at=row["ended_at"],
        forgetting_flagged=row["forgetting_flagged"], placement=row["placement"],
    )
