"""DataDistributor: bounded per-subscriber queues, drops counted, the publisher never waits."""

from __future__ import annotations

import queue
import threading

import pytest

from daqbridge.legacy import DataDistributor, Measurement
from tests.legacy.legacy_test_instruments import wait_until


def m(i: int, inst: str = "meter", channel: str = "power") -> Measurement:
    return Measurement(inst, channel, float(i), "W", float(i))


def test_queue_subscriber_gets_everything_in_order():
    d = DataDistributor()
    sub = d.subscribe(name="logger")
    for i in range(10):
        d.publish(m(i))
    assert sub.get(timeout=1).value == 0.0
    assert [x.value for x in sub.drain()] == [float(i) for i in range(1, 10)]
    with pytest.raises(queue.Empty):
        sub.get(timeout=0.01)
    assert d.stats()["logger"]["delivered"] == 10 and d.published == 10


def test_full_queue_drops_oldest_and_counts():
    d = DataDistributor()
    sub = d.subscribe(maxsize=5, name="slow")
    for i in range(12):
        d.publish(m(i))
    assert sub.dropped == 7
    assert [x.value for x in sub.drain()] == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert d.stats()["slow"]["dropped"] == 7


def test_blocked_callback_subscriber_never_blocks_the_publisher():
    d = DataDistributor()
    gate = threading.Event()
    slow_seen: list[Measurement] = []

    def stuck(x: Measurement) -> None:
        slow_seen.append(x)
        gate.wait(10)  # a plot that froze

    slow = d.subscribe(stuck, maxsize=10, name="frozen_plot")
    fast = d.subscribe(name="archiver", maxsize=100_000)
    n = 5000
    done = threading.Event()

    def produce():
        for i in range(n):
            d.publish(m(i))
        done.set()

    t = threading.Thread(target=produce)
    t.start()
    # Bounded, generous: 5000 publishes take milliseconds unless the publisher blocks (then never).
    assert done.wait(20), "publisher blocked behind a frozen subscriber"
    t.join(5)
    assert len(fast.drain()) == n  # the healthy subscriber lost nothing
    assert wait_until(lambda: len(slow_seen) >= 1, 5)
    # Everything was either handed to the callback, is queued, or was dropped and counted.
    in_flight = len(slow_seen)
    assert slow.dropped >= n - 10 - in_flight - 10
    assert slow.dropped + slow.qsize() + in_flight >= n - 10
    assert slow.qsize() <= 10
    gate.set()
    assert wait_until(lambda: slow.qsize() == 0, 5)
    # Oldest dropped: the last measurement published is among those delivered.
    assert wait_until(lambda: slow_seen[-1].value == float(n - 1), 5)
    slow.close()


def test_callback_errors_are_counted_and_delivery_continues():
    d = DataDistributor()
    seen = []

    def flaky(x: Measurement) -> None:
        if x.value == 1.0:
            raise ValueError("bad plot")
        seen.append(x.value)

    sub = d.subscribe(flaky, name="flaky")
    for i in range(3):
        d.publish(m(i))
    assert wait_until(lambda: len(seen) == 2, 5)
    assert sub.errors == 1 and "bad plot" in sub.stats()["last_error"]
    with pytest.raises(RuntimeError, match="callback"):
        sub.get(timeout=0)
    sub.close()


def test_filters_and_unsubscribe():
    d = DataDistributor()
    only_laser = d.subscribe(name="laser", instrument_ids=["laser"])
    only_power = d.subscribe(name="power", channels=["power"])
    d.publish(m(1, "meter", "power"))
    d.publish(m(2, "laser", "wavelength"))
    assert [x.instrument_id for x in only_laser.drain()] == ["laser"]
    assert [x.value for x in only_power.drain()] == [1.0]
    d.unsubscribe(only_laser)
    d.publish(m(3, "laser", "wavelength"))
    assert only_laser.qsize() == 0 and only_laser.closed
    assert "laser" not in d.stats()
    with pytest.raises(queue.Empty, match="closed"):
        only_laser.get(timeout=0.01)


def test_bad_arguments_give_clear_errors():
    d = DataDistributor()
    with pytest.raises(ValueError, match="maxsize"):
        d.subscribe(maxsize=0)
    with pytest.raises(TypeError, match="callable"):
        d.subscribe(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of names"):
        d.subscribe(instrument_ids="meter")
    d.subscribe(name="x")
    with pytest.raises(ValueError, match="already exists"):
        d.subscribe(name="x")
    with pytest.raises(TypeError, match="Measurement"):
        d.publish({"value": 1})  # type: ignore[arg-type]


def test_concurrent_publishers_and_subscribe_churn_lose_nothing_counted():
    d = DataDistributor()
    keeper = d.subscribe(name="keeper", maxsize=50_000)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            s = d.subscribe(lambda x: None, maxsize=3)
            s.close()

    churner = threading.Thread(target=churn)
    churner.start()
    publishers = [
        threading.Thread(target=lambda k=k: [d.publish(m(i, f"i{k}")) for i in range(2000)])
        for k in range(4)
    ]
    for p in publishers:
        p.start()
    for p in publishers:
        p.join(20)
    stop.set()
    churner.join(10)
    assert d.published == 8000
    assert len(keeper.drain()) == 8000 and keeper.dropped == 0
