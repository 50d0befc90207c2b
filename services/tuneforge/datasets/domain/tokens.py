"""Token counting: whitespace by default, or a local tokenizer folder (never downloaded).

A folder with ``tokenizer.json`` is loaded with the light ``tokenizers`` library; any other
folder goes through ``transformers.AutoTokenizer`` with ``trust_remote_code=False`` and
``local_files_only=True``. Hub names are refused: nothing is fetched at run time.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Protocol

from tuneforge.common.errors import InvalidInput


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


@functools.lru_cache(maxsize=8)
def token_counter(tokenizer: str = "", *, field: str = "tokenizer") -> TokenCounter:
    """Return a counter for a tokenizer spec: "" (whitespace) or a local folder.

    Raises:
        InvalidInput: the folder does not exist or holds no loadable tokenizer.
    """
    if not tokenizer:
        return WhitespaceCounter()
    folder = Path(os.path.expanduser(tokenizer))
    if not folder.is_dir():
        raise InvalidInput.field_error(
            field, f"tokenizer {tokenizer!r} is not a local folder: give a folder with tokenizer.json (nothing is downloaded)"
        )
    try:
        if (folder / "tokenizer.json").is_file():
            return _TokenizersCounter(folder)
        return _AutoCounter(folder)
    except Exception as exc:  # noqa: BLE001 - a broken folder: say so instead of INTERNAL
        raise InvalidInput.field_error(field, f"cannot load the tokenizer in {tokenizer!r}: {str(exc)[:200]}") from None
