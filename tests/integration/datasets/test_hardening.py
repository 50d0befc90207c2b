"""Bad input at the gRPC edge of the dataset service: refused, never INTERNAL, no server path."""

from __future__ import annotations

import base64
import re

import grpc
import pytest

from tests.integration.datasets.conftest import DatasetsService, jsonl
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.v1 import datasets_pb2 as pb

pytestmark = pytest.mark.integration


def _error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_tokenizers_are_model_names_never_server_paths(service: DatasetsService, tmp_path) -> None:
    raw = service.upload(jsonl([{"instruction": "hi", "output": "there"}] * 3), "t.jsonl").version
    answers = set()
    for spec in ("/etc", "/definitely/missing", str(tmp_path), "../../etc", "~root"):
        err = _error(lambda s=spec: service.stub.GetDatasetStats(
            pb.GetDatasetStatsRequest(version_id=raw.id, tokenizer=s), timeout=30))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert str(tmp_path) not in (err.details() or "")
        answers.add(re.sub(r"tokenizer .* is not a model", "tokenizer X is not a model", err.details() or ""))
    assert len(answers) == 1  # existing and missing folders answer alike


def test_forged_page_tokens_are_invalid_argument(service: DatasetsService) -> None:
    huge = base64.urlsafe_b64encode(f"o:{2**80}".encode()).decode()
    page = common_pb2.PageRequest(page_size=10, page_token=huge)
    for call in (lambda: service.stub.ListDatasets(pb.ListDatasetsRequest(page=page), timeout=30),
                 lambda: service.stub.ListDatasetVersions(pb.ListDatasetVersionsRequest(dataset="ds", page=page),
                                                          timeout=30)):
        assert _error(call).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_long_name_is_refused_naming_the_limit(service: DatasetsService) -> None:
    err = _error(lambda: service.upload(b'{"text": "x"}\n', "x.jsonl", dataset="d" * 30_000))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 256" in (err.details() or "") and len(err.details() or "") < 1024
