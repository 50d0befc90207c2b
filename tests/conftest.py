"""Test-wide settings: run-local temp folders, offline hub, CPU DeepSpeed, and the shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
_CACHE = _ROOT / ".cache"
for _var, _sub in {"TMPDIR": "tmp", "RAY_TMPDIR": "ray", "HF_HOME": "hf", "TORCH_EXTENSIONS_DIR": "torch_ext",
                   "TRITON_CACHE_DIR": "triton", "MPLCONFIGDIR": "mpl"}.items():
    os.environ.setdefault(_var, str(_CACHE / _sub))
    Path(os.environ[_var]).mkdir(parents=True, exist_ok=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # tests only; deployments use token auth
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "disabled")

pytest_plugins = [
    "tests.fixtures.grpc",
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.tiny",
]
