"""The one way a service runs periodic background work: a daemon thread, stopped by the returned function.

A failing pass is logged and retried at the next interval; it never ends the loop. Stopping sets the
event (a waiting loop wakes at once) and joins the thread, so a service's stop hook returns only
after the pass in flight has finished.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


def start_periodic(work: Callable[[], object], interval_s: float, *, name: str, what: str) -> Callable[[], None]:
    """Run ``work`` every ``interval_s`` seconds in a thread named ``name``.

    Args:
        work: one pass; its result is ignored.
        interval_s: seconds between passes; 0 or less runs nothing.
        name: the thread's name (it shows in stack dumps).
        what: the pass in words, for the log line when it fails.

    Returns:
        A function that stops the loop and waits (at most 30 s) for a pass in flight.
    """
    stopped = threading.Event()
    if interval_s <= 0:
        return stopped.set

    def loop() -> None:
        while not stopped.wait(interval_s):
            try:
                work()
            except Exception:
                log.exception("%s failed; retrying in %.0fs", what, interval_s)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()

    def stop() -> None:
        stopped.set()
        thread.join(timeout=30)

    return stop
