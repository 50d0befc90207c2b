"""Checkpoints land under ``output.checkpoint_prefix`` (e.g. a tenant's checkpoint area)."""

from __future__ import annotations

import pytest

from tests.unit.engine._train_support import make_spec
from tuneforge.common.errors import InvalidInput
from tuneforge.common.storage import open_object_store
from tuneforge.common.storage.artifacts import list_artifacts, read_manifest
from tuneforge.engine.api import run_training


def test_checkpoints_are_written_under_the_prefix_with_the_shared_writer(tiny_model_dir, tmp_path):
    spec = make_spec(tiny_model_dir, tmp_path, hyperparameters={"max_steps": 2},
                     output={"checkpoint_uri": f"file://{tmp_path}/store", "run_name": "job-1",
                             "checkpoint_prefix": "tenants/acme/checkpoints/"})
    result = run_training(spec)
    assert result.last_checkpoint_uri.endswith("/tenants/acme/checkpoints/job-1/step-2/")
    store = open_object_store(f"file://{tmp_path}/store")
    folders = list_artifacts(store, "tenants/acme/checkpoints/job-1/")
    assert folders == ["tenants/acme/checkpoints/job-1/step-2/"]
    manifest = read_manifest(store, folders[0])
    assert manifest.extra["step"] == 2
    assert any(f.path.endswith(".safetensors") and f.size > 0 for f in manifest.files)


@pytest.mark.parametrize("prefix", ["/abs/", "../up/", "no-trailing-slash", "Upper/"])
def test_bad_prefixes_are_rejected(tiny_model_dir, tmp_path, prefix):
    with pytest.raises(InvalidInput) as info:
        make_spec(tiny_model_dir, tmp_path, output={"checkpoint_uri": f"file://{tmp_path}/s", "run_name": "r",
                                                    "checkpoint_prefix": prefix})
    assert info.value.violations[0].field == "output.checkpoint_prefix"
