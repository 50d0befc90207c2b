"""Evaluation adapters on real stores: settings, dataset versions as the datasets service writes them,
checkpoint folder selection, peer error mapping. (The peers themselves run in
tests/integration/evaluation/test_with_services.py.)"""

from __future__ import annotations

from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest

from tuneforge.checkpoints.settings import CheckpointSettings
from tuneforge.common.auth import Identity
from tuneforge.common.errors import FailedPrecondition, IntegrityError, InvalidInput, NotFound, Unavailable
from tuneforge.common.settings import load_settings
from tuneforge.common.storage.file import FileObjectStore
from tuneforge.datasets.adapters.objects import StoreVersionFiles
from tuneforge.datasets.domain.records import RecordKind, new_record, to_table
from tuneforge.evaluation.adapters.models import StoreModelResolver, model_folder
from tuneforge.evaluation.adapters.objects import StoreDatasetReader, key_in_store, pick_split
from tuneforge.evaluation.adapters.peers import CheckpointFile, VersionInfo, peer_error
from tuneforge.evaluation.domain.model import ModelRef
from tuneforge.evaluation.settings import EvaluationSettings

ACME = Identity("acme", "acme/token-0", token="t" * 20)


def test_settings_use_the_shared_peers_and_models_dir(tmp_path: Path) -> None:
    env = {"TUNEFORGE_AUTH_TOKENS": "acme:" + "x" * 20, "TUNEFORGE_MODELS_DIR": str(tmp_path),
           "TUNEFORGE_DATASETS_ADDRESS": "datasets:50051", "TUNEFORGE_CHECKPOINTS_ADDRESS": "checkpoints:50051",
           "TUNEFORGE_EVAL_MAX_SAMPLES": "50",
           "TUNEFORGE_DOWNLOAD_CHUNK_BYTES": str(1 << 20)}  # the checkpoint service's: a shared env carries it
    s = load_settings(EvaluationSettings, environ=env)
    assert (s.models_dir, s.datasets_address, s.checkpoints_address, s.eval_max_samples) == (
        tmp_path, "datasets:50051", "checkpoints:50051", 50)
    assert s.service_name == "evaluation"
    # ...and the checkpoint service accepts the evaluation's variables in the same environment.
    assert load_settings(CheckpointSettings, environ=env).models_dir == tmp_path


@pytest.mark.parametrize("name", ["TUNEFORGE_EVAL_MODEL_REGISTRY", "TUNEFORGE_EVAL_CHECKPOINTS_TOKENS",
                                  "TUNEFORGE_EVAL_DATASET_PREFIX_TEMPLATE", "TUNEFORGE_EVAL_MAX_SAMPLE"])
def test_removed_or_misspelt_settings_are_rejected_by_name(name: str) -> None:
    with pytest.raises(InvalidInput) as info:
        load_settings(EvaluationSettings, environ={"TUNEFORGE_AUTH_DISABLED": "true", name: "x"})
    assert [v.field for v in info.value.violations] == [name]


@pytest.mark.parametrize(("counts", "asked", "expected"), [
    ({"train": 8, "test": 2}, "", "test"),        # default: the test split of a split version
    ({}, "", None),                               # an unsplit version: every row
    ({"train": 8, "validation": 1}, "validation", "validation"),
])
def test_pick_split(counts, asked, expected) -> None:
    assert pick_split(VersionInfo("dsv_1", "", counts), asked) == expected


@pytest.mark.parametrize(("counts", "asked", "message"), [
    ({"train": 8, "test": 2}, "dev", "use one of ['test', 'train']"),
    ({"train": 8, "test": 0}, "test", "use one of ['train']"),
    ({}, "test", "is not split"),
])
def test_pick_split_names_the_splits_the_version_has(counts, asked, message) -> None:
    with pytest.raises(InvalidInput, match=message.replace("[", r"\[")) as info:
        pick_split(VersionInfo("dsv_1", "", counts), asked)
    assert info.value.field == "datasets.split"


def test_key_in_store_maps_uris_of_the_shared_store_only(tmp_path: Path) -> None:
    store = FileObjectStore(tmp_path / "objects")
    assert key_in_store(store, f"{store.uri}/tenants/acme/x/MANIFEST.json", "v") == "tenants/acme/x/MANIFEST.json"
    with pytest.raises(FailedPrecondition, match="same TUNEFORGE_OBJECT_STORE_URI"):
        key_in_store(store, (tmp_path / "elsewhere" / "tenants/acme/x").as_uri(), "v")


class _Versions:
    """The datasets service's answer to GetDatasetVersion for versions published in the test."""

    def __init__(self) -> None:
        self.known: dict[str, VersionInfo] = {}

    def get(self, caller: Identity, version_id: str) -> VersionInfo:
        if version_id not in self.known:
            raise NotFound(f"dataset version {version_id!r} not found")
        return self.known[version_id]


