"""Multi-drop buses: one reader per port routes every packet to the inbox of its address.

On a bus such as Thorlabs Elliptec (devices 0-F on one half-duplex line) a device's late ``PO``
(the end of a move it started seconds ago) arrives whenever the move ends, possibly in the
middle of another device's transaction. A driver that takes "the next line" as its reply then
reads someone else's packet. Here a single reader thread owns the incoming byte stream, splits it
with the device family's :class:`BusRouter`, and files each packet under its address and kind;
a transaction only ever looks in its own address's inbox, for the kinds it expects.

Writes still go through the port's lease, so bus traffic and ordinary leases on the same port
never interleave their bytes on the wire.

Coroutines use the same inboxes (``transact_async``, ``send_async``, ``wait_for_async``): a
waiting task parks a future that the reader thread resolves with ``call_soon_threadsafe`` when a
packet for its address arrives, and its write takes the port's async lease. So N mounts waiting
on the event loop cost no thread at all, and a cancelled wait leaves the inbox exactly as a timed
out one does.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter, deque
from collections.abc import Iterable
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from daqbridge.errors import InstrumentTimeout, PortUnavailable, ResourceError
from daqbridge.transport._lease import LeaseLock, check_owner, check_timeout

if TYPE_CHECKING:
    from daqbridge.transport._serial import SharedSerialPort

log = logging.getLogger(__name__)

_INBOX_LIMIT = 256
"""Packets kept per address; beyond that the oldest is dropped (and counted): a device nobody
reads from must not grow memory for a week-long run."""
_READ_SLICE = 0.1
"""The reader wakes at least this often to notice a stop request or a lost port."""
_ORPHANS_KEPT = 64


@runtime_checkable
class BusRouter(Protocol):
    """How a device family frames and addresses packets on a shared line.

    Supplied by the device family (the Elliptec driver provides one); the bus never guesses.
    A ``protocol`` class attribute (e.g. ``"thorlabs-elliptec"``) names the bus family, so
    drivers of one family written independently can share a line (see :func:`bus_protocol`).
    """

    def split(self, buffer: bytearray) -> list[bytes]:
        """Remove every complete packet from the front of ``buffer`` and return them in order.

        Skip junk and separators (CR LF between packets); leave an incomplete packet in place.
        """
        ...

    def address_of(self, packet: bytes) -> str:
        """The sender's address, e.g. ``'2'``."""
        ...

    def kind_of(self, packet: bytes) -> str:
        """The packet's type, e.g. ``'PO'`` or ``'GS'``."""
        ...


def bus_protocol(router: object) -> str:
    """The bus family a router frames (its ``protocol`` attribute, else its class name).

    Two independently written drivers of one family (a legacy and a native Elliptec driver) each
    bring their own router; they may share a bus when they declare the same ``protocol``. The
    first router keeps framing the line, which is safe because the family fixes the framing.
    """
    return str(getattr(router, "protocol", None) or type(router).__name__)


def check_router(router: object, resource: str) -> None:
    missing = [
        m for m in ("split", "address_of", "kind_of") if not callable(getattr(router, m, None))
    ]
    if missing:
        raise ResourceError(
            f"{type(router).__name__} is not a bus router: it lacks {', '.join(missing)}.",
            resource=resource,
            fix="pass an object with split(buffer), address_of(packet) and kind_of(packet).",
        )


def _kinds(expect: Iterable[str] | str | None, resource: str) -> frozenset[str] | None:
    if expect is None:
        return None
    if isinstance(expect, str):  # a lone 'PO' would otherwise become {'P', 'O'}
        return frozenset((expect,))
    kinds = frozenset(expect)
    if not kinds or not all(isinstance(k, str) for k in kinds):
        raise ResourceError(
            f"expected packet kinds must be a non-empty set of str, got {expect!r}.",
            resource=resource,
            fix="pass e.g. {'PO', 'GS'}, or None to accept any packet from the address.",
        )
    return kinds


