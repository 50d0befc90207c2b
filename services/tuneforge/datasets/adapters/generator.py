"""Local generative models for curation (``steps_gen.GeneratorProvider``): ``<models_dir>/<name>/``.

A model is a Hugging Face folder (``config.json``, ``*.safetensors``, tokenizer) in the service's
models folder (``TUNEFORGE_MODELS_DIR``), the convention the evaluation and checkpoint services
use for base models. It is loaded with the engine's evaluation loader (safetensors only,
``trust_remote_code`` off) and generates with the engine's batched, seeded generation
(``tuneforge.engine.evaluate.generation``), through the model's chat template when it has one.

Loading is lazy: importing this module imports no torch, and a model is loaded at the first
generation that needs it. A loaded model is shared by every run using it at the same time and
freed when the last of them ends (a weak cache); calls are serialized per model, because the
engine's generation switches the tokenizer's padding side while it encodes.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuneforge.common.errors import FailedPrecondition, InvalidInput
from tuneforge.common.public_text import echo
from tuneforge.common.storage.keys import check_key
from tuneforge.datasets.domain.steps_gen import Chat, GenerationParams, Prompt

log = logging.getLogger(__name__)


def check_model_name(name: str, field: str = "model") -> str:
    """Validate a model folder name (one safe path segment) and return it.

    Raises:
        InvalidInput: the name is empty, has a path separator, ``..``, a leading ``.`` or
            anything ``check_key`` refuses.
    """
    if not name or "/" in name or ".." in name or name.startswith("."):
        raise InvalidInput.field_error(field, f"{echo(name)} is not a model folder name such as 'smollm2-135m-instruct'")
    return check_key(name, field=field)


class _Loaded:
    """A model in eval mode, its tokenizer and the lock serializing its calls (weak-referenceable)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.lock = threading.Lock()


class LocalGenerator:
    """``TextGenerator`` over one local model, loaded at its first call."""

    def __init__(self, owner: LocalTextGenerators, name: str) -> None:
        self._owner, self.name = owner, name
        self._loaded: _Loaded | None = None  # a strong reference keeps the shared model alive

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams) -> list[str]:
        """One completion per prompt (the chat template is applied when the model has one)."""
        from tuneforge.engine.evaluate.generation import generate

        if self._loaded is None:
            self._loaded = self._owner.load(self.name)
        loaded = self._loaded
        chat = bool(getattr(loaded.tokenizer, "chat_template", None))
        inputs: list[Any] = [_as_chat(p) for p in prompts] if chat else [_as_text(p) for p in prompts]
        settings = generation_settings(params)
        with loaded.lock:
            return [g.text for g in generate(loaded.model, loaded.tokenizer, inputs, settings)]


def _as_chat(prompt: Prompt) -> Chat:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def _as_text(prompt: Prompt) -> str:
    """A chat as plain text for a model without a chat template: each turn on its own line."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt if m["role"] != "system") + "\n"


def generation_settings(params: GenerationParams) -> Any:
    """The engine's ``GenerationSettings`` for a step's parameters (temperature 0 = greedy)."""
    from tuneforge.engine.evaluate.generation import GenerationSettings

    sample = params.temperature > 0
    return GenerationSettings(max_new_tokens=params.max_new_tokens, do_sample=sample,
                              temperature=params.temperature if sample else 1.0, seed=params.seed,
                              batch_size=params.batch_size)


class LocalTextGenerators:
    """Implements ``GeneratorProvider`` over ``<models_dir>/<name>/`` folders.

    Args:
        models_dir: the service's models folder (``settings.models_dir``); it may not exist.
        device: ``cpu``, ``cuda`` or ``""`` (a GPU when one is visible, else the CPU).
    """

    def __init__(self, models_dir: Path, device: str = "") -> None:
        self.models_dir = Path(models_dir)
        self.device = device
        self._cache: weakref.WeakValueDictionary[str, _Loaded] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def _usable(self, folder: Path) -> bool:
        return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))

    def names(self) -> list[str]:
        """Model folders holding ``config.json`` and safetensors weights, sorted."""
        if not self.models_dir.is_dir():
            return []
        return sorted(p.name for p in self.models_dir.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and self._usable(p))

    def get(self, name: str) -> LocalGenerator:
        """A lazily loading generator for ``name``.

        Raises:
            InvalidInput: ``name`` is not a folder name.
            FailedPrecondition: no usable folder of that name.
        """
        folder = self.models_dir / check_model_name(name)
        if not self._usable(folder):
            raise FailedPrecondition(
                f"no model {echo(name)} with config.json and *.safetensors in the models folder: add its folder under "
                "TUNEFORGE_MODELS_DIR")
        return LocalGenerator(self, name)

    def load(self, name: str) -> _Loaded:
        """The loaded model ``name``, shared while anything uses it."""
        with self._lock:
            loaded = self._cache.get(name)
            if loaded is None:
                from tuneforge.engine.evaluate.loading import load_model, pick_device

                started = time.monotonic()
                device = self.device or pick_device()
                model = load_model(self.models_dir / check_model_name(name), device=device)
                loaded = _Loaded(model.model, model.tokenizer)
                self._cache[name] = loaded
                log.info("loaded generative model %s on %s in %.1fs", name, device, time.monotonic() - started)
            return loaded
