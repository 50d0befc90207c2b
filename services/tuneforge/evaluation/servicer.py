"""EvaluationService over gRPC: proto -> domain -> proto. No business logic here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tuneforge.common.auth import current_identity
from tuneforge.common.errors import InvalidInput
from tuneforge.common.grpc.timestamps import timestamp
from tuneforge.common.paging import next_page_token, page_bounds, paginate
from tuneforge.common.v1 import common_pb2
from tuneforge.evaluation.domain.model import (
    DatasetRef,
    Evaluation,
    EvaluationSpec,
    GenerationOptions,
    Metric,
    ModelRef,
    Role,
)
from tuneforge.evaluation.domain.service import EvaluationService
from tuneforge.evaluation.v1 import evaluation_pb2 as pb
from tuneforge.evaluation.v1 import evaluation_pb2_grpc

_PREFERENCES = {pb.PREFERENCE_LEFT: "left", pb.PREFERENCE_RIGHT: "right", pb.PREFERENCE_TIE: "tie"}


def _enum(value: int) -> Any:
    """A domain Enum's value for a proto enum field (the domain Enums mirror the API's by value)."""
    return value


def _model_from(msg: pb.ModelRef) -> ModelRef:
    return ModelRef(base_model=msg.base_model, checkpoint_id=msg.checkpoint_id)


def _dataset_from(msg: pb.EvalDataset) -> DatasetRef:
    return DatasetRef(msg.version_id, msg.split, msg.max_samples)


def spec_from_request(req: pb.CreateEvaluationRequest) -> EvaluationSpec:
    """Wire request -> domain spec (defaults applied; validation is the domain's)."""
    unknown = [m for m in req.metrics if m not in {x.value for x in Metric}]
    if unknown:
        raise InvalidInput.field_error("metrics", f"unknown metric values {unknown}: use the Metric enum")
    g = req.generation
    generation = GenerationOptions(
        max_new_tokens=g.max_new_tokens or 128, do_sample=g.do_sample, temperature=g.temperature or 1.0,
        top_p=g.top_p or 1.0, seed=g.seed, stop=tuple(g.stop), batch_size=g.batch_size or 8,
    )
    return EvaluationSpec(
        model=_model_from(req.model),
        baseline=_model_from(req.baseline) if req.HasField("baseline") else None,
        datasets=tuple(_dataset_from(d) for d in req.datasets),
        metrics=tuple(Metric(m) for m in req.metrics),
        generation=generation,
        forgetting_dataset=_dataset_from(req.forgetting_dataset) if req.HasField("forgetting_dataset") else None,
        forgetting_threshold=req.forgetting_threshold or 1.1,
        mark_best_by=req.mark_best_by,
        request_id=req.request_id,
        reward_model=_model_from(req.reward_model) if req.HasField("reward_model") else None,
    )


def _model_to(ref: ModelRef) -> pb.ModelRef:
    return pb.ModelRef(checkpoint_id=ref.checkpoint_id) if ref.checkpoint_id else pb.ModelRef(base_model=ref.base_model)


def evaluation_to_proto(e: Evaluation) -> pb.Evaluation:
    """Domain evaluation -> wire message."""
    s = e.spec
    msg = pb.Evaluation(
        id=e.id, state=_enum(e.state.value), model=_model_to(s.model), metrics=[_enum(m.value) for m in s.metrics],
        datasets=[pb.EvalDataset(version_id=d.version_id, split=d.split, max_samples=d.max_samples) for d in s.datasets],
        report_uri=e.report_uri, create_time=timestamp(e.created_at), end_time=timestamp(e.ended_at),
    )
    if s.baseline:
        msg.baseline.CopyFrom(_model_to(s.baseline))
    if s.reward_model:
        msg.reward_model.CopyFrom(_model_to(s.reward_model))
    if e.error:
        msg.error.CopyFrom(common_pb2.ErrorInfo(code=e.error.code, message=e.error.message, field=e.error.field))
    groups: dict[tuple[Role, str], Any] = {}
    for r in e.results:
        key = (r.role, r.dataset_version_id)
        if key not in groups:
            ref = s.model if r.role is Role.MODEL else s.baseline
            groups[key] = msg.results.add(model=_model_to(ref) if ref else None, dataset_version_id=r.dataset_version_id)
        groups[key].metrics.add(name=r.name, value=r.value, count=r.count,
                                ci_low=r.ci_low or 0.0, ci_high=r.ci_high or 0.0)
    return msg


class EvaluationServicer(evaluation_pb2_grpc.EvaluationServiceServicer):
    """Thin transport over ``EvaluationService``."""

    def __init__(self, service: EvaluationService) -> None:
        self._svc = service

    def CreateEvaluation(self, request: pb.CreateEvaluationRequest, context: Any) -> pb.CreateEvaluationResponse:
        """Validate and start an evaluation."""
        # The caller's identity (with its token) goes along: the run calls peers on its behalf.
        e = self._svc.create(current_identity(), spec_from_request(request))
        return pb.CreateEvaluationResponse(evaluation=evaluation_to_proto(e))

    def GetEvaluation(self, request: pb.GetEvaluationRequest, context: Any) -> pb.GetEvaluationResponse:
        """One evaluation."""
        return pb.GetEvaluationResponse(evaluation=evaluation_to_proto(self._svc.get(current_identity().tenant, request.evaluation_id)))

    def ListEvaluations(self, request: pb.ListEvaluationsRequest, context: Any) -> pb.ListEvaluationsResponse:
        """A page of evaluations, newest first."""
        offset, size = page_bounds(request.page.page_size, request.page.page_token)
        items = self._svc.list(current_identity().tenant, limit=size + 1, offset=offset)
        nxt = next_page_token(offset, size, offset + len(items))
        return pb.ListEvaluationsResponse(evaluations=[evaluation_to_proto(e) for e in items[:size]], next_page_token=nxt)

    def StreamEvaluationProgress(self, request: pb.StreamEvaluationProgressRequest, context: Any) -> Iterator[pb.EvaluationProgress]:
        """Events after ``after_sequence`` until the evaluation ends (or the client goes away)."""
        events = self._svc.follow_events(current_identity().tenant, request.evaluation_id, request.after_sequence,
                                         context.is_active)
        for ev in events:
            yield pb.EvaluationProgress(sequence=ev.sequence, state=_enum(ev.state.value), done=ev.done, total=ev.total,
                                        message=ev.message, time=timestamp(ev.time))

    def CancelEvaluation(self, request: pb.CancelEvaluationRequest, context: Any) -> pb.CancelEvaluationResponse:
        """Request cancellation."""
        e = self._svc.cancel(current_identity().tenant, request.evaluation_id)
        return pb.CancelEvaluationResponse(evaluation=evaluation_to_proto(e))

    def CompareModels(self, request: pb.CompareModelsRequest, context: Any) -> pb.CompareModelsResponse:
        """Metric-by-metric comparison."""
        comps, summary, flagged = self._svc.compare(current_identity().tenant, request.evaluation_id)
        return pb.CompareModelsResponse(
            comparisons=[pb.MetricComparison(dataset_version_id=c.dataset_version_id, name=c.name, model_value=c.model_value,
                                             baseline_value=c.baseline_value, delta=c.delta, model_better=c.model_better)
                         for c in comps],
            summary=summary, forgetting_flagged=flagged,
        )

    def ExportPairs(self, request: pb.ExportPairsRequest, context: Any) -> pb.ExportPairsResponse:
        """Blind pairs (the hidden sides stay on the server)."""
        pairs = self._svc.export_pairs(current_identity().tenant, request.evaluation_id, request.seed)
        return pb.ExportPairsResponse(pairs=[pb.RatingPair(pair_id=p["pair_id"], prompt=p["prompt"], left=p["left"],
                                                           right=p["right"]) for p in pairs])

    def RecordRatings(self, request: pb.RecordRatingsRequest, context: Any) -> pb.RecordRatingsResponse:
        """Store ratings."""
        ratings = [{"pair_id": r.pair_id, "preference": _PREFERENCES.get(r.preference, ""), "rater": r.rater}
                   for r in request.ratings]
        return pb.RecordRatingsResponse(recorded=self._svc.record_ratings(current_identity().tenant, request.evaluation_id, ratings))

    def ListEvaluationSamples(self, request: pb.ListEvaluationSamplesRequest,
                              context: Any) -> pb.ListEvaluationSamplesResponse:
        """A page of the evaluation's generations side by side."""
        page_bounds(request.page.page_size, request.page.page_token)  # a bad page is INVALID_ARGUMENT first
        rows = self._svc.samples(current_identity().tenant, request.evaluation_id)
        page, token = paginate(rows, request.page.page_size, request.page.page_token)
        return pb.ListEvaluationSamplesResponse(samples=[pb.EvaluationSample(**r) for r in page], next_page_token=token)

    def GetWinRates(self, request: pb.GetWinRatesRequest, context: Any) -> pb.GetWinRatesResponse:
        """Win rate with a Wilson 95% interval."""
        wr = self._svc.win_rates(current_identity().tenant, request.evaluation_id)
        return pb.GetWinRatesResponse(
            model_win_rate=pb.MetricValue(name="model_win_rate", value=wr.rate, ci_low=wr.ci_low, ci_high=wr.ci_high,
                                          count=wr.wins + wr.losses),
            tie_rate=wr.tie_rate, ratings=wr.total,
        )
