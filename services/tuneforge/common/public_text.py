"""What a client may read: bounded echoes and no server paths in messages.

Every error message a service sends passes through ``public_message`` (the interceptor calls it),
so whatever a message was built from, the client never sees:

* more than ``MAX_MESSAGE_CHARS`` characters (gRPC sends the message in a trailer, and a message
  echoing a 30k-character name came back as RESOURCE_EXHAUSTED instead of the real error);
* a server path or URL: the roots registered at start-up (data folder, models folder, object-store
  root, caches) become a label such as ``<models>``, and any other absolute path or ``file://``
  URL becomes ``<server path>`` (site-packages, temp folders, home folders).

``echo`` is for building messages: it quotes a caller's value, cut to ``MAX_ECHO_CHARS``.
"""

from __future__ import annotations

import contextlib
import os
import re
import site
import sys
import tempfile
import threading
from pathlib import Path

MAX_ECHO_CHARS = 200
MAX_MESSAGE_CHARS = 1024
MAX_DESCRIPTION_CHARS = 512
MAX_FIELD_CHARS = 256
ELLIPSIS = "..."

# An absolute path of two or more components that does not continue a word, a URL or a label
# ("tenants/acme/x" and "s3://bucket/key" are not matched; "/srv/data/x" and "C:\\x\\y" are).
_ABS_PATH = re.compile(r"(?<![\w:/>.~-])/(?:[\w.@+~-]{1,255}/){1,64}[\w.@+~-]{0,255}")
_WIN_PATH = re.compile(r"\b[A-Za-z]:\\(?:[^\\\s'\"]{1,255}\\){1,64}[^\\\s'\"]{0,255}")
_FILE_URL = re.compile(r"(?i)\bfile://[^\s'\"]{0,2048}")
_HIDDEN = "<server path>"

_roots: dict[str, str] = {}
_lock = threading.Lock()


def echo(value: object, limit: int = MAX_ECHO_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters with an ellipsis: for a caller's value in a message."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return repr(text[:limit]) + ELLIPSIS + f" ({len(text)} characters)"
    return repr(text)


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending with an ellipsis when cut."""
    return text if len(text) <= limit else text[: max(0, limit - len(ELLIPSIS))] + ELLIPSIS


def register_private_path(path: str | os.PathLike[str], label: str) -> None:
    """Hide ``path`` (and everything under it) from client messages behind ``<label>``."""
    text = str(path).rstrip("/")
    if len(text) < 2:
        return
    with _lock:
        _roots[text] = f"<{label}>"
        resolved = str(Path(text).expanduser().resolve(strict=False)).rstrip("/")
        _roots.setdefault(resolved, f"<{label}>")


def scrub_paths(text: str) -> str:
    """``text`` with registered roots replaced by their labels and any other server path hidden."""
    with _lock:
        roots = sorted(_roots.items(), key=lambda kv: len(kv[0]), reverse=True)
    for root, label in roots:
        if root in text:
            text = text.replace(root, label)
    text = _FILE_URL.sub(_HIDDEN, text)
    text = _WIN_PATH.sub(_HIDDEN, text)
    return _ABS_PATH.sub(_HIDDEN, text)


def public_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """A message safe to send: bounded first (so scrubbing stays cheap), scrubbed, bounded again."""
    return clip(scrub_paths(clip(text, 4 * limit)), limit)


def _register_process_paths() -> None:
    """The interpreter's own folders: tracebacks and library errors name them."""
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, tempfile.gettempdir(), os.path.expanduser("~")]
    with contextlib.suppress(AttributeError):  # virtualenvs without site.getsitepackages
        candidates += [*site.getsitepackages(), site.getusersitepackages()]
    for candidate in candidates:
        if candidate and candidate != "/":
            register_private_path(candidate, "server path")


_register_process_paths()
