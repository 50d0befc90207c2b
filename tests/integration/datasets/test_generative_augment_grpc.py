"""Generative augmentation over gRPC: a real dataset server generating with the tiny model on its disk.

The added instructions are compared with what the engine's generation gives for the same prompts
and settings, called directly: equal texts prove the service really ran the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa

from tuneforge.common.grpc.interceptors import bad_request_violations
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.adapters import tables
from tuneforge.datasets.adapters.generator import generation_settings
from tuneforge.datasets.app import DatasetSettings, build_app
from tuneforge.datasets.domain.steps_gen import (
    GenerationParams,
    Prompt,
    clean_generation,
    judge,
    paraphrase_prompt,
)
from tuneforge.datasets.v1 import datasets_pb2 as pb
from tuneforge.datasets.v1 import datasets_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

MODEL = "tiny-chat"
INSTRUCTIONS = ["Say hello.", "Name a colour.", "What is two plus two?", "What is the capital of France?"]
MAX_NEW_TOKENS = 8


@pytest.fixture
def models_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A models folder holding the tiny chat model as ``tiny-chat``."""
    root = tmp_path / "models"
    root.mkdir()
    (root / MODEL).symlink_to(tiny_model_dir, target_is_directory=True)
    return root


@pytest.fixture
def stub(make_service: Callable[..., Any], models_dir: Path) -> Iterator[tuple[pb_grpc.DatasetServiceStub, Any]]:
    """The dataset service (file store, SQLite) with ``models_dir`` as its models folder."""
    handle = make_service(DatasetSettings, build_app, models_dir=models_dir)
    yield pb_grpc.DatasetServiceStub(handle.channel()), handle.settings


