"""The bus from coroutines: replies routed by address, waits that cost no thread, clean cancels.

Real pyserial on pseudo-terminals, the device end played by a thread (``PtyPeer``). A device
that must hold a reply back holds it until the test says so: the test waits (bounded) for the
condition it is about, never for time to pass.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from daqbridge.errors import InstrumentTimeout, PortUnavailable, ResourceTimeout


def run(coro: Coroutine[Any, Any, Any], timeout: float = 20.0) -> Any:
    """Run a scenario on a fresh event loop, bounded."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait (bounded) for a condition that another thread makes true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.002)


class Mounts:
    """Device side: ``replies[packet]`` are the bytes sent back for a host packet; a packet
    without an entry gets silence (the test sends the late reply itself)."""

    def __init__(self, replies: dict[bytes, bytes] | None = None) -> None:
        self.replies = dict(replies or {})

    def __call__(self, packet: bytes) -> bytes | None:
        return self.replies.get(packet)


@pytest.fixture
def bus_on_pty(pool, make_peer, elliptec_router, host_splitter):
    """``bus_on_pty(handler)`` -> (peer, port, bus) on a fresh pty."""

    def make(handler: Callable[[bytes], bytes | None]):
        peer = make_peer(handler, splitter=host_splitter)
        port = pool.open(peer.path)
        return peer, port, port.bus(elliptec_router)

    return make


