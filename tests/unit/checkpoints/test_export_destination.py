"""An export destination holds one export: a repeat is answered from it, another export is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from tests.unit.checkpoints.helpers import draft, make_registry, upload
from tuneforge.checkpoints.adapters.export import StoreExporter
from tuneforge.checkpoints.adapters.objects import folder_key
from tuneforge.checkpoints.domain.model import ExportFormat
from tuneforge.common.errors import AlreadyExists
from tuneforge.common.storage.file import FileObjectStore

ADAPTER_CONFIG = json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
                             "base_model_name_or_path": "tiny"}).encode()


@pytest.fixture
def env(tmp_path: Path):
    store = FileObjectStore(tmp_path / "objects")
    registry, _ = make_registry(store, f"sqlite:///{tmp_path / 'metadata.db'}",
                                exporter=StoreExporter(store, tmp_path / "models", tmp_path / "work"))
    return registry, store


def _register_adapter(registry, store: FileObjectStore, step: int):
    weights = save({"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": np.full((2, 8), step, np.float32)})
    prefix = f"job1/step-{step}"
    files = upload(store, "acme", prefix, {"adapter_config.json": ADAPTER_CONFIG,
                                           "adapter_model.safetensors": weights})
    return registry.register("acme", draft("job1", step, files)).manifest


def test_a_repeated_export_returns_the_stored_one_without_rerunning(env) -> None:
    registry, store = env
    m = _register_adapter(registry, store, 1)
    first = registry.export("acme", m.checkpoint_id, ExportFormat.ADAPTER, "prod/adapter")
    assert {f.path for f in first.files} == {"adapter_config.json", "adapter_model.safetensors"}
    # The checkpoint's own files are gone: re-running the export could not read them.
    store.delete(folder_key("acme", "job1/step-1") + "adapter_model.safetensors")
    again = registry.export("acme", m.checkpoint_id, ExportFormat.ADAPTER, "prod/adapter")
    assert again == first


def test_another_export_to_a_used_destination_is_refused_naming_it(env) -> None:
    registry, store = env
    one, two = _register_adapter(registry, store, 1), _register_adapter(registry, store, 2)
    registry.export("acme", one.checkpoint_id, ExportFormat.ADAPTER, "prod/adapter")
    before = store.get_bytes("tenants/acme/exports/prod/adapter/adapter_model.safetensors")
    with pytest.raises(AlreadyExists, match=r"destination 'prod/adapter' already holds an export of checkpoint "
                                            + one.checkpoint_id + r".*choose another destination"):
        registry.export("acme", two.checkpoint_id, ExportFormat.ADAPTER, "prod/adapter")
    assert store.get_bytes("tenants/acme/exports/prod/adapter/adapter_model.safetensors") == before
