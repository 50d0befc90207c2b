"""Curation run events are persisted: WatchCurationRun resumes from a cursor after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tests.integration.datasets.conftest import jsonl
from tests.integration.datasets.test_curation import STEPS, _rows
from tuneforge.common import db
from tuneforge.common.db import utcnow
from tuneforge.common.storage.s3 import S3ObjectStore
from tuneforge.common.v1 import common_pb2
from tuneforge.datasets.adapters.sql import SqlCatalog
from tuneforge.datasets.adapters.tables import metadata
from tuneforge.datasets.app import MIGRATIONS_DIR, VERSION_TABLE, DatasetSettings, build_app
from tuneforge.datasets.domain.model import Run, RunEvent, RunState
from tuneforge.datasets.domain.runs import CurationRuns
from tuneforge.datasets.domain.service import DatasetCatalogService
from tuneforge.datasets.v1 import datasets_pb2 as pb
from tuneforge.datasets.v1 import datasets_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration


def _start(make_service: Any, s3_server: Any, s3_store: S3ObjectStore, data_dir: Path) -> tuple[Any, Any]:
    handle = make_service(DatasetSettings, build_app, data_dir=data_dir, object_store_uri=s3_server.uri(s3_store.bucket),
                          s3_access_key=s3_server.access_key, s3_secret_key=s3_server.secret_key)
    return handle, pb_grpc.DatasetServiceStub(handle.channel())


def _upload(stub: Any) -> str:
    def requests() -> Any:
        yield pb.UploadDatasetRequest(metadata=pb.UploadMetadata(dataset_name="ds", file_name="d.jsonl"))
        yield pb.UploadDatasetRequest(chunk=jsonl(_rows()))
    return stub.UploadDataset(requests(), timeout=60).version.id


def test_watch_resumes_from_a_cursor_after_a_restart(make_service: Any, s3_server: Any, s3_store: S3ObjectStore,
                                                     tmp_path: Path) -> None:
    handle, stub = _start(make_service, s3_server, s3_store, tmp_path / "svc")
    run = stub.CurateDataset(pb.CurateDatasetRequest(version_id=_upload(stub), steps=STEPS)).run
    before = list(stub.WatchCurationRun(pb.WatchCurationRunRequest(run_id=run.id), timeout=120))
    assert before[-1].state == common_pb2.OPERATION_STATE_SUCCEEDED and len(before) == len(STEPS) + 3
    handle.server.stop(0.5)

    _, stub = _start(make_service, s3_server, s3_store, tmp_path / "svc")  # same database and store
    after = list(stub.WatchCurationRun(pb.WatchCurationRunRequest(run_id=run.id, after_sequence=2), timeout=30))
    assert [(e.sequence, e.state, e.message) for e in after] == [(e.sequence, e.state, e.message) for e in before[2:]]
    assert [e.step.step for e in after if e.step.step] == [e.step.step for e in before if e.step.step]
    everything = list(stub.WatchCurationRun(pb.WatchCurationRunRequest(run_id=run.id), timeout=30))
    assert [e.sequence for e in everything] == list(range(1, len(before) + 1))


def test_a_run_interrupted_by_a_restart_ends_with_a_failed_event(db_url: str, tmp_path: Path) -> None:
    engine = db.create_db_engine(db_url)
    db.run_migrations(engine, MIGRATIONS_DIR, VERSION_TABLE)
    catalog = SqlCatalog(db.make_sessionmaker(engine))
    run = Run("run-1", "acme", "dsv-1", RunState.RUNNING, utcnow(), document={"steps": []})
    catalog.save_run(run)
    for sequence, state, message in ((1, RunState.QUEUED, "queued"), (2, RunState.RUNNING, "running")):
        catalog.add_run_event("acme", run.id, RunEvent(sequence, utcnow(), state, None, message))

    service = DatasetCatalogService(catalog, files=None, work_dir=tmp_path / "work", store_uri="file:///x")  # type: ignore[arg-type]
    runs = CurationRuns(service, max_workers=1)  # what start-up after a crash does
    try:
        events = list(runs.watch("acme", run.id, after=1))
        assert [(e.sequence, e.state, e.message.split(":")[0]) for e in events] == [
            (2, RunState.RUNNING, "running"), (3, RunState.FAILED, "failed")]
        assert "restarted" in events[-1].message
        assert catalog.run_events("acme2", run.id, 0) == []  # another tenant sees nothing
    finally:
        runs.shutdown()
        engine.dispose()


def test_migrations_match_the_tables(tmp_path: Path) -> None:
    engine = db.create_db_engine(f"sqlite:///{tmp_path / 'm.db'}")
    db.run_migrations(engine, MIGRATIONS_DIR, VERSION_TABLE)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
    engine.dispose()
    assert [d for d in diff if not (d[0] == "remove_table" and d[1].name == VERSION_TABLE)] == []