def _upload(stub: pb_grpc.DatasetServiceStub) -> pb.DatasetVersion:
    rows = [{"instruction": q, "input": "", "output": f"answer {i}"} for i, q in enumerate(INSTRUCTIONS)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    requests = iter([pb.UploadDatasetRequest(metadata=pb.UploadMetadata(dataset_name="qa", file_name="qa.jsonl")),
                     pb.UploadDatasetRequest(chunk=data)])
    return stub.UploadDataset(requests, timeout=60).version


def _curate(stub: pb_grpc.DatasetServiceStub, version_id: str, step: pb.GenerativeAugmentStep) -> pb.CurationRun:
    started = stub.CurateDataset(pb.CurateDatasetRequest(
        version_id=version_id, steps=[pb.CurationStep(generative_augment=step)]), timeout=30).run
    list(stub.WatchCurationRun(pb.WatchCurationRunRequest(run_id=started.id), timeout=300))
    return stub.GetCurationRun(pb.GetCurationRunRequest(run_id=started.id), timeout=30).run


def _direct(tiny_model_dir: Path, prompts: list[Prompt], sources: list[str], params: GenerationParams) -> list[str]:
    """The engine's generation called directly (the same loader, chat template and settings), cleaned."""
    from tuneforge.engine.evaluate.generation import generate
    from tuneforge.engine.evaluate.loading import load_model

    loaded = load_model(tiny_model_dir)
    chats = [[{"role": "user", "content": p}] if isinstance(p, str) else p for p in prompts]
    out = generate(loaded.model, loaded.tokenizer, chats, generation_settings(params))
    return [clean_generation(g.text, source) for g, source in zip(out, sources, strict=True)]


def test_paraphrases_come_from_the_model_and_are_marked(stub: Any, tiny_model_dir: Path) -> None:
    client, _ = stub
    raw = _upload(client)
    run = _curate(client, raw.id, pb.GenerativeAugmentStep(model=MODEL, paraphrases=2, max_new_tokens=MAX_NEW_TOKENS,
                                                           batch_size=4))
    assert run.state == common_pb2.OPERATION_STATE_SUCCEEDED, run.error
    prompts = [paraphrase_prompt(q, k) for q in INSTRUCTIONS for k in range(2)]
    sources = [q for q in INSTRUCTIONS for _ in range(2)]
    expected = _direct(tiny_model_dir, prompts, sources, GenerationParams(MAX_NEW_TOKENS, 0.0, 0, 4))
    wanted: list[tuple[str, str]] = []  # (source, variant) accepted, in order, duplicates dropped
    for n, text in enumerate(expected):
        source = sources[n]
        if not judge(source, text, language="en") and (source, text) not in wanted:
            wanted.append((source, text))
    assert wanted, f"the tiny model gave no usable paraphrase: {expected}"
    version = client.GetDatasetVersion(pb.GetDatasetVersionRequest(version_id=run.output_version_id)).version
    assert version.row_count == len(INSTRUCTIONS) + len(wanted)
    step = version.steps[0]
    assert step.step == "generative_augment" and step.details["model"] == MODEL
    assert step.details["added"]["paraphrase"] == len(wanted)
    discarded = sum(step.details["discarded"]["paraphrase"].values()) if "paraphrase" in step.details["discarded"] else 0
    assert len(wanted) + discarded == len(prompts)
    rows = client.PreviewRows(pb.PreviewRowsRequest(version_id=version.id, limit=100)).rows
    got: list[tuple[str, str]] = []
    source = ""
    for row in rows:
        user = next(m["content"] for m in row["messages"] if m["role"] == "user")
        if not row["provenance"]["augmented"]:
            source = user
            assert list(row["provenance"]["flags"]) == []
            continue
        assert list(row["provenance"]["flags"]) == [f"aug:paraphrase:{MODEL}"]
        got.append((source, user))
    assert got == wanted


def test_unknown_model_is_refused_before_a_run_exists(stub: Any) -> None:
    client, settings = stub
    raw = _upload(client)
    with pytest.raises(grpc.RpcError) as caught:
        client.CurateDataset(pb.CurateDatasetRequest(version_id=raw.id, steps=[
            pb.CurationStep(normalize=pb.NormalizeStep()),
            pb.CurationStep(generative_augment=pb.GenerativeAugmentStep(model="missing", paraphrases=1))]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"available: {MODEL}" in caught.value.details() and "TUNEFORGE_MODELS_DIR" in caught.value.details()
    assert [f for f, _ in bad_request_violations(caught.value)] == ["steps[1].generative_augment.model"]
    with pytest.raises(grpc.RpcError) as invalid:
        client.CurateDataset(pb.CurateDatasetRequest(version_id=raw.id, steps=[
            pb.CurationStep(generative_augment=pb.GenerativeAugmentStep(model=MODEL, fraction=2.0))]), timeout=30)
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in bad_request_violations(invalid.value)} == {
        "steps[0].generative_augment", "steps[0].generative_augment.fraction"}
    versions = client.ListDatasetVersions(pb.ListDatasetVersionsRequest(dataset=raw.dataset_id)).versions
    assert [v.id for v in versions] == [raw.id]
    engine = sa.create_engine(settings.resolved_database_url())
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(tables.runs)).scalar_one() == 0
    engine.dispose()


def test_models_are_looked_up_when_a_run_is_requested(stub: Any, models_dir: Path) -> None:
    # The models folder is read at each CurateDataset, not once at start-up.
    client, _ = stub
    raw = _upload(client)
    (models_dir / MODEL).unlink()
    with pytest.raises(grpc.RpcError) as caught:
        client.CurateDataset(pb.CurateDatasetRequest(version_id=raw.id, steps=[
            pb.CurationStep(generative_augment=pb.GenerativeAugmentStep(model=MODEL, paraphrases=1))]), timeout=30)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "this service has no models" in caught.value.details()


def _upload_curated(stub: pb_grpc.DatasetServiceStub, step: pb.GenerativeAugmentStep) -> pb.UploadDatasetResponse:
    rows = [{"instruction": q, "input": "", "output": f"answer {i}"} for i, q in enumerate(INSTRUCTIONS)]
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    curation = pb.IngestCuration(steps=[pb.CurationStep(generative_augment=step)])
    meta = pb.UploadMetadata(dataset_name="qa-curated", file_name="qa.jsonl", curation=curation)
    requests = iter([pb.UploadDatasetRequest(metadata=meta), pb.UploadDatasetRequest(chunk=data)])
    return stub.UploadDataset(requests, timeout=300)


def test_an_upload_can_generate_while_it_ingests(stub: Any) -> None:
    # The same step inside UploadDataset (one pass) gives the same rows as CurateDataset on the raw version.
    client, _ = stub
    step = pb.GenerativeAugmentStep(model=MODEL, paraphrases=2, max_new_tokens=MAX_NEW_TOKENS, batch_size=4)
    one_pass = _upload_curated(client, step).version
    run = _curate(client, _upload(client).id, step)
    two_pass = client.GetDatasetVersion(pb.GetDatasetVersionRequest(version_id=run.output_version_id)).version
    assert one_pass.row_count == two_pass.row_count > len(INSTRUCTIONS)
    assert one_pass.content_hash == two_pass.content_hash
    assert [s.step for s in one_pass.steps] == ["validate", "generative_augment"]


def test_an_upload_naming_an_unknown_model_stores_nothing(stub: Any) -> None:
    client, _ = stub
    with pytest.raises(grpc.RpcError) as caught:
        _upload_curated(client, pb.GenerativeAugmentStep(model="missing", paraphrases=1))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [f for f, _ in bad_request_violations(caught.value)] == ["curation.steps[0].generative_augment.model"]
    assert not client.ListDatasets(pb.ListDatasetsRequest()).datasets
