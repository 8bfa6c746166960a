"""What the legacy runtime's health says while a failed poll is being handled.

Whoever waits for a legacy driver to recover from a fault (the fault campaign, a status page, a
plan that checks health first) reads ``health()`` from another thread, at any moment. A poll
that failed must never show up there as an idle, running driver with no new error: a waiter
that looks in that moment concludes "recovered" while the driver is about to restart.
"""

from __future__ import annotations

import threading

from daqbridge.legacy import LegacyRuntime, RestartPolicy
from daqbridge.legacy._runtime import _Worker
from tests.legacy.legacy_test_instruments import CrashingSource, wait_until


def test_a_failed_poll_is_never_reported_as_an_idle_running_driver():
    # The moment between the end of the failed poll and the runtime's handling of the failure
    # is made certain by a trace on the worker thread: health() is read as the handling starts.
    runtime = LegacyRuntime(restart_policy=RestartPolicy(initial_delay=0.05, max_delay=0.1))
    crasher = CrashingSource("crasher", bad_polls={2})
    runtime.add(crasher, polling_rate_hz=50)
    seen: list[dict] = []

    def on_crash(frame, event, arg):
        if event == "call" and frame.f_code is _Worker._crashed.__code__:
            seen.append(runtime.health()["crasher"])
        return None

    threading.settrace(on_crash)
    try:
        runtime.start()
    finally:
        threading.settrace(None)  # only the threads started above are traced
    try:
        assert wait_until(lambda: bool(seen), 10)
        health = seen[0]
        idle_and_well = (
            health["activity"] is None
            and health["state"] == "running"
            and health["last_error_time"] is None
        )
        assert not idle_and_well, health
    finally:
        assert runtime.stop(3)