async def cancelled(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_a_reply_reaches_its_address_while_another_addresss_late_packet_arrives(bus_on_pty):
    # The device answers 3gp with mount 2's late PO (the end of its move) first, then its own.
    device = Mounts({b"3gp": b"2PO00004600\r\n3PO00000100\r\n"})
    peer, port, bus = bus_on_pty(device)
    ell2, ell3 = bus.endpoint("2"), bus.endpoint("3")

    async def scenario() -> tuple[bytes, list[bytes]]:
        await ell2.send_async(b"2ma00004600", owner="mount-2")
        reply = await ell3.transact_async(b"3gp", "PO", timeout=2.0, owner="mount-3")
        return reply, ell2.pending()

    assert run(scenario()) == (b"3PO00000100", [b"2PO00004600"])


def test_two_transactions_on_different_addresses_wait_at_once_and_both_complete(bus_on_pty):
    # The device answers only once it holds BOTH requests, in reverse order: transactions that
    # took turns (one waiting for the other's reply) would time out instead.
    received: list[bytes] = []

    def both_first(packet: bytes) -> bytes | None:
        received.append(packet)
        return b"3PO00000003\r\n2PO00000002\r\n" if len(received) == 2 else None

    peer, port, bus = bus_on_pty(both_first)
    ell2, ell3 = bus.endpoint("2"), bus.endpoint("3")

    async def scenario() -> list[bytes]:
        return list(
            await asyncio.gather(
                ell2.transact_async(b"2gp", "PO", timeout=5.0, owner="mount-2"),
                ell3.transact_async(b"3gp", "PO", timeout=5.0, owner="mount-3"),
            )
        )

    assert run(scenario()) == [b"2PO00000002", b"3PO00000003"]
    assert sorted(peer.received) == [b"2gp", b"3gp"]  # whole packets: no bytes interleaved


def test_an_async_write_waits_for_a_lease_holders_packet_to_end(bus_on_pty):
    # A legacy driver writes 3gs in two pieces under one lease; the async transaction asks for
    # the port meanwhile. Its bytes must come after the whole packet, never inside it.
    device = Mounts({b"2gp": b"2PO00000002\r\n"})
    peer, port, bus = bus_on_pty(device)
    ell2 = bus.endpoint("2")
    half_written, go_on = threading.Event(), threading.Event()

    def legacy() -> None:
        with port.lease("legacy", 5.0) as lease:
            lease.write(b"3g")
            half_written.set()
            go_on.wait(10.0)
            lease.write(b"s")

    thread = threading.Thread(target=legacy)
    thread.start()

    async def scenario() -> bytes:
        await until(half_written.is_set)
        task = asyncio.create_task(ell2.transact_async(b"2gp", "PO", timeout=5.0, owner="native"))
        await until(lambda: "native" in port.stats()["waiters"])
        go_on.set()
        return await task

    try:
        assert run(scenario()) == b"2PO00000002"
    finally:
        go_on.set()
        thread.join(10.0)
    assert peer.received == [b"3gs", b"2gp"]


def test_a_cancelled_transaction_leaves_no_claim_on_its_late_reply(bus_on_pty):
    # A claim left behind would keep the late reply from discard (as it protects a live
    # transaction's reply from another driver sharing the address).
    peer, port, bus = bus_on_pty(Mounts())  # silent: the reply comes when the test sends it
    ell2 = bus.endpoint("2")

    async def scenario() -> list[bytes]:
        task = asyncio.create_task(ell2.transact_async(b"2gp", "PO", timeout=10.0))
        await until(lambda: peer.received == [b"2gp"])
        await cancelled(task)
        peer.send(b"2PO00000001\r\n")  # the cancelled transaction's reply, late
        await until(lambda: ell2.received == 1)
        return ell2.discard("PO")

    assert run(scenario()) == [b"2PO00000001"]


def test_after_a_cancel_the_next_transaction_gets_its_own_reply_not_the_late_one(bus_on_pty):
    device = Mounts()  # silent for the first gp; the second gets 2PO00000002
    peer, port, bus = bus_on_pty(device)
    ell2 = bus.endpoint("2")

    async def scenario() -> tuple[bytes, list[bytes]]:
        task = asyncio.create_task(ell2.transact_async(b"2gp", "PO", timeout=10.0))
        await until(lambda: peer.received == [b"2gp"])
        await cancelled(task)
        peer.send(b"2PO00000001\r\n")
        await until(lambda: ell2.received == 1)
        device.replies[b"2gp"] = b"2PO00000002\r\n"
        reply = await ell2.transact_async(b"2gp", "PO", timeout=2.0)
        return reply, ell2.pending()

    # the late reply stays in the inbox, unclaimed, as after a timeout of the sync path
    assert run(scenario()) == (b"2PO00000002", [b"2PO00000001"])


def test_a_transaction_cancelled_while_queued_for_its_address_never_writes(bus_on_pty):
    peer, port, bus = bus_on_pty(Mounts({b"2gs": b"2GS00\r\n"}))  # gp: silent until sent
    ell2 = bus.endpoint("2")

    async def scenario() -> bytes:
        first = asyncio.create_task(ell2.transact_async(b"2gp", "PO", 10.0, owner="first"))
        await until(lambda: peer.received == [b"2gp"])
        queued = asyncio.create_task(ell2.transact_async(b"2gp", "PO", 10.0, owner="queued"))
        await until(lambda: ell2._txn.snapshot()["waiters"] == ["queued"])
        await cancelled(queued)
        peer.send(b"2PO00000001\r\n")
        await first
        return await ell2.transact_async(b"2gs", "GS", timeout=2.0, owner="next")

    assert run(scenario()) == b"2GS00"
    assert peer.received == [b"2gp", b"2gs"]


def test_a_silent_address_times_out_naming_address_and_port(bus_on_pty):
    peer, port, bus = bus_on_pty(Mounts())
    with pytest.raises(InstrumentTimeout) as err:
        run(bus.endpoint("7").transact_async(b"7gs", {"GS"}, timeout=0.2))
    assert err.value.resource == port.url
    assert "no GS packet from address 7 within 0.200 s after sending b'7gs'" in str(err.value)


def test_an_address_busy_past_the_timeout_is_a_resource_timeout_naming_its_holder(bus_on_pty):
    peer, port, bus = bus_on_pty(Mounts())  # silent: the first transaction holds the address
    ell2 = bus.endpoint("2")

    async def scenario() -> None:
        first = asyncio.create_task(ell2.transact_async(b"2gp", "PO", 10.0, owner="first"))
        await until(lambda: peer.received == [b"2gp"])
        try:
            await ell2.transact_async(b"2gs", "GS", timeout=0.2, owner="second")
        finally:
            await cancelled(first)

    with pytest.raises(ResourceTimeout) as err:
        run(scenario())
    assert (err.value.resource, err.value.owner, err.value.holder) == (
        f"{port.url} address 2",
        "second",
        "first",
    )


def test_a_lost_port_fails_a_waiting_coroutine_at_once(bus_on_pty):
    peer, port, bus = bus_on_pty(Mounts())
    ell2 = bus.endpoint("2")

    async def scenario() -> None:
        task = asyncio.create_task(ell2.wait_for_async("PO", timeout=30.0))
        await until(lambda: ell2._wakers != [])  # parked on the inbox
        peer.unplug()
        await asyncio.wait_for(task, 5.0)  # woken by the reader, long before its 30 s

    with pytest.raises(PortUnavailable):
        run(scenario())
