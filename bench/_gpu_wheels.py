"""List the distributions the GPU check imports that the device image lacks (prints name==version).

Run here, in the project's venv: it imports what ``bench/gpu_check.sh`` runs (the engine, DeepSpeed,
TRL), maps every imported module to its distribution, and drops those the device image already has
(its package list, /work/.library/device/KINDS.md, 2026-11-17) and torch's own CUDA wheels.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT / "services"), str(_ROOT)]

MODULES = ["deepspeed", "trl", "peft", "tuneforge.engine.api", "tuneforge.engine.recipes.sft",
           "tuneforge.engine.recipes.dpo", "tuneforge.engine.train.ds_runtime", "tuneforge.engine.spec",
           "tuneforge.engine.models.tiny", "bench.gpu_zero", "bench._common", "datasets"]
# Too big to travel (the whole tree may be 64 MiB); the check does not use QLoRA.
LEFT_OUT = {"bitsandbytes"}
ON_DEVICE = set(["absl-py", "accelerate", "aiofiles", "aiohappyeyeballs", "aiohttp", "aiosignal", "annotated-doc", "anyio", "attrs", "botorch", "build", "certifi", "charset-normalizer", "chex", "click", "cloudpickle", "cmake", "colorama", "contourpy", "coverage", "cuda-bindings", "cuda-core", "cuda-pathfinder", "cuda-toolkit", "cupy-cuda13x", "cycler", "cython", "diffrax", "e3nn", "einops", "equinox", "etils", "execnet", "filelock", "flatbuffers", "flax", "fonttools", "formulaic", "frozenlist", "fsspec", "gpytorch", "grpcio", "h11", "h5py", "hf-xet", "httpcore", "httpx", "huggingface-hub", "humanize", "hypothesis", "idna", "imageio", "iniconfig", "interface-meta", "jax", "jaxlib", "jaxtyping", "jinja2", "joblib", "kiwisolver", "lazy-loader", "lightning", "lightning-utilities", "linear-operator", "lineax", "llvmlite", "lxml", "markdown", "markdown-it-py", "markupsafe", "matplotlib", "mdurl", "meson", "ml-dtypes", "mpi4py", "mpmath", "msgpack", "multidict", "multipledispatch", "mypy-extensions", "nanobind", "narwhals", "networkx", "ninja", "numba", "numba-cuda", "numpy", "numpyro", "nvidia-ml-py", "onnx", "onnx-ir", "onnxruntime", "onnxscript", "opencv-python-headless", "optax", "opt-einsum", "opt-einsum-fx", "optimistix", "orbax-checkpoint", "packaging", "pandas", "pathspec", "patsy", "peft", "pillow", "pip", "pluggy", "portalocker", "prometheus-client", "propcache", "protobuf", "psutil", "pyarrow", "pybind11", "py-cpuinfo", "pygments", "pyparsing", "pyproject-hooks", "pyre-extensions", "pytest", "pytest-benchmark", "pytest-cov", "pytest-mock", "pytest-timeout", "pytest-xdist", "python-dateutil", "pytorch-lightning", "pyyaml", "regex", "requests", "rich", "sacrebleu", "safetensors", "scikit-build-core", "scikit-image", "scikit-learn", "scipy", "seaborn", "sentencepiece", "sentence-transformers", "setuptools", "shellingham", "simplejson", "six", "sortedcontainers", "statsmodels", "sympy", "tabulate", "tensorboard", "tensorboard-data-server", "tensorstore", "threadpoolctl", "tifffile", "tiktoken", "timm", "tokenizers", "toolz", "torch", "torchaudio", "torchdiffeq", "torch-geometric", "torchmetrics", "torchvision", "tqdm", "transformers", "treescope", "triton", "typer", "typing-extensions", "typing-inspect", "urllib3", "uvloop", "wadler-lindig", "werkzeug", "wheel", "wrapt", "xarray", "xxhash", "yarl", "zipp"])


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


def main() -> None:
    for name in MODULES:
        importlib.import_module(name)
    owners = md.packages_distributions()
    needed: set[str] = set()
    for mod in list(sys.modules):
        for dist in owners.get(mod.split(".")[0], []):
            needed.add(_norm(dist))
    for dist in sorted(needed):
        if dist in ON_DEVICE or dist in LEFT_OUT or dist.startswith("nvidia-") or dist == "tuneforge":
            continue
        print(f"{dist}=={md.version(dist)}")


if __name__ == "__main__":
    main()
