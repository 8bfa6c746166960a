"""What a wire device needs from a port: the lease interface, as a Protocol.

Why a Protocol and not ``SharedSerialPort``: a driver that demands the concrete transport can only
be tested on a port, so every test of its wire logic needs a simulator and a pty. Typed against
this interface, a driver takes ``SharedSerialPort`` in the lab and, in a unit test, an in-memory
object that replays a transcript (``ReplayPort``) and fails on the first unexpected byte. The
members are exactly those of ``daqbridge.transport.AsyncSerialLease`` and ``SharedSerialPort``
that devices use; nothing else may be assumed.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable


@runtime_checkable
class AsyncLease(Protocol):
    """Exclusive use of a port for one transaction (write + read, or set + read-back)."""

    async def write(self, data: bytes) -> None:
        """Send ``data`` as is (no terminator added)."""

    async def read_until(self, terminator: bytes, timeout: float) -> bytes:
        """Bytes up to ``terminator`` (excluded); raise InstrumentTimeout after ``timeout`` s."""

    async def query(self, data: bytes, terminator: bytes, timeout: float) -> bytes:
        """Write ``data`` and return the reply up to ``terminator`` (excluded)."""

    async def drain(self) -> bytes:
        """Discard and return stale input (late replies, echoes) before a query."""


@runtime_checkable
class LeasedPort(Protocol):
    """A port reached only through async leases, with a generation that counts (re)opens."""

    url: str
    """The name the port was opened with: it goes into every error and descriptor ``source``."""

    generation: int
    """Increases on every successful (re)open: a device whose state was verified on an older
    generation must verify it again, since the instrument may have been power-cycled."""

    def async_lease(
        self, owner: str, timeout: float = 5.0
    ) -> AbstractAsyncContextManager[AsyncLease]:
        """Wait (on the event loop, at most ``timeout`` s) for exclusive use of the port."""
