"""Every numeric field of CreateEvaluation has a documented range: out of it is INVALID_ARGUMENT."""

from __future__ import annotations

import pytest

from tuneforge.common.errors import InvalidInput
from tuneforge.evaluation.domain.model import Limits
from tuneforge.evaluation.servicer import spec_from_request
from tuneforge.evaluation.v1 import evaluation_pb2 as pb


def _request(**generation) -> pb.CreateEvaluationRequest:
    return pb.CreateEvaluationRequest(
        model=pb.ModelRef(base_model="tiny"), datasets=[pb.EvalDataset(version_id="dsv_1")],
        metrics=[pb.METRIC_PERPLEXITY], generation=pb.GenerationConfig(**generation))


@pytest.mark.parametrize("change, field", [
    (dict(temperature=1e9), "generation.temperature"),
    (dict(temperature=-1.0), "generation.temperature"),
    (dict(seed=-1), "generation.seed"),
    (dict(max_new_tokens=2**31 - 1), "generation.max_new_tokens"),
    (dict(max_new_tokens=-1), "generation.max_new_tokens"),
    (dict(batch_size=2**31 - 1), "generation.batch_size"),
    (dict(top_p=2.0), "generation.top_p"),
    (dict(stop=["s"] * 17), "generation.stop"),
])
def test_generation_numbers_out_of_range_are_refused(change, field):
    with pytest.raises(InvalidInput) as caught:
        spec_from_request(_request(**change)).validate(Limits())
    assert field in {v.field for v in caught.value.violations}


@pytest.mark.parametrize("samples", [-1, 2**31 - 1])
def test_max_samples_is_bounded(samples):
    request = _request()
    request.datasets[0].max_samples = samples
    with pytest.raises(InvalidInput) as caught:
        spec_from_request(request).validate(Limits())
    assert "datasets[0].max_samples" in {v.field for v in caught.value.violations}


@pytest.mark.parametrize("threshold", [0.5, 1e9])
def test_forgetting_threshold_is_bounded(threshold):
    request = _request()
    request.metrics.append(pb.METRIC_FORGETTING)
    request.forgetting_threshold = threshold
    with pytest.raises(InvalidInput) as caught:
        spec_from_request(request).validate(Limits())
    assert "forgetting_threshold" in {v.field for v in caught.value.violations}
