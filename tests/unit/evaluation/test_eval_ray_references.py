"""What a Ray task may be given: store references only (no path of the service's pod)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tuneforge.checkpoints.adapters.export import StoreExporter
from tuneforge.common.errors import FailedPrecondition
from tuneforge.common.storage.file import FileObjectStore
from tuneforge.evaluation.adapters.runners import RayRunner
from tuneforge.evaluation.domain.ports import ModelTask


class _NeverRay:
    """Stands where a Ray runner would be: the refusal must come before anything is submitted."""

    def run(self, *args: object) -> list[tuple[str, int, str]]:
        raise AssertionError("submitted to Ray although the base model is not in the store")


def test_a_base_model_only_on_the_service_disk_is_refused_for_ray_evaluation() -> None:
    task = ModelTask("/models/local-only", None, [{"text": "x"}], ["perplexity"], {}, model_source=None)
    # The address is never contacted: the refusal comes first.
    with pytest.raises(FailedPrecondition, match=r"TUNEFORGE_MODELS_DIR.*register it in the object store"):
        RayRunner("127.0.0.1:1").run(task, lambda done, total: None, lambda: False)


def test_a_merged_export_on_ray_needs_the_base_model_in_the_store(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "objects")
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "config.json").write_text("{}")  # on the pod's disk only
    exporter = StoreExporter(store, tmp_path / "models", tmp_path / "work", _NeverRay())  # type: ignore[arg-type]
    with pytest.raises(FailedPrecondition, match=r"not in the object store.*python -m tuneforge\.engine\.models import"):
        exporter._base_source("acme", "tiny")


def test_a_base_model_in_the_store_is_referenced_by_its_manifest(tmp_path: Path) -> None:
    from tuneforge.common.storage.checkpoint_writer import CheckpointWriter

    store = FileObjectStore(tmp_path / "objects")
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    CheckpointWriter(store).write(folder, "tenants/acme/models/tiny/", {"kind": "base_model"})
    source = StoreExporter(store, tmp_path / "models", tmp_path / "work")._base_source("acme", "tiny")
    assert source.prefix == "tenants/acme/models/tiny/" and source.store_uri == store.uri
    assert [(f.path, f.size, f.sha256) for f in source.files] == [
        ("config.json", 8, hashlib.sha256(b'{"a": 1}').hexdigest())]
