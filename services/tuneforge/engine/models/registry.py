"""Base models as artifacts in the object store: registered once, fetched by content hash.

A base model lives at ``tenants/<tenant>/models/<name>/`` in the shared store: a Hugging Face
folder (``config.json``, ``*.safetensors``, tokenizer files) with a manifest of sizes and sha256
written last. A spec names it by reference (``model.name`` with ``store_uri``, ``manifest_key``,
``manifest_sha256``); each worker downloads it once into a local cache keyed by that sha256 and
checks every file. Only safetensors weights and data files are accepted (no pickled weights, no
code): ``trust_remote_code`` stays off everywhere.

Register one with ``python -m tuneforge.engine.models import --store URI --tenant T --name N
--from FOLDER_OR_GGUF`` (a GGUF is converted to safetensors first).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tuneforge.common.errors import IntegrityError, InvalidInput, NotFound, TuneforgeError
from tuneforge.common.storage import ObjectStore
from tuneforge.common.storage.artifacts import MANIFEST_NAME, Manifest
from tuneforge.common.storage.checkpoint_writer import CheckpointWriter
from tuneforge.common.storage.refs import StoredFolder
from tuneforge.common.storage.refs import fetch_folder as fetch_stored_folder

log = logging.getLogger(__name__)

CACHE_ENV = "TUNEFORGE_MODEL_CACHE_DIR"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Data only: weights as safetensors, configs and tokenizers as JSON/text/sentencepiece/jinja.
ALLOWED_SUFFIXES = frozenset({".safetensors", ".json", ".txt", ".model", ".jinja", ".tiktoken"})
REFUSED_WEIGHTS = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".h5", ".msgpack", ".npz"})


@dataclass(frozen=True)
class ModelRef:
    """Where a registered base model is: the store, its manifest there, and the manifest's sha256."""

    store_uri: str
    manifest_key: str
    manifest_sha256: str


def model_prefix(tenant: str, name: str) -> str:
    """The store folder of a tenant's base model."""
    if not MODEL_NAME.fullmatch(name):
        raise InvalidInput.field_error("name", f"{name!r} is not a model name such as 'smollm2-135m'")
    return f"tenants/{tenant}/models/{name}/"


def check_files(files: list[str], where: str) -> None:
    """Refuse anything but safetensors weights and data files (pickles run code when loaded)."""
    bad = [f for f in files if PurePosixPath(f).suffix.lower() not in ALLOWED_SUFFIXES]
    if bad:
        weights = [f for f in bad if PurePosixPath(f).suffix.lower() in REFUSED_WEIGHTS]
        fix = ("convert the weights to safetensors (model.save_pretrained(dir, safe_serialization=True))"
               if weights else "remove them (code and other files are never loaded)")
        raise InvalidInput.field_error(where, f"holds files tuneforge does not load: {', '.join(sorted(bad)[:10])}; "
                                              + fix)
    if "config.json" not in {PurePosixPath(f).name for f in files}:
        raise InvalidInput.field_error(where, "has no config.json: register a Hugging Face model folder")
    if not any(f.endswith(".safetensors") for f in files):
        raise InvalidInput.field_error(where, "has no .safetensors weights: save the model with safetensors")


def reference(store: ObjectStore, prefix: str) -> ModelRef:
    """The registered model at ``prefix`` pinned by the sha256 of its manifest (``NotFound`` if absent)."""
    key = prefix + MANIFEST_NAME
    raw = store.get_bytes(key)
    return ModelRef(store.uri, key, hashlib.sha256(raw).hexdigest())


def import_model(store: ObjectStore, tenant: str, name: str, source: Path) -> ModelRef:
    """Register a local model folder (or a GGUF file, converted to safetensors) as ``name``.

    Raises:
        NotFound: ``source`` does not exist.
        InvalidInput: non-safetensors weights, code or other files tuneforge does not load; no config.json.
    """
    prefix = model_prefix(tenant, name)
    if source.is_file() and source.suffix == ".gguf":
        from tuneforge.engine.models.gguf import convert_gguf

        source = convert_gguf(source, Path(tempfile.mkdtemp(prefix="tuneforge-gguf-")) / name)
    if not source.is_dir():
        raise NotFound(f"no model folder at {source}: pass a Hugging Face folder or a .gguf file")
    files = [p.relative_to(source).as_posix() for p in sorted(source.rglob("*")) if p.is_file()]
    check_files(files, "from")
    CheckpointWriter(store).write(source, prefix, {"kind": "base_model", "name": name})
    ref = reference(store, prefix)
    log.info("registered base model %s at %s (manifest sha256 %s)", name, prefix, ref.manifest_sha256)
    return ref


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "tuneforge-models")


def fetch_model(ref: ModelRef, field: str = "model") -> Path:
    """The registered model in this machine's cache (downloaded once, every file verified)."""
    from tuneforge.engine.train._artifacts import open_store

    store = open_store(ref.store_uri, {}, field=f"{field}.store_uri")
    raw = store.get_bytes(ref.manifest_key)
    if hashlib.sha256(raw).hexdigest() != ref.manifest_sha256:
        raise IntegrityError(
            f"the manifest of the base model at {ref.manifest_key} is not the one the job was created with "
            "(sha256 differs): the model was registered again; create the job again", reason="CHECKSUM_MISMATCH")
    manifest = Manifest.from_json(ref.manifest_key, raw)
    check_files([f.path for f in manifest.files], field)
    prefix = ref.manifest_key.removesuffix(MANIFEST_NAME)
    folder = _cache_root() / ref.manifest_sha256
    for f in manifest.files:
        dest = folder / f.path
        if dest.is_file() and dest.stat().st_size == f.size and _sha256(dest) == f.sha256:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        info = store.get_file(prefix + f.path, dest)
        if (info.size, info.sha256) != (f.size, f.sha256):
            dest.unlink(missing_ok=True)
            raise IntegrityError(f"{prefix + f.path} does not match the model's manifest (size or sha256): "
                                 "register the model again", reason="CHECKSUM_MISMATCH")
    return folder


def fetch_folder(folder: StoredFolder, field: str = "model") -> Path:
    """A stored folder (a checkpoint's model or adapter, a registered model) in this machine's cache.

    Opened with the worker's own store credentials (``open_store``); every file is checked against
    the sha256 the reference records (``tuneforge.common.storage.refs.fetch_folder``).
    """
    from tuneforge.engine.train._artifacts import open_store

    store = open_store(folder.store_uri, {}, field=f"{field}.store_uri")
    return fetch_stored_folder(store, folder, _cache_root() / "folders")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """``python -m tuneforge.engine.models import ...``: register a base model; prints its reference."""
    parser = argparse.ArgumentParser(prog="python -m tuneforge.engine.models", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="register a local folder or a .gguf file as a base model")
    imp.add_argument("--store", required=True, help="object store URI (file:///... or s3://bucket?endpoint=...)")
    imp.add_argument("--tenant", required=True)
    imp.add_argument("--name", required=True, help="the name jobs use as base_model, e.g. smollm2-135m")
    imp.add_argument("--from", dest="source", required=True, type=Path, help="Hugging Face folder or .gguf")
    args = parser.parse_args(argv)
    from tuneforge.engine.train._artifacts import open_store

    try:
        ref = import_model(open_store(args.store, {}, field="store"), args.tenant, args.name, args.source)
    except TuneforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.name}: {ref.manifest_key} sha256 {ref.manifest_sha256}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
