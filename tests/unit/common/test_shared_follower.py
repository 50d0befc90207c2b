"""SharedFollower: many watch streams on one subject cost one poller, not one poll loop each."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from tuneforge.common.streams import SharedFollower

FINAL = -1


class Log:
    """An event log in memory: events are (sequence, value); value FINAL ends the subject."""

    def __init__(self) -> None:
        self.events: list[tuple[int, int]] = []
        self.ended = False
        self.reads: dict[str, int] = {}
        self.lock = threading.Lock()

    def append(self, value: int) -> None:
        with self.lock:
            self.events.append((len(self.events) + 1, value))

    def after(self, key: str, cursor: int) -> list[tuple[int, int]]:
        with self.lock:
            who = "poller" if threading.current_thread().name == "stream-poller" else "stream"
            self.reads[who] = self.reads.get(who, 0) + 1
            return [e for e in self.events if e[0] > cursor]


def _follower(log: Log, keep: int = 1000) -> SharedFollower[str, tuple[int, int]]:
    return SharedFollower(log.after, sequence=lambda e: e[0], subject_ended=lambda key: log.ended,
                          tick_s=0.01, keep=keep)


def _collect(follower: SharedFollower[str, tuple[int, int]], n: int, cursor: int = 0,
             active: threading.Event | None = None) -> tuple[list[list[int]], list[threading.Thread], threading.Event]:
    got: list[list[int]] = [[] for _ in range(n)]
    joined = threading.Event()
    started = [0]
    lock = threading.Lock()

    def run(i: int) -> None:
        stream: Iterator[tuple[int, int]] = follower.follow(
            "job", cursor=cursor, is_final=lambda e: e[1] == FINAL,
            is_active=lambda: active is None or not active.is_set())
        with lock:
            started[0] += 1
            if started[0] == n:
                joined.set()
        for _, value in stream:
            got[i].append(value)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return got, threads, joined


def _join(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a stream did not end"


def test_every_stream_gets_every_event_and_reads_the_store_once_itself():
    log, n = Log(), 40
    log.append(1)
    follower = _follower(log)
    got, threads, joined = _collect(follower, n)
    assert joined.wait(30)
    for value in (2, 3, FINAL):
        log.append(value)
    _join(threads)
    assert got == [[1, 2, 3, FINAL]] * n
    assert log.reads["stream"] == n  # each stream's history; everything after came from the one poller


def test_a_stream_behind_the_kept_events_reads_the_store_again():
    log = Log()
    follower = _follower(log, keep=2)
    stream = follower.follow("job", cursor=0, is_final=lambda e: e[1] == FINAL, is_active=lambda: True)
    first: list[tuple[int, int]] = []
    reader = threading.Thread(target=lambda: first.append(next(stream)))
    reader.start()  # no history: the stream joins the poller and waits
    deadline = time.monotonic() + 30
    while "job" not in follower._subjects and time.monotonic() < deadline:
        time.sleep(0.01)
    log.append(1)
    reader.join(30)
    assert first == [(1, 1)]  # a slow client: it reads one event, then nothing for a while
    for value in range(2, 8):
        log.append(value)
    deadline = time.monotonic() + 30
    while follower._subjects["job"].last < 7 and time.monotonic() < deadline:  # the poller has read them all
        time.sleep(0.01)
    assert follower._subjects["job"].base > 1  # and kept only the last two
    reads = log.reads.get("stream", 0)
    log.append(FINAL)
    assert [v for _, v in stream] == [2, 3, 4, 5, 6, 7, FINAL]
    assert log.reads["stream"] > reads  # the events it missed came from the store


def test_streams_end_when_the_subject_has_ended_with_nothing_left():
    log = Log()
    log.append(1)
    follower = _follower(log)
    got, threads, joined = _collect(follower, 3)
    assert joined.wait(30)
    log.ended = True  # ended without a final event (e.g. the cursor was already past it)
    _join(threads)
    assert got == [[1]] * 3


@pytest.mark.parametrize("streams", [1, 5])
def test_streams_end_when_their_clients_leave_and_the_poller_stops(streams):
    log = Log()
    follower = _follower(log)
    gone = threading.Event()
    _, threads, joined = _collect(follower, streams, active=gone)
    assert joined.wait(30)
    gone.set()
    _join(threads)
    poller = follower._poller
    if poller is not None:
        poller.join(30)
        assert not poller.is_alive()
    assert follower._subjects == {}
