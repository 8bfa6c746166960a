"""Async leases do what never waits on their own event loop, and hand only waiting to a thread.

A write to a non-blocking port, a drain, and a reply that is already there (an in-process
simulator answers as the command goes out) cost a hand-over to the port's I/O thread and back
each when they run there: most of a point's cost with a fast instrument. These tests hold the
split in place: nothing leaves the loop when nothing has to wait, a reply still on its way is
waited for on the I/O thread, bytes that do not fit the port's buffer at once still all go out in
order, and a port lost under an inline call fails as a lost port.
"""

from __future__ import annotations

import asyncio
import select
import threading
import uuid

import pytest

import daqbridge.sim  # noqa: F401 - registers the sim:// URL handler
from daqbridge.errors import PortUnavailable, ResourceError, ValueRejected
from daqbridge.sim import lookup, unregister


@pytest.fixture
def sim_meter(pool):
    name = f"inline-{uuid.uuid4().hex[:8]}"
    port = pool.open(f"sim://newport1830c?name={name}&speed=inf&response_time=0&noise=0")
    yield port, lookup(name)
    unregister(name)


def test_an_in_process_simulator_is_answered_without_the_io_thread(sim_meter, io_jobs):
    port, sim = sim_meter
    jobs = io_jobs(port)

    async def main():
        async with port.async_lease("meter", 5.0) as lease:
            await lease.write(b"E0\n")
            stale = await lease.drain()
            wavelength = await lease.drain_query(b"W?\n", b"\n", 1.0)
            await lease.write(b"U1\n")
            units = await lease.query(b"U?\n", b"\n", 1.0)
        return stale, wavelength, units

    stale, wavelength, units = asyncio.run(main())
    assert stale == b""
    assert int(wavelength) == sim.wavelength  # the simulator's own state, not a canned reply
    assert units.strip() == b"1"
    assert jobs == []
    assert port.queries == 2


@pytest.mark.parametrize(
    ("data", "terminator", "timeout", "error", "text"),
    [
        ("W?\n", b"\n", 1.0, ValueRejected, "must be bytes"),
        (b"W?\n", b"", 1.0, ValueRejected, "terminator"),
        (b"W?\n", b"\n", float("inf"), ResourceError, "finite"),
    ],
)
def test_an_inline_query_rejects_what_a_waiting_one_rejects(
    sim_meter, data, terminator, timeout, error, text
):
    """The inline start of a query checks its arguments as the waiting query does, before a
    byte goes out: a bad call must not leave a half-sent command on the line."""
    port, _sim = sim_meter

    async def main():
        async with port.async_lease("meter", 5.0) as lease:
            await lease.query(data, terminator, timeout)

    with pytest.raises(error, match=text):
        asyncio.run(main())
    assert port.bytes_out == 0


def test_a_reply_on_its_way_is_waited_for_on_the_io_thread(pool, make_peer, io_jobs):
    """The peer answers only once the query has handed its wait to the I/O thread (a reply that
    is there as the command goes out is taken on the loop, which a busy machine can make happen
    with a prompt peer): the wait, and only the wait, is one job of that thread."""
    released = threading.Event()

    def handler(line: bytes) -> bytes:
        released.wait(10)  # in the peer's thread: the reply leaves once the wait was handed over
        return b"R" + line + b"\n"

    peer = make_peer(handler)
    port = pool.open(peer.path)
    jobs = io_jobs(port, on_submit=released.set)

    async def main():
        async with port.async_lease("reader", 5.0) as lease:
            return await lease.query(b"ping\n", b"\n", 2.0)

    assert asyncio.run(main()) == b"Rping"
    assert [job.__name__ for job in jobs] == ["finish_query"]
    assert peer.received == [b"ping"]


def test_a_reply_already_there_is_taken_on_the_loop(pool, make_peer, io_jobs):
    peer = make_peer(lambda line: None)
    port = pool.open(peer.path)
    peer.send(b"unasked\n")
    # bounded wait for the line to be readable on the driver's side of the pty
    assert select.select([port._fd], [], [], 5.0)[0]
    jobs = io_jobs(port)

    async def main():
        async with port.async_lease("reader", 5.0) as lease:
            return await lease.read_until(b"\n", 1.0)

    assert asyncio.run(main()) == b"unasked"
    assert jobs == []


def test_a_terminator_split_between_the_inline_look_and_the_wait_is_found(pool, make_peer, io_jobs):
    """The reply and the first byte of a two-byte terminator are taken by the inline look; the
    last byte comes only once the wait is on the I/O thread. The terminator spans the two
    arrivals, so the wait must search the buffered tail again, not only the new bytes."""
    peer = make_peer(lambda line: None)
    port = pool.open(peer.path)
    peer.send(b"abc\r")
    assert select.select([port._fd], [], [], 5.0)[0]
    jobs = io_jobs(port, on_submit=lambda: peer.send(b"\n"))

    async def main():
        async with port.async_lease("reader", 5.0) as lease:
            return await lease.read_until(b"\r\n", 2.0)

    assert asyncio.run(main()) == b"abc"
    assert [job.__name__ for job in jobs] == ["read_until"]


def test_a_write_larger_than_the_ports_buffer_goes_out_whole_and_in_order(pool, make_peer, io_jobs):
    """os.write on a non-blocking pty takes what fits; the rest goes out from the I/O thread,
    before the next command of the same holder."""
    peer = make_peer(lambda line: b"ok\n" if line == b"done" else None)
    port = pool.open(peer.path)
    lines = [b"%06d" % i + b"x" * 57 for i in range(4000)]  # 256 kB: far beyond a pty's buffer
    jobs = io_jobs(port)

    async def main():
        async with port.async_lease("writer", 30.0) as lease:
            await lease.write(b"\n".join(lines) + b"\n")
            return await lease.query(b"done\n", b"\n", 10.0)

    assert asyncio.run(main()) == b"ok"
    assert peer.received == [*lines, b"done"]
    assert any(job.__name__ == "write" for job in jobs)


def test_an_unplugged_simulator_fails_an_inline_query_as_a_lost_port(sim_meter):
    port, sim = sim_meter

    async def main():
        async with port.async_lease("meter", 5.0) as lease:
            await lease.query(b"W?\n", b"\n", 1.0)
            sim.unplug()
            await lease.query(b"W?\n", b"\n", 1.0)

    with pytest.raises(PortUnavailable) as err:
        asyncio.run(main())
    assert port.url in str(err.value) and "lost during" in str(err.value)
    sim.replug()
