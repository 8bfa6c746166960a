"""A port that vanishes mid-run (USB unplug): lost state, bounded reopen, prompt errors, replug."""

from __future__ import annotations

import threading
import time

import pytest

from daqbridge.errors import PortUnavailable


def test_unplug_then_replug_behind_the_same_symlink(pool, make_peer, tmp_path):
    link = tmp_path / "usb-Newport_ESP300-if00"
    first = make_peer(link=link)
    port = pool.open(str(link), baudrate=19200)
    with port.lease("esp300", 1.0) as lease:
        assert lease.query(b"1TP?\n", b"\n", 1.0) == b"R1TP?"
    assert port.generation == 1

    first.unplug()
    with pytest.raises(PortUnavailable, match="lost during") as err:
        with port.lease("esp300", 1.0) as lease:
            lease.query(b"1TP?\n", b"\n", 1.0)
    assert err.value.resource == str(link)
    assert not port.is_open and port.stats()["state"] == "lost"

    # still unplugged: the next lease retries a bounded number of times, then says so
    t0 = time.monotonic()
    with pytest.raises(PortUnavailable, match="after 3 reopen attempts") as err:
        with port.lease("esp300", 1.0):
            pass
    assert time.monotonic() - t0 < 2.0
    assert "no such device" in str(err.value)

    second = make_peer(link=link)  # a new pty behind the same path
    with port.lease("esp300", 1.0) as lease:
        assert lease.query(b"1TP?\n", b"\n", 1.0) == b"R1TP?"
    assert port.generation == 2
    stats = port.stats()
    assert stats["lost"] == 1 and stats["reopens"] == 1 and stats["state"] == "open"
    # opening by the link or the new device node still finds this one port
    assert pool.open(str(link), baudrate=19200) is port
    assert pool.open(second.device, baudrate=19200) is port


def test_waiters_get_the_error_promptly_when_the_port_is_lost(pool, make_peer, tmp_path):
    link = tmp_path / "ttyMAITAI"
    gate = threading.Event()

    def handler(line):
        if line == b"hang":
            gate.wait(5)  # the device answers nothing until the cable is pulled
            return None
        return b"R" + line + b"\n"

    peer = make_peer(handler, link=link)
    port = pool.open(str(link))
    results: dict[str, object] = {}
    holding = threading.Event()

    def holder():
        try:
            with port.lease("holder", 1.0) as lease:
                holding.set()
                lease.query(b"hang\n", b"\n", 5.0)
        except Exception as exc:  # noqa: BLE001
            results["holder"] = exc

    def waiter(name):
        t0 = time.monotonic()
        try:
            with port.lease(name, 10.0):
                results[name] = "got the lease"
        except Exception as exc:  # noqa: BLE001
            results[name] = exc
        results[name + " took"] = time.monotonic() - t0

    th = threading.Thread(target=holder)
    th.start()
    assert holding.wait(5)
    waiters = [threading.Thread(target=waiter, args=(f"waiter-{i}",)) for i in range(4)]
    for w in waiters:
        w.start()
    deadline = time.monotonic() + 5
    while len(port.stats()["waiters"]) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    gate.set()  # let the device thread go, then pull the cable
    peer.unplug()
    for t in [th, *waiters]:
        t.join(10)
    elapsed = time.monotonic() - t0
    assert isinstance(results["holder"], PortUnavailable)
    for i in range(4):
        assert isinstance(results[f"waiter-{i}"], PortUnavailable), results
    # the first waiter tried a bounded reopen (3 attempts); those queued behind it failed fast
    assert port.stats()["reopen_attempts"] == 3
    assert "after 3 reopen attempts" in str(results["waiter-3"])
    assert elapsed < 3.0, elapsed
    assert port.stats()["waiters"] == [] and port.stats()["holder"] is None


def test_async_lease_reopens_after_replug(pool, make_peer, tmp_path):
    import asyncio

    link = tmp_path / "ttyELL"
    first = make_peer(link=link)
    port = pool.open(str(link))
    first.unplug()

    async def ask():
        async with port.async_lease("task", 2.0) as lease:
            return await lease.query(b"x\n", b"\n", 1.0)

    with pytest.raises(PortUnavailable):
        asyncio.run(ask())
    make_peer(link=link)
    assert asyncio.run(ask()) == b"Rx"
    assert port.generation == 2
