"""An in-memory port that replays a transcript: drivers tested byte for byte without hardware.

pymeasure's ``expected_protocol`` in the shape of a daqbridge port: the test lists the exact
(sent, reply) byte pairs of an exchange, in order; the driver talks to this object through the
same lease interface as to ``SharedSerialPort``. Anything written that is not the next expected
byte raises :class:`ReplayMismatch` at once (and is kept in ``mismatches`` in case a driver
swallows it); :meth:`ReplayPort.assert_done` fails unless every pair was used. Writes are matched
as a byte stream, so a driver may send two commands in one write or one command in two.

A reply of ``None`` is silence: a query that waits for it times out at once with
InstrumentTimeout, as a silent instrument would after the driver's timeout. Leases are exclusive
and FIFO (an asyncio lock), so concurrent transactions can be checked for interleaving: each
lease records the bytes it wrote in ``transactions``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from daqbridge.errors import InstrumentTimeout, ResourceError


class ReplayMismatch(AssertionError):
    """The driver sent bytes the transcript does not have at this point."""


class ReplayPort:
    """A ``LeasedPort`` whose far end answers from a list of (sent, reply) pairs."""

    def __init__(
        self, pairs: Iterable[tuple[bytes, bytes | None]], *, url: str = "replay://transcript"
    ) -> None:
        self.url = url
        self.generation = 1
        self.pairs: list[tuple[bytes, bytes | None]] = [(bytes(s), r) for s, r in pairs]
        self.used = 0
        """Pairs fully matched so far."""
        self.transactions: list[bytes] = []
        """Bytes written per lease, in lease order."""
        self.mismatches: list[str] = []
        self._partial = 0  # bytes of the next pair's ``sent`` already matched
        self._rx = bytearray()
        self._lock = asyncio.Lock()

    # --- the transcript -------------------------------------------------------------------------

    def extend(self, pairs: Iterable[tuple[bytes, bytes | None]]) -> None:
        """More pairs after the present ones (the next section of a transcript)."""
        self.pairs += [(bytes(s), r) for s, r in pairs]

    def reopen(self) -> None:
        """As if the transport reopened the port (an unplugged adapter came back)."""
        self.generation += 1
        self._rx.clear()

    def inject(self, data: bytes) -> None:
        """Bytes arriving unasked (a late reply, line noise): the next drain must take them."""
        self._rx += data

    def assert_done(self) -> None:
        if self.mismatches:
            raise ReplayMismatch("; ".join(self.mismatches))
        if self.used != len(self.pairs) or self._partial:
            rest = [s for s, _ in self.pairs[self.used :]]
            raise ReplayMismatch(f"{len(rest)} exchange(s) never sent: {rest!r}")

    # --- the lease interface --------------------------------------------------------------------

    @asynccontextmanager
    async def _leased(self, owner: str, timeout: float) -> AsyncIterator[_ReplayLease]:
        try:
            await asyncio.wait_for(self._lock.acquire(), timeout)
        except TimeoutError:
            raise ResourceError(f"lease for {owner!r} timed out", resource=self.url) from None
        lease = _ReplayLease(self)
        try:
            yield lease
        finally:
            lease.active = False
            self.transactions.append(bytes(lease.written))
            self._lock.release()

    def async_lease(
        self, owner: str, timeout: float = 5.0
    ) -> AbstractAsyncContextManager[_ReplayLease]:
        """Exclusive, FIFO use of the replayed line (an asyncio lock), as ``LeasedPort`` asks."""
        return self._leased(owner, timeout)

    def _take(self, data: bytes) -> None:
        for i, byte in enumerate(data):
            if self.used >= len(self.pairs):
                self._mismatch(f"sent {data[i:]!r} after the transcript ended")
            sent, reply = self.pairs[self.used]
            if sent[self._partial] != byte:
                self._mismatch(
                    f"exchange {self.used}: expected {sent!r}, got "
                    f"{sent[: self._partial] + data[i:]!r}"
                )
            self._partial += 1
            if self._partial == len(sent):
                self._partial = 0
                self.used += 1
                if reply is not None:
                    self._rx += reply

    def _mismatch(self, text: str) -> None:
        self.mismatches.append(text)
        raise ReplayMismatch(text)

    def _read_until(self, terminator: bytes) -> bytes:
        i = self._rx.find(terminator)
        if i < 0:
            raise InstrumentTimeout(
                f"no reply ending in {terminator!r} (the transcript has silence here)",
                reply=bytes(self._rx),
                resource=self.url,
            )
        line = bytes(self._rx[:i])
        del self._rx[: i + len(terminator)]
        return line


class _ReplayLease:
    __slots__ = ("port", "written", "active")

    def __init__(self, port: ReplayPort) -> None:
        self.port = port
        self.written = bytearray()
        self.active = True

    def _check(self) -> ReplayPort:
        if not self.active:
            raise ResourceError("lease used outside its with-block", resource=self.port.url)
        return self.port

    async def write(self, data: bytes) -> None:
        port = self._check()
        self.written += data
        port._take(data)
        await asyncio.sleep(0)  # a real write yields to the loop too: let other tasks run

    async def read_until(self, terminator: bytes, timeout: float) -> bytes:
        return self._check()._read_until(terminator)

    async def query(self, data: bytes, terminator: bytes, timeout: float) -> bytes:
        await self.write(data)
        return await self.read_until(terminator, timeout)

    async def drain(self) -> bytes:
        port = self._check()
        data = bytes(port._rx)
        port._rx.clear()
        return data
