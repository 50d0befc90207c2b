"""Token counting: whitespace by default, or the tokenizer of a model of the service (never downloaded).

A tokenizer is named like a model (``smollm2-135m``, ``org/model``) and resolves only inside the
service's models folder (``TUNEFORGE_MODELS_DIR``): a path, ``..`` or a name the folder lacks is
refused with the same answer, so a caller learns nothing about the server's file system. A folder
with ``tokenizer.json`` is loaded with the light ``tokenizers`` library; any other goes through
``transformers.AutoTokenizer`` with ``trust_remote_code=False`` and ``local_files_only=True``.
"""

from __future__ import annotations

import functools
import logging
import re
from pathlib import Path
from typing import Protocol

from tuneforge.common.errors import InvalidInput
from tuneforge.common.public_text import echo

log = logging.getLogger(__name__)


class TokenCounter(Protocol):
    """Counts tokens of texts."""

    name: str

    def count(self, texts: list[str]) -> list[int]:
        """Token counts, one per text."""
        ...


class WhitespaceCounter:
    """Counts whitespace-separated words (the default when no tokenizer is named)."""

    name = "whitespace"

    def count(self, texts: list[str]) -> list[int]:
        """Word counts."""
        return [len(t.split()) for t in texts]


class _TokenizersCounter:
    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer

        self.name = str(folder)
        self._tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def count(self, texts: list[str]) -> list[int]:
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        return [len(e.ids) for e in encodings]


class _AutoCounter:
    def __init__(self, folder: Path) -> None:
        from transformers import AutoTokenizer

        self.name = str(folder)
        self._tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False, local_files_only=True)

    def count(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self._tokenizer(texts, add_special_tokens=False)["input_ids"]]


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9][A-Za-z0-9._-]{0,127})?")


def token_counter(tokenizer: str = "", *, models_dir: Path | None = None, field: str = "tokenizer") -> TokenCounter:
    """Return a counter for a tokenizer spec: "" (whitespace) or the name of a model in ``models_dir``.

    Raises:
        InvalidInput: not a model name, no such model, or its tokenizer cannot be loaded.
    """
    if not tokenizer:
        return WhitespaceCounter()
    folder = _model_folder(tokenizer, models_dir)
    if folder is None:
        known = _names(models_dir)
        listed = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "") if known else "none is installed"
        raise InvalidInput.field_error(
            field, f"tokenizer {echo(tokenizer)} is not a model of this service: name one of its models "
                   f"({listed}); nothing is downloaded")
    return _load(folder, tokenizer, field)


@functools.lru_cache(maxsize=8)
def _load(folder: Path, name: str, field: str) -> TokenCounter:
    try:
        if (folder / "tokenizer.json").is_file():
            return _TokenizersCounter(folder)
        return _AutoCounter(folder)
    except Exception:  # a broken folder: say so instead of INTERNAL (the cause is logged)
        log.warning("cannot load the tokenizer of model %s from %s", name, folder, exc_info=True)
        raise InvalidInput.field_error(field, f"the tokenizer of model {echo(name)} cannot be loaded: "
                                              "ask an operator to check the model's folder") from None


def _model_folder(name: str, models_dir: Path | None) -> Path | None:
    if models_dir is None or not MODEL_NAME.fullmatch(name) or ".." in name:
        return None
    root = models_dir.resolve()
    folder = (root / name).resolve()
    if root not in folder.parents or not folder.is_dir():
        return None
    has_tokenizer = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    return folder if has_tokenizer else None


def _names(models_dir: Path | None) -> list[str]:
    if models_dir is None or not models_dir.is_dir():
        return []
    return sorted(p.name for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
