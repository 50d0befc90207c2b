"""This process's one Ray connection: forgotten when it breaks, so the next use connects anew.

A Ray Client connection (``ray://head:10001``) that drops (the head restarting, its pod evicted, its
client server failing under memory pressure) leaves ``ray.is_initialized()`` true with a dead client:
every later call would fail the same way until the process restarts. The services call ``forget``
on a ``ConnectionError`` and report it as ``Unavailable`` (reason ``RAY_UNREACHABLE``): retryable,
nothing wrong with the request.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from tuneforge.common.errors import Unavailable
from tuneforge.common.public_text import echo

log = logging.getLogger(__name__)

# ``Unavailable.reason`` when the Ray cluster could not be reached or dropped the connection.
RAY_UNREACHABLE = "RAY_UNREACHABLE"
# One process, one Ray connection: whoever connects or forgets holds this.
LOCK = threading.RLock()


def connect(address: str, setting: str) -> Any:
    """The ``ray`` module, connected to ``address`` ('' starts a local Ray) unless it already is.

    Raises:
        Unavailable: (reason ``RAY_UNREACHABLE``) the cluster refused or did not answer; ``setting``
            names where the address is configured.
    """
    import ray

    with LOCK:
        if not ray.is_initialized():
            try:
                ray.init(address=address or None, include_dashboard=False, log_to_driver=False)
            except ConnectionError as exc:
                raise lost(address, exc, setting, during="while connecting") from exc
    return ray


def forget() -> None:
    """Drop this process's Ray connection (a broken one may fail to close: it is gone either way)."""
    import ray

    try:
        with LOCK:
            ray.shutdown()
    except Exception:  # a dead connection may fail to close
        log.debug("ray.shutdown after a lost connection failed", exc_info=True)


def lost(address: str, exc: BaseException, setting: str, *, during: str) -> Unavailable:
    """Forget the connection and return the error to raise: which cluster, what broke, what to check."""
    forget()
    where = echo(address) if address else "the local Ray"
    return Unavailable(
        f"lost the connection to the Ray cluster at {where} {during} ({type(exc).__name__}: {str(exc)[:300]}): "
        f"retry; if it persists, check that the Ray head is running and reachable ({setting})",
        reason=RAY_UNREACHABLE)
