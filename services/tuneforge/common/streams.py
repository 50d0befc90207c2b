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

import bisect
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

E = TypeVar("E")
K = TypeVar("K", bound=Hashable)
TICK_S = 0.25
LEAVE_CHECK_S = 1.0  # SharedFollower: how often an idle stream looks whether its client is still there


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


class SharedFollower(Generic[K, E]):
    """``follow`` for many streams at once: one poller reads each followed subject's new events a
    tick at a time, however many streams follow it, and wakes them.

    ``follow`` polls the store once a tick per stream, so a service holding hundreds of watch
    streams spent its CPU (and its database) answering "anything new?" for each of them. Here each
    stream reads its history from the store itself (``fetch_after`` from its cursor: the subject's
    tenancy is checked there), then is served the events the poller keeps for the subject (the last
    ``keep``; a stream further behind reads the store again). The ends are ``follow``'s: after the
    final event; one tick after the subject is seen ended with nothing left; within a second of the
    client leaving (at once when ``wake`` is called then). The poller thread runs while a subject
    is followed; streams wake only when there is news.
    """

    def __init__(self, fetch_after: Callable[[K, int], Sequence[E]], *, sequence: Callable[[E], int],
                 subject_ended: Callable[[K], bool], tick_s: float = TICK_S, keep: int = 1000) -> None:
        self._fetch, self._seq, self._ended = fetch_after, sequence, subject_ended
        self._tick, self._keep = tick_s, keep
        self._cond = threading.Condition()
        self._subjects: dict[K, _Subject[E]] = {}
        self._poller: threading.Thread | None = None

    def follow(self, key: K, *, cursor: int, is_final: Callable[[E], bool],
               is_active: Callable[[], bool]) -> Iterator[E]:
        """Yield ``key``'s events after ``cursor`` until it has ended and its log is drained."""
        for event in self._fetch(key, cursor):  # the history, and the tenancy check, from the store
            cursor = self._seq(event)
            yield event
            if is_final(event):
                return
        subject = self._join(key, cursor)
        try:
            while is_active():
                with self._cond:
                    if subject.last <= cursor and not subject.drained:
                        # Woken by news or by ``wake`` (a client leaving); else once a second
                        # checks is_active: hundreds of idle streams must not wake every tick.
                        self._cond.wait(LEAVE_CHECK_S)
                    behind = cursor < subject.base
                    news = [] if behind else subject.events[bisect.bisect_right(subject.seqs, cursor):]
                    drained = subject.drained
                if behind:
                    news = list(self._fetch(key, cursor))
                for event in news:
                    cursor = self._seq(event)
                    yield event
                    if is_final(event):
                        return
                if drained and not news:
                    return
        finally:
            self._leave(key)

    def _join(self, key: K, cursor: int) -> _Subject[E]:
        with self._cond:
            subject = self._subjects.get(key)
            if subject is None:
                subject = self._subjects[key] = _Subject(base=cursor, last=cursor)
            subject.followers += 1
            if self._poller is None or not self._poller.is_alive():
                self._poller = threading.Thread(target=self._poll, name="stream-poller", daemon=True)
                self._poller.start()
            return subject

    def _leave(self, key: K) -> None:
        with self._cond:
            subject = self._subjects.get(key)
            if subject is not None:
                subject.followers -= 1
                if subject.followers <= 0:
                    del self._subjects[key]

    def _poll(self) -> None:
        while True:
            with self._cond:
                if not self._subjects:
                    self._poller = None
                    return
                watched = list(self._subjects.items())
            changed = False
            for key, subject in watched:
                try:
                    changed |= self._refresh(key, subject)
                except Exception:  # the store is down or the subject is gone: streams keep waiting
                    log.warning("could not read the events of %s; retrying", key, exc_info=True)
            if changed:
                self.wake()
            time.sleep(self._tick)

    def wake(self) -> None:
        """Wake every waiting stream (news, or a client left: pass it to ``grpc.RpcContext.add_callback``)."""
        with self._cond:
            self._cond.notify_all()

    def _refresh(self, key: K, subject: _Subject[E]) -> bool:
        """Read the subject's new events; whether its streams have something to do."""
        new = self._fetch(key, subject.last)
        ended = not new and (subject.ended_seen or self._ended(key))
        with self._cond:
            if new:
                subject.events += new
                subject.seqs += [self._seq(e) for e in new]
                subject.last = subject.seqs[-1]
                if len(subject.events) > self._keep:
                    subject.base = subject.seqs[-self._keep - 1]
                    del subject.events[:-self._keep], subject.seqs[:-self._keep]
            elif ended:
                subject.drained, subject.ended_seen = subject.ended_seen, True
            return bool(new) or subject.drained


@dataclass
class _Subject(Generic[E]):
    base: int  # events after this sequence are kept in ``events`` (older ones: read the store)
    last: int  # the last sequence seen
    events: list[E] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)  # the events' sequence numbers, ascending
    followers: int = 0
    ended_seen: bool = False
    drained: bool = False  # ended, and a tick later still nothing new: streams end