def _wake(loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> None:
    try:
        loop.call_soon_threadsafe(_resolve, future)
    except RuntimeError:
        pass  # the waiter's loop is closed: nobody is left to wake


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class BusEndpoint:
    """One address on a bus: its inbox, and transactions that only ever read from it.

    Every call has a coroutine twin (``transact_async``, ``send_async``, ``wait_for_async``)
    with the same semantics and errors, for drivers on an event loop; threads and tasks may use
    one endpoint together (shadow mode: a v1 driver in a thread, a native one on the loop).
    """

    def __init__(self, bus: SerialBus, address: str) -> None:
        self.bus = bus
        self.address = address
        self._cond = threading.Condition(bus._lock)
        self._inbox: deque[tuple[int, str, bytes]] = deque()
        self._awaiting: list[frozenset[str] | None] = []
        # (mark, kinds) of the transaction in flight: the first such packet after its mark is its
        # reply, which discard() and wait_for() of another driver sharing the address must leave.
        self._claims: list[tuple[int, frozenset[str] | None]] = []
        # Futures of coroutines waiting on this inbox; each is woken once, then re-registers.
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        # One transaction at a time per address, for threads and tasks alike: the port's lease
        # lock (fair, owner-named, cancellable), not a threading.Lock a coroutine cannot wait on
        # without blocking its loop. Each transaction takes it with a record of its own, so it
        # is never rank-checked against the port lease taken inside it.
        self._txn = LeaseLock(self.resource, rank=0)
        self._unsolicited: Counter[str] = Counter()
        self.received = 0
        self.dropped = 0
        self.discarded = 0

    def __repr__(self) -> str:
        return f"<BusEndpoint {self.address!r} on {self.bus.port.url!r}>"

    @property
    def resource(self) -> str:
        return f"{self.bus.port.url} address {self.address}"

    @property
    def unsolicited(self) -> dict[str, int]:
        """Packets (by kind) that arrived while nobody waited for that kind at this address."""
        with self.bus._lock:
            return dict(self._unsolicited)

    def transact(
        self,
        packet: bytes,
        expect: Iterable[str] | str | None = None,
        timeout: float = 1.0,
        owner: str | None = None,
    ) -> bytes:
        """Send ``packet`` and return the first packet of an ``expect`` kind that arrives after it.

        The port lease is held only for the write; the wait happens on this address's inbox, so
        other addresses keep talking meanwhile. Packets of other kinds stay in the inbox
        (``wait_for`` / ``discard`` them). Transactions on one address are serialised.
        """
        owner, kinds, timeout = self._check_transaction(owner, expect, timeout)
        deadline = perf_counter() + timeout
        record: list[LeaseLock] = []
        self._txn.acquire(owner, timeout, record)
        try:
            mark = self._claim(kinds)
            try:
                self.bus._write(packet, owner, max(0.0, deadline - perf_counter()))
                return self._take(kinds, deadline, after=mark, timeout=timeout, sent=packet)
            finally:
                self._unclaim(mark, kinds)
        finally:
            self._txn.release(record)

    async def transact_async(
        self,
        packet: bytes,
        expect: Iterable[str] | str | None = None,
        timeout: float = 1.0,
        owner: str | None = None,
    ) -> bytes:
        """:meth:`transact` for coroutines: waits on the event loop, never blocks it.

        Cancelled at any point, it leaves nothing behind: no claim, no place in the address's
        queue; a reply that comes later is an unclaimed packet, as after a timeout.
        """
        owner, kinds, timeout = self._check_transaction(owner, expect, timeout)
        deadline = perf_counter() + timeout
        record: list[LeaseLock] = []
        await self._txn.acquire_async(owner, timeout, record)
        try:
            mark = self._claim(kinds)
            try:
                await self.bus._write_async(packet, owner, max(0.0, deadline - perf_counter()))
                return await self._take_async(
                    kinds, deadline, after=mark, timeout=timeout, sent=packet
                )
            finally:
                self._unclaim(mark, kinds)
        finally:
            self._txn.release(record)

    def send(self, packet: bytes, owner: str | None = None, timeout: float = 1.0) -> None:
        """Write ``packet`` (under the port lease) without waiting for any reply."""
        owner = check_owner(owner or f"bus address {self.address}", self.resource)
        self.bus._write(packet, owner, check_timeout(timeout, "bus timeout", self.resource))

    async def send_async(
        self, packet: bytes, owner: str | None = None, timeout: float = 1.0
    ) -> None:
        """:meth:`send` for coroutines (the port's async lease for the write)."""
        owner = check_owner(owner or f"bus address {self.address}", self.resource)
        timeout = check_timeout(timeout, "bus timeout", self.resource)
        await self.bus._write_async(packet, owner, timeout)

    def wait_for(self, kinds: Iterable[str] | str, timeout: float) -> bytes:
        """The oldest packet of one of ``kinds`` in the inbox, waiting up to ``timeout`` s.

        For replies that come late by design, e.g. the ``PO`` at the end of a move.
        """
        wanted = _kinds(kinds, self.resource)
        timeout = check_timeout(timeout, "bus timeout", self.resource)
        deadline = perf_counter() + timeout
        with self._cond:
            self._awaiting.append(wanted)
        try:
            return self._take(wanted, deadline, after=-1, timeout=timeout, sent=None)
        finally:
            with self._cond:
                self._awaiting.remove(wanted)

    async def wait_for_async(self, kinds: Iterable[str] | str, timeout: float) -> bytes:
        """:meth:`wait_for` for coroutines."""
        wanted = _kinds(kinds, self.resource)
        timeout = check_timeout(timeout, "bus timeout", self.resource)
        deadline = perf_counter() + timeout
        with self._cond:
            self._awaiting.append(wanted)
        try:
            return await self._take_async(wanted, deadline, after=-1, timeout=timeout, sent=None)
        finally:
            with self._cond:
                self._awaiting.remove(wanted)

    def discard(self, kinds: Iterable[str] | str | None = None) -> list[bytes]:
        """Remove (and return) inbox packets of ``kinds`` (all kinds when None)."""
        wanted = _kinds(kinds, self.resource)
        with self._cond:
            kept: deque[tuple[int, str, bytes]] = deque()
            gone = []
            claimed = self._claimed_locked()
            for entry in self._inbox:
                drop = (wanted is None or entry[1] in wanted) and entry[0] not in claimed
                (gone if drop else kept).append(entry)
            self._inbox = kept
            self.discarded += len(gone)
        return [p for _, _, p in gone]

    def pending(self) -> list[bytes]:
        """Packets waiting in the inbox, oldest first (not removed)."""
        with self._cond:
            return [p for _, _, p in self._inbox]

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "address": self.address,
                "received": self.received,
                "inbox": len(self._inbox),
                "unsolicited": dict(self._unsolicited),
                "dropped": self.dropped,
                "discarded": self.discarded,
            }

    # --- internals (bus lock held where noted) ---------------------------------------------------

    def _check_transaction(
        self, owner: str | None, expect: Iterable[str] | str | None, timeout: float
    ) -> tuple[str, frozenset[str] | None, float]:
        owner = check_owner(owner or f"bus address {self.address}", self.resource)
        kinds = _kinds(expect, self.resource)
        return owner, kinds, check_timeout(timeout, "bus timeout", self.resource)

    def _claim(self, kinds: frozenset[str] | None) -> int:
        """Mark the transaction's start: its reply is the first ``kinds`` packet after it."""
        with self._cond:
            mark = self.bus._seq
            self._awaiting.append(kinds)
            self._claims.append((mark, kinds))
        return mark

    def _unclaim(self, mark: int, kinds: frozenset[str] | None) -> None:
        with self._cond:
            self._awaiting.remove(kinds)
            self._claims.remove((mark, kinds))

    def _deliver_locked(self, seq: int, kind: str, packet: bytes) -> None:
        self.received += 1
        if not any(w is None or kind in w for w in self._awaiting):
            self._unsolicited[kind] += 1
        self._inbox.append((seq, kind, packet))
        if len(self._inbox) > _INBOX_LIMIT:
            self._inbox.popleft()
            self.dropped += 1
        self._wake_locked()

    def _wake_locked(self) -> None:
        """Wake every thread and task waiting on this inbox (they re-check under the lock)."""
        self._cond.notify_all()
        wakers, self._wakers = self._wakers, []
        for loop, future in wakers:
            _wake(loop, future)

    def _claimed_locked(self) -> set[int]:
        claimed = set()
        for mark, kinds in self._claims:
            for seq, kind, _ in self._inbox:
                if seq > mark and (kinds is None or kind in kinds):
                    claimed.add(seq)
                    break
        return claimed

    def _poll_locked(
        self,
        kinds: frozenset[str] | None,
        deadline: float,
        *,
        after: int,
        timeout: float,
        sent: bytes | None,
    ) -> tuple[bytes | None, float]:
        """(the packet, 0) if it is in the inbox (removed), else (None, seconds left to wait).

        Raises when none can come: bus closed, port lost, deadline passed.
        """
        bus = self.bus
        if bus._closed:
            raise ResourceError(
                "the bus was closed while waiting for a reply.",
                resource=self.resource,
                fix="the port is shutting down; stop using this endpoint.",
            )
        claimed = self._claimed_locked() if sent is None else set()
        for i, (seq, kind, packet) in enumerate(self._inbox):
            if seq in claimed:
                continue  # another driver's transaction is about to take it
            if seq > after and (kinds is None or kind in kinds):
                del self._inbox[i]
                return packet, 0.0
        if bus._lost is not None:
            raise bus._lost
        remaining = deadline - perf_counter()
        if remaining <= 0.0:
            wanted = "any kind" if kinds is None else "/".join(sorted(kinds))
            after_what = f" after sending {sent!r}" if sent is not None else ""
            others = [p for _, _, p in self._inbox]
            raise InstrumentTimeout(
                f"no {wanted} packet from address {self.address} within "
                f"{timeout:.3f} s{after_what}; other packets from it meanwhile: "
                f"{others or 'none'}",
                resource=bus.port.url,
                fix="check that a device answers at this address (an absent address "
                "stays silent) and that the command really replies with that kind.",
            )
        return None, remaining

    def _take(
        self,
        kinds: frozenset[str] | None,
        deadline: float,
        *,
        after: int,
        timeout: float,
        sent: bytes | None,
    ) -> bytes:
        with self._cond:
            while True:
                packet, remaining = self._poll_locked(
                    kinds, deadline, after=after, timeout=timeout, sent=sent
                )
                if packet is not None:
                    return packet
                self._cond.wait(remaining)

    async def _take_async(
        self,
        kinds: frozenset[str] | None,
        deadline: float,
        *,
        after: int,
        timeout: float,
        sent: bytes | None,
    ) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                packet, remaining = self._poll_locked(
                    kinds, deadline, after=after, timeout=timeout, sent=sent
                )
                if packet is not None:
                    return packet
                # Registered under the lock that delivery holds: a packet filed after the check
                # above finds this future and resolves it, so no wake-up is lost.
                waker = (loop, loop.create_future())
                self._wakers.append(waker)
            try:
                # The future carries no packet: only a poll under the lock takes one, so a
                # cancel here leaves the reply in the inbox, unclaimed, as a timeout does.
                await asyncio.wait((waker[1],), timeout=remaining)
            finally:
                with self._cond:
                    if waker in self._wakers:
                        self._wakers.remove(waker)


