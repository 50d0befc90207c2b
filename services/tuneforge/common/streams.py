"""The one way to stream an operation's event log to a client (grpc-free, so domains use it too).

``follow`` yields the events after a cursor, then waits for new ones a tick at a time. It ends:

* right after the subject's final event (``is_final``);
* one tick after it sees the subject ended with nothing left to send (a cursor at or beyond the
  last event of a finished run ends at once instead of waiting for news that never comes; the
  extra tick lets an event saved just after the status arrive);
* within a tick (``TICK_S``, well under a second) of the client going away (``is_active``), so a
  cancelled call frees its handler thread.

Streams are also capped per service (``ServiceSettings.max_streams``, answered RESOURCE_EXHAUSTED
by the interceptor) so that open streams never take every handler thread from unary calls and
health checks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

E = TypeVar("E")
TICK_S = 0.25


def follow(fetch_after: Callable[[int], Sequence[E]], *, cursor: int, sequence: Callable[[E], int],
           is_final: Callable[[E], bool], subject_ended: Callable[[], bool], is_active: Callable[[], bool],
           wait: Callable[[float], object] = time.sleep, tick_s: float = TICK_S) -> Iterator[E]:
    """Yield events after ``cursor`` until the subject has ended and its log is drained.

    Args:
        fetch_after: the stored events after a sequence number, oldest first.
        cursor: the last sequence the client has seen (0: from the start).
        sequence: an event's sequence number.
        is_final: whether an event is the subject's last (the stream ends after sending it).
        subject_ended: whether the subject (run, job, evaluation) has finished.
        is_active: whether the client is still there (``grpc.ServicerContext.is_active``).
        wait: blocks up to the given seconds, or less when news may have arrived (a Condition's
            ``wait``); ``time.sleep`` by default.
        tick_s: the longest single wait.
    """
    ended_seen = False
    while is_active():
        events = fetch_after(cursor)
        for event in events:
            cursor = sequence(event)
            yield event
            if is_final(event):
                return
        if events:
            continue
        if ended_seen:
            return
        ended_seen = subject_ended()
        wait(tick_s)
