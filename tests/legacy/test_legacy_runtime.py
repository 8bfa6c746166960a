"""LegacyRuntime: polling, commands off the caller's thread, crash recovery, bounded shutdown."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from daqbridge.errors import ConfigError, InstrumentFault, InstrumentTimeout, ValueRejected
from daqbridge.legacy import (
    Command,
    DataDistributor,
    LegacyInstrumentError,
    LegacyRuntime,
    RestartPolicy,
)
from tests.legacy.legacy_test_instruments import (
    CounterSource,
    CrashingSource,
    HungSource,
    MoverSource,
    SlowSource,
    wait_until,
)

FAST = RestartPolicy(initial_delay=0.05, max_delay=0.2)


@pytest.fixture
def runtime():
    rt = LegacyRuntime(restart_policy=FAST)
    yield rt
    rt.stop(timeout=3)


def test_polling_rates_are_roughly_honoured(runtime):
    fast, slow = CounterSource("fast"), CounterSource("slow")
    runtime.add(fast, polling_rate_hz=40)
    runtime.add(slow, polling_rate_hz=5)
    sub = runtime.distributor.subscribe(name="all", maxsize=10_000)
    runtime.start()
    assert runtime.wait_running(5)
    assert wait_until(lambda: len(slow.poll_times) >= 6, 10)
    window = slow.poll_times[-1] - slow.poll_times[0]
    fast_in_window = [t for t in fast.poll_times if slow.poll_times[0] <= t <= slow.poll_times[-1]]
    # Generous: a 2-core machine shared by many agents. Expected ratio 8.
    assert 2 <= len(fast_in_window) / (len(slow.poll_times) - 1) <= 12
    slow_rate = (len(slow.poll_times) - 1) / window
    assert 2 <= slow_rate <= 6  # never faster than asked (no bursts), not starved either
    got = sub.drain()
    assert {(x.instrument_id, x.channel) for x in got} >= {("fast", "count"), ("slow", "noise")}
    h = runtime.health()["fast"]
    assert h["state"] == "running" and h["polls"] >= 2 and h["last_measurement_time"] > 1.6e9


def test_commands_run_on_the_instrument_thread_with_results_as_values(runtime):
    c = CounterSource("meter")
    runtime.add(c, polling_rate_hz=20)
    runtime.start()
    assert runtime.wait_running(5)
    ok = runtime.submit("meter", Command.set("gain", 2.5), timeout=5)
    assert ok.ok and ok.value == 2.5 and c.gain == 2.5
    assert runtime.submit("meter", Command.query("gain"), timeout=5).value == 2.5
    assert c.handled_on == {"legacy-meter"}  # never the caller's thread

    refused = runtime.submit("meter", Command.set("gain", 99), timeout=5)
    assert (
        not refused.ok and isinstance(refused.error, ValueRejected) and "outside" in refused.message
    )
    assert c.gain == 2.5

    fault = runtime.submit("meter", Command.execute("fault"), timeout=5)
    assert isinstance(fault.error, InstrumentFault) and fault.error.code == "OVER"

    bug = runtime.submit("meter", Command.execute("explode"), timeout=5)
    assert not bug.ok and isinstance(bug.error, LegacyInstrumentError)
    assert "RuntimeError" in bug.message and "driver bug on purpose" in bug.message
    # A failing command is not a crash: polling continues, no restart.
    assert runtime.health()["meter"]["restarts"] == 0

    unknown = runtime.submit("metre", Command.query("gain"), timeout=1)
    assert not unknown.ok and "metre" in unknown.message and "meter" in unknown.message
    with pytest.raises(TypeError, match="Command"):
        runtime.submit("meter", "gain?", timeout=1)  # type: ignore[arg-type]


def test_pushed_measurements_reach_the_distributor(runtime):
    c = CounterSource("streamer")
    runtime.add(c, polling_rate_hz=0)  # command-only: never polled
    sub = runtime.distributor.subscribe(name="s", instrument_ids=["streamer"])
    runtime.start()
    assert runtime.submit("streamer", Command.execute("burst", n=3), timeout=5).ok
    assert [x.value for x in sub.drain()] == [0, -1, -2]
    assert c.poll_times == []
    assert runtime.health()["streamer"]["measurements"] == 3


def test_submit_async_does_not_block_the_event_loop(runtime):
    mover = MoverSource("mover")
    runtime.add(mover, polling_rate_hz=0)
    runtime.start()
    assert runtime.wait_running(5)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        result = await runtime.submit_async(
            "mover", Command.execute("sleep", seconds=0.5), timeout=10
        )
        t.cancel()
        return result, ticks

    result, ticks = asyncio.run(main())
    assert result.ok and result.value == "slept"
    assert ticks >= 5  # the loop kept running while the instrument worked


def test_submit_timeout_reports_and_queued_command_is_never_sent_late(runtime):
    mover = MoverSource("mover", move_time=30)
    runtime.add(mover, polling_rate_hz=0)
    runtime.start()
    assert runtime.wait_running(5)
    fut = runtime.submit_future("mover", Command.execute("move"))
    assert mover.moving.wait(5)
    t0 = time.monotonic()
    late = runtime.submit("mover", Command.execute("reset", to=42), timeout=0.2)
    assert time.monotonic() - t0 < 5
    assert not late.ok and isinstance(late.error, InstrumentTimeout)
    assert "withdrawn" in late.message
    # halt() interrupts the move from outside the busy worker.
    stopped = runtime.halt("mover", timeout=5)
    assert stopped.ok and mover.stops == 1
    assert fut.result(5).value == "stopped"
    # The withdrawn reset must never run, even though the worker is free now.
    assert runtime.submit("mover", Command.query("count"), timeout=5).value == 0
    assert mover.count == 0


def test_running_command_timeout_names_what_the_instrument_is_doing(runtime):
    mover = MoverSource("mover", move_time=30)
    runtime.add(mover, polling_rate_hz=0)
    runtime.start()
    assert runtime.wait_running(5)
    res = runtime.submit("mover", Command.execute("move"), timeout=0.3)
    assert isinstance(res.error, InstrumentTimeout)
    assert "execute move" in res.message and "hung in" in res.message
    runtime.halt("mover")


def test_a_poll_slower_than_its_period_does_not_starve_commands(runtime):
    slow = SlowSource("slow", poll_time=0.05)
    runtime.add(slow, polling_rate_hz=100)  # asks for polls every 10 ms; each takes 50 ms
    runtime.start()
    assert runtime.wait_running(5)
    for gain in (1, 2, 3):
        result = runtime.submit("slow", Command.set("gain", gain), timeout=5)
        assert result.ok and slow.gain == gain
    polls = len(slow.poll_times)
    assert wait_until(lambda: len(slow.poll_times) >= polls + 3, 5)  # and polling goes on


def test_crashed_poller_restarts_with_growing_backoff_and_reports(runtime):
    crasher = CrashingSource("crasher", bad_polls={3, 4, 5})
    events: list[tuple[str, str]] = []
    runtime.add_listener(lambda iid, h: events.append((iid, h["state"])))
    runtime.add(crasher, polling_rate_hz=50)
    runtime.add(CounterSource("bystander"), polling_rate_hz=50)
    runtime.start()
    assert wait_until(lambda: len(crasher.poll_times) >= 5, 15)
    h = runtime.health()["crasher"]
    assert h["restarts"] == 3 and h["state"] == "running"
    assert "garbled reply on poll 5" in h["last_error"] and h["last_error"].startswith("poll:")
    assert ("crasher", "restarting") in events and events[-1] == ("crasher", "running")
    # 4 connects: first + 3 restarts; gaps follow the back-off 0.05, 0.1, 0.2 (never shorter).
    gaps = [b - a for a, b in zip(crasher.connect_times, crasher.connect_times[1:], strict=False)]
    assert len(crasher.connect_times) == 4
    for gap, expected in zip(gaps[1:], [0.1, 0.2], strict=True):
        assert expected * 0.9 <= gap < expected + 3
    assert crasher.disconnects == 3  # every restart released the link first
    assert runtime.health()["bystander"]["restarts"] == 0


def test_backoff_is_bounded_and_gives_up_after_max_restarts():
    policy = RestartPolicy(initial_delay=0.02, max_delay=0.05, max_restarts=4)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [0.02, 0.04, 0.05, 0.05, 0.05]
    rt = LegacyRuntime(restart_policy=policy)
    dead = CrashingSource("dead", always_fail=True)
    rt.add(dead, polling_rate_hz=10)
    rt.start()
    try:
        assert wait_until(lambda: rt.health()["dead"]["state"] == "failed", 10)
        h = rt.health()["dead"]
        assert h["restarts"] == 4 and "port gone" in h["last_error"]
        res = rt.submit("dead", Command.query("gain"), timeout=2)
        assert not res.ok and "failed" in res.message and "retry" in res.message
        # Plugged back in: retry() reconnects it.
        dead.always_fail = False
        rt.retry("dead")
        assert wait_until(lambda: rt.health()["dead"]["state"] == "running", 10)
        assert rt.submit("dead", Command.query("gain"), timeout=2).ok
    finally:
        assert rt.stop(3)


def test_initial_connect_failure_is_retried(runtime):
    flaky = CrashingSource("flaky", bad_connects={1})
    runtime.add(flaky, polling_rate_hz=20)
    runtime.start()
    assert wait_until(lambda: runtime.health()["flaky"]["state"] == "running", 10)
    assert runtime.health()["flaky"]["restarts"] == 1 and flaky.connects == 1


def test_slow_subscriber_does_not_slow_polling(runtime):
    gate = threading.Event()
    runtime.distributor.subscribe(lambda m: gate.wait(10), maxsize=5, name="frozen_plot")
    c = CounterSource("meter")
    runtime.add(c, polling_rate_hz=100)
    runtime.start()
    assert wait_until(lambda: len(c.poll_times) >= 30, 15)
    stats = runtime.distributor.stats()["frozen_plot"]
    assert stats["dropped"] >= 40 and stats["queued"] <= 5
    gate.set()


def test_stop_is_ordered_and_disconnects_everything(runtime):
    events: list = []
    a, b = CounterSource("a", events=events), CounterSource("b", events=events)
    runtime.add(a, polling_rate_hz=50)
    runtime.add(b, polling_rate_hz=50)
    runtime.start()
    assert wait_until(lambda: len(a.poll_times) > 3 and len(b.poll_times) > 3, 10)
    assert runtime.stop(timeout=5) is True
    assert runtime.last_stop_report.clean and not runtime.last_stop_report.stragglers
    first_disconnect = min(t for kind, _, t in events if kind == "disconnect")
    last_poll = max(t for kind, _, t in events if kind == "poll")
    assert last_poll < first_disconnect  # all polling stopped before any instrument let go
    assert a.disconnects == b.disconnects == 1
    assert {h["state"] for h in runtime.health().values()} == {"stopped"}
    after = runtime.submit("a", Command.query("gain"), timeout=1)
    assert not after.ok and "stopped" in after.message


def test_stop_with_a_hung_instrument_returns_by_its_deadline_and_names_it():
    rt = LegacyRuntime(restart_policy=FAST)
    hung, fine = HungSource("hung"), CounterSource("fine")
    rt.add(hung, polling_rate_hz=20)
    rt.add(fine, polling_rate_hz=20)
    rt.start()
    try:
        assert wait_until(lambda: len(fine.poll_times) > 2, 10)
        hung.hang.set()
        assert hung.in_hang.wait(10)
        t0 = time.monotonic()
        clean = rt.stop(timeout=1.0)
        elapsed = time.monotonic() - t0
        assert clean is False
        assert elapsed < 1.0 + 2.0  # generous slack for a loaded machine; it did not hang
        report = rt.last_stop_report
        assert list(report.stragglers) == ["hung"]
        assert "poll" in report.stragglers["hung"]
        assert fine.disconnects == 1 and rt.health()["fine"]["state"] == "stopped"
    finally:
        hung.release.set()
    # Released, the straggler finishes its shutdown by itself.
    assert wait_until(lambda: hung.disconnects == 1, 10)


def test_stop_interrupts_a_long_command_with_the_driver_stop(runtime):
    mover = MoverSource("mover", move_time=30)
    runtime.add(mover, polling_rate_hz=0)
    runtime.start()
    fut = runtime.submit_future("mover", Command.execute("move"))
    assert mover.moving.wait(5)
    assert runtime.stop(timeout=5) is True
    assert mover.stops == 1 and fut.result(1).value == "stopped"


def test_lifecycle_misuse_gives_clear_errors():
    rt = LegacyRuntime()
    c = CounterSource("c")
    rt.add(c)
    before = rt.submit("c", Command.query("gain"), timeout=1)
    assert not before.ok and "start()" in before.message
    with pytest.raises(ConfigError, match="two legacy instruments"):
        rt.add(CounterSource("c"))
    with pytest.raises(ConfigError, match="polling_rate_hz"):
        rt.add(CounterSource("d"), polling_rate_hz=-1)
    with pytest.raises(TypeError):
        rt.add(object())  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="nope"):
        rt.halt("nope")
    assert rt.stop(1) is True  # never started: nothing to do
    with pytest.raises(RuntimeError, match="new one"):
        rt.start()


def test_add_while_running_and_remove(runtime):
    runtime.start()
    late = CounterSource("late")
    runtime.add(late, polling_rate_hz=20)
    assert wait_until(lambda: len(late.poll_times) >= 2, 10)
    assert runtime.remove("late", timeout=5) is True
    assert late.disconnects == 1 and "late" not in runtime.instruments


def test_shared_distributor_and_instruments_mapping():
    d = DataDistributor(default_maxsize=7)
    rt = LegacyRuntime(distributor=d)
    rt.add(CounterSource("x"))
    assert rt.distributor is d and list(rt.instruments) == ["x"]
    with pytest.raises(TypeError):
        rt.instruments["y"] = CounterSource("y")  # type: ignore[index]