def _publish(store: FileObjectStore, tmp: Path, tenant: str, version_id: str, splits: list[str | None]) -> VersionInfo:
    """Publish a version exactly as the datasets service does (its own adapter), two shards."""
    files = StoreVersionFiles(store, tmp / "ds-cache")
    records = []
    for i, split in enumerate(splits):
        r = new_record(RecordKind.TEXT, source="t.txt", row=i + 1, text=f"row {i}")
        r["split"] = split
        records.append(r)
    half = len(records) // 2
    shards = []
    for n, part in enumerate((records[:half], records[half:])):
        shards.append(tmp / f"part-{n:05d}.parquet")
        pq.write_table(to_table(part), shards[-1])
    prefix = files.prefix(tenant, "ds_1", version_id)
    files.publish(prefix, shards, None, {"version_id": version_id})
    counts = {s: splits.count(s) for s in set(splits) if s}
    return VersionInfo(version_id, files.uri(prefix), counts)


@pytest.fixture
def reader(tmp_path: Path):
    store = FileObjectStore(tmp_path / "objects")
    versions = _Versions()
    return StoreDatasetReader(store, versions, tmp_path / "cache"), versions, store


def test_reader_reads_a_split_across_shards_up_to_the_limit(reader, tmp_path: Path) -> None:
    read, versions, store = reader
    versions.known["dsv_1"] = _publish(store, tmp_path, "acme", "dsv_1", ["train", "test", "test", "train", "test", "test"])
    assert [r["text"] for r in read.read(ACME, "dsv_1", "", 0)] == ["row 1", "row 2", "row 4", "row 5"]
    assert [r["text"] for r in read.read(ACME, "dsv_1", "train", 0)] == ["row 0", "row 3"]
    assert len(read.read(ACME, "dsv_1", "test", 3)) == 3


def test_reader_refuses_a_replaced_shard_and_a_foreign_prefix(reader, tmp_path: Path) -> None:
    read, versions, store = reader
    versions.known["dsv_1"] = _publish(store, tmp_path, "acme", "dsv_1", [None, None])
    prefix = "tenants/acme/datasets/ds_1/versions/dsv_1/"
    pq.write_table(to_table([new_record(RecordKind.TEXT, source="evil", row=1, text="swapped")]),
                   tmp_path / "evil.parquet")
    store.put_file(prefix + "data/part-00000.parquet", tmp_path / "evil.parquet")  # after the manifest
    with pytest.raises(IntegrityError, match=r"part-00000\.parquet"):
        read.read(ACME, "dsv_1", "", 0)
    versions.known["dsv_2"] = _publish(store, tmp_path, "acme2", "dsv_2", [None])
    with pytest.raises(NotFound, match="dsv_2"):  # a peer answering with another tenant's version
        read.read(ACME, "dsv_2", "", 0)


@pytest.mark.parametrize(("paths", "marker", "expected"), [
    (["model/adapter_config.json", "model/adapter_model.safetensors", "trainer_state.json"], "adapter_config.json",
     "model/"),
    (["adapter_config.json", "adapter_model.safetensors"], "adapter_config.json", ""),
    (["a/b/config.json", "a/config.json", "a/model.safetensors"], "config.json", "a/"),
])
def test_model_folder_is_the_shallowest_holding_the_marker(paths, marker, expected) -> None:
    assert model_folder(tuple(CheckpointFile(p, 1, "0") for p in paths), marker) == expected


def test_model_folder_without_the_marker_is_a_precondition_failure() -> None:
    with pytest.raises(FailedPrecondition, match=r"adapter_config\.json"):
        model_folder((CheckpointFile("trainer_state.json", 1, "0"),), "adapter_config.json")


def test_base_models_by_name_from_models_dir(tmp_path: Path) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "config.json").write_text("{}")
    resolver = StoreModelResolver(FileObjectStore(tmp_path / "objects"), tmp_path / "models", None, tmp_path / "c")
    assert resolver.resolve(ACME, ModelRef(base_model="tiny")).model_dir == tmp_path / "models" / "tiny"
    with pytest.raises(NotFound, match="'missing'"):
        resolver.check(ACME, ModelRef(base_model="missing"))
    with pytest.raises(InvalidInput):
        resolver.check(ACME, ModelRef(base_model="../models/tiny"))
    with pytest.raises(FailedPrecondition, match="TUNEFORGE_CHECKPOINTS_ADDRESS"):
        resolver.check(ACME, ModelRef(checkpoint_id="ckpt_1"))


class _RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(("code", "family", "text"), [
    (grpc.StatusCode.NOT_FOUND, NotFound, "datasets service: gone"),
    (grpc.StatusCode.UNAVAILABLE, Unavailable, "did not answer"),
    (grpc.StatusCode.UNAUTHENTICATED, FailedPrecondition, "TUNEFORGE_AUTH_TOKENS"),
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidInput, "gone"),
])
def test_peer_errors_keep_their_family_and_name_the_peer(code, family, text) -> None:
    err = peer_error("datasets", "d:1", _RpcError(code, "gone"))
    assert type(err) is family and text in err.message
