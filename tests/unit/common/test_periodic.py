"""The one periodic-work loop: a failing pass is retried, stop waits for the thread."""

from __future__ import annotations

import threading

from tuneforge.common.periodic import start_periodic


def test_a_failing_pass_is_logged_and_the_loop_goes_on_until_stopped(caplog) -> None:
    calls: list[int] = []
    second = threading.Event()

    def work() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("disk went away")
        second.set()

    stop = start_periodic(work, 0.01, name="test-periodic", what="test pass")
    assert second.wait(60), "the loop ended after a failing pass"
    stop()
    assert not any(t.name == "test-periodic" for t in threading.enumerate())
    assert "test pass failed" in caplog.text


def test_no_interval_runs_nothing() -> None:
    ran = threading.Event()
    stop = start_periodic(ran.set, 0, name="test-idle", what="idle")
    stop()
    assert not ran.is_set()
    assert not any(t.name == "test-idle" for t in threading.enumerate())
