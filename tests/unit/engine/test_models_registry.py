"""Base models as store artifacts: registered once (safetensors only), fetched by content hash, verified."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tuneforge.common.errors import IntegrityError, InvalidInput
from tuneforge.common.storage import open_object_store
from tuneforge.engine.models.registry import ModelRef, fetch_model, import_model, main


def test_a_registered_model_is_fetched_into_a_cache_keyed_by_its_hash(tiny_model_dir: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEFORGE_MODEL_CACHE_DIR", str(tmp_path / "cache"))
    store = open_object_store((tmp_path / "objects").as_uri())
    ref = import_model(store, "acme", "tiny", tiny_model_dir)
    assert ref.manifest_key == "tenants/acme/models/tiny/MANIFEST.json"
    folder = fetch_model(ref)
    assert folder == tmp_path / "cache" / ref.manifest_sha256
    assert (folder / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
    assert fetch_model(ref) == folder  # cached
    with pytest.raises(IntegrityError, match="registered again"):
        fetch_model(ModelRef(ref.store_uri, ref.manifest_key, "0" * 64))


@pytest.mark.parametrize(("extra", "fix"), [("pytorch_model.bin", "safetensors"), ("modeling_evil.py", "remove them")])
def test_pickled_weights_and_code_are_refused_at_import(tiny_model_dir: Path, tmp_path: Path, extra: str,
                                                        fix: str) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / extra).write_bytes(b"x")
    store = open_object_store((tmp_path / "objects").as_uri())
    with pytest.raises(InvalidInput, match=fix):
        import_model(store, "acme", "tiny", folder)
    assert not store.exists("tenants/acme/models/tiny/MANIFEST.json")


def test_the_import_command_registers_a_folder(tiny_model_dir: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    uri = (tmp_path / "objects").as_uri()
    assert main(["import", "--store", uri, "--tenant", "acme", "--name", "tiny", "--from", str(tiny_model_dir)]) == 0
    assert "tenants/acme/models/tiny/MANIFEST.json" in capsys.readouterr().out
    assert main(["import", "--store", uri, "--tenant", "acme", "--name", "tiny", "--from", str(tmp_path / "no")]) == 1
