"""Resource ranks: taking resources out of order fails at once instead of deadlocking."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from daqbridge.errors import LockOrderError
from daqbridge.transport import VisaSessionManager, held_resources

SIM = f"{Path(__file__).with_name('visa_two_instruments.yaml')}@sim"
DMM = "TCPIP0::192.168.1.100::INSTR"


@pytest.fixture
def visa():
    mgr = VisaSessionManager()
    yield mgr
    mgr.close_all()


def test_serial_then_visa_is_fine_visa_then_serial_raises_at_once(pool, peer, visa):
    port = pool.open(peer.path)  # rank 10
    dmm = visa.session(DMM, backend=SIM)  # rank 20
    with port.lease("scan", 1.0) as lease, dmm.lease("scan", 1.0) as meter:
        lease.query(b"move\n", b"\n", 1.0)
        meter.query("*IDN?")
        assert held_resources() == [(peer.path, 10), (f"{DMM} ({SIM})", 20)]

    t0 = time.monotonic()
    with dmm.lease("legacy-poller", 1.0):
        with pytest.raises(LockOrderError) as err:
            with port.lease("legacy-poller", timeout=10.0):
                pass
    assert time.monotonic() - t0 < 1.0  # raised at once, not after the 10 s deadline
    e = err.value
    assert (e.requested, e.requested_rank, e.held_rank) == (peer.path, 10, 20)
    assert DMM in e.held
    assert f"asked for {peer.path} (rank 10) while holding" in str(e)
    assert held_resources() == []
    assert port.stats()["holder"] is None  # the refused request left no trace


def test_equal_ranks_may_not_be_nested_but_reentry_is_fine(pool, make_peer):
    a = pool.open(make_peer().path)
    b = pool.open(make_peer().path)
    c = pool.open(make_peer().path, rank=11)
    with a.lease("x", 1.0):
        with a.lease("x", 1.0):  # same resource: re-entry
            pass
        with pytest.raises(LockOrderError):
            with b.lease("x", 1.0):
                pass
        with c.lease("x", 1.0):  # strictly increasing rank
            pass
    with c.lease("y", 1.0):
        with pytest.raises(LockOrderError, match="rank 10.*rank 11"):
            with a.lease("y", 1.0):
                pass


def test_ranks_are_tracked_per_thread(pool, peer, visa):
    port = pool.open(peer.path)
    dmm = visa.session(DMM, backend=SIM)
    holding = threading.Event()
    release = threading.Event()

    def other_thread():
        with dmm.lease("other", 5.0):
            holding.set()
            release.wait(10)

    th = threading.Thread(target=other_thread)
    th.start()
    try:
        assert holding.wait(5)
        with port.lease("me", 1.0) as lease:  # another thread's VISA lease is no concern of ours
            assert lease.query(b"a\n", b"\n", 1.0) == b"Ra"
    finally:
        release.set()
        th.join(10)


def test_ranks_are_tracked_per_task(pool, make_peer):
    low = pool.open(make_peer().path, rank=10)
    high = pool.open(make_peer().path, rank=15)

    async def holds_high(event: asyncio.Event, done: asyncio.Event):
        async with high.async_lease("task-high", 1.0):
            event.set()
            await done.wait()

    async def main():
        holding, done = asyncio.Event(), asyncio.Event()
        other = asyncio.create_task(holds_high(holding, done))
        await holding.wait()
        # this task holds nothing: taking the low-ranked port is fine
        async with low.async_lease("task-low", 1.0) as lease:
            reply = await lease.query(b"ok\n", b"\n", 1.0)
        done.set()
        await other
        # the same task nesting out of order is refused at once
        async with high.async_lease("task", 1.0):
            with pytest.raises(LockOrderError):
                async with low.async_lease("task", 10.0):
                    pass
        return reply

    assert asyncio.run(main()) == b"Rok"