class SerialBus:
    """The reader thread and the address book of one multi-drop port."""

    def __init__(self, port: SharedSerialPort, router: BusRouter, *, leftover: bytes = b"") -> None:
        self.port = port
        self.router = router
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # reader waits here while the port is lost
        self._endpoints: dict[str, BusEndpoint] = {}
        self._seq = 0
        self._buffer = bytearray(leftover)
        self._lost: PortUnavailable | None = None
        self._closed = False
        self._orphans: deque[bytes] = deque(maxlen=_ORPHANS_KEPT)
        self.unknown_addresses: Counter[str] = Counter()
        self.packets = 0
        self.router_errors = 0
        self._thread = threading.Thread(
            target=self._run, name=f"daqbridge-bus-reader {port.url}", daemon=True
        )

    def __repr__(self) -> str:
        return f"<SerialBus on {self.port.url!r} addresses={sorted(self._endpoints)}>"

    def endpoint(self, address: str) -> BusEndpoint:
        """The endpoint of ``address`` (created on first call, the same one afterwards)."""
        if not isinstance(address, str) or not address:
            raise ResourceError(
                f"a bus address must be a non-empty str, got {address!r}.",
                resource=self.port.url,
                fix="pass the address as the router reports it, e.g. '2' or 'A'.",
            )
        with self._lock:
            ep = self._endpoints.get(address)
            if ep is None:
                ep = self._endpoints[address] = BusEndpoint(self, address)
            return ep

    @property
    def endpoints(self) -> dict[str, BusEndpoint]:
        with self._lock:
            return dict(self._endpoints)

    def orphans(self) -> list[bytes]:
        """Recent packets from addresses without an endpoint (a device nobody configured)."""
        with self._lock:
            return list(self._orphans)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            endpoints = list(self._endpoints.values())
            head = {
                "router": type(self.router).__name__,
                "packets": self.packets,
                "router_errors": self.router_errors,
                "unknown_addresses": dict(self.unknown_addresses),
                "lost": self._lost is not None,
            }
        head["endpoints"] = {ep.address: ep.stats() for ep in endpoints}
        return head

    def close(self, timeout: float = 1.0) -> None:
        """Stop the reader; waiting transactions fail at once. Leases may read again after."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._idle.notify_all()
            for ep in self._endpoints.values():
                ep._wake_locked()
        ser = self.port._ser
        if ser is not None and hasattr(ser, "cancel_read"):
            try:
                ser.cancel_read()
            except Exception:  # noqa: BLE001 - only a wake-up call
                pass
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self.port._state:
            if self.port._bus is self:
                self.port._bus = None

    # --- internals -----------------------------------------------------------------------------

    def _start(self) -> None:
        self._thread.start()

    def _write(self, packet: bytes, owner: str, timeout: float) -> None:
        with self.port.lease(owner, timeout) as lease:
            lease.write(packet)

    async def _write_async(self, packet: bytes, owner: str, timeout: float) -> None:
        # The lease is waited for on the loop; the write itself runs on the port's I/O thread,
        # and a cancel mid-write keeps the lease until that write is done (AsyncSerialLease).
        async with self.port.async_lease(owner, timeout) as lease:
            await lease.write(packet)

    def _port_lost(self, err: PortUnavailable) -> None:
        with self._lock:
            self._lost = err
            for ep in self._endpoints.values():
                ep._wake_locked()

    def _port_reopened(self) -> None:
        with self._lock:
            self._lost = None
            self._buffer.clear()
            self._idle.notify_all()

    def _run(self) -> None:
        port = self.port
        handle = None
        while True:
            with self._lock:
                if self._closed:
                    return
                ser = port._ser
                if ser is None:
                    self._idle.wait(_READ_SLICE)
                    continue
            if ser is not handle:
                handle = ser
                try:
                    if port._direct_timeout:
                        ser._timeout = _READ_SLICE
                    else:
                        ser.timeout = _READ_SLICE
                except Exception as exc:  # noqa: BLE001 - a handle closed under us
                    port._lose(ser, exc, "bus read")
                    continue
            try:
                n = ser.in_waiting
                chunk = ser.read(n if n > 0 else 1)
            except Exception as exc:  # noqa: BLE001 - any failure of the handle means lost
                if self._closed or port._ser is not ser:
                    continue
                port._lose(ser, exc, "bus read")
                continue
            if not chunk:
                continue
            port.bytes_in += len(chunk)
            self._buffer += chunk
            try:
                packets = self.router.split(self._buffer)
            except Exception:  # noqa: BLE001 - a router bug must not kill the bus
                log.exception("bus router %s failed on %r", type(self.router).__name__, port.url)
                self.router_errors += 1
                self._buffer.clear()
                continue
            if packets:
                self._route(packets)

    def _route(self, packets: list[bytes]) -> None:
        router = self.router
        with self._lock:
            for packet in packets:
                try:
                    address = router.address_of(packet)
                    kind = router.kind_of(packet)
                except Exception:  # noqa: BLE001
                    self.router_errors += 1
                    continue
                self._seq += 1
                self.packets += 1
                ep = self._endpoints.get(address)
                if ep is None:
                    self.unknown_addresses[address] += 1
                    self._orphans.append(packet)
                else:
                    ep._deliver_locked(self._seq, kind, packet)
