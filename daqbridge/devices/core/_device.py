"""The base of wire devices: the instrument proved at connect, and proved again after a reopen.

Why at connect: a profile that names the wrong port (the MaiTai's instead of the meter's) must
fail before a run, with the replies shown, not record another instrument's numbers. Why again
later: the transport reopens a lost port on the next lease (a USB adapter that dropped out) and
counts opens in ``port.generation``; the instrument behind it may have been power-cycled into
other settings (echo on, other units). So every transaction compares the generation its device
was verified on with the port's, and on a change drains the line and runs the identity check
again, in the same lease, before the caller's own command.

Everything is a coroutine and the lease serialises bytes: a device owns no thread and no task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, ClassVar

from bluesky.protocols import Reading
from ophyd_async.core import DeviceConnector, SignalR, StandardReadable, merge_gathered_dicts

from daqbridge.devices._base import check_number
from daqbridge.devices.core._exchange import Exchange
from daqbridge.devices.core._signal import WireSignalBackend
from daqbridge.devices.core._transport import LeasedPort
from daqbridge.errors import ConfigError, InstrumentError, PortUnavailable, ValueRejected

log = logging.getLogger(__name__)


class WireDeviceConnector(DeviceConnector):
    """Connect = prove the instrument (one lease), then connect the children (the signals)."""

    async def connect_real(self, device: Any, timeout: float, force_reconnect: bool) -> None:
        async with asyncio.timeout(timeout):
            await device.connect_wire()
        await super().connect_real(device, timeout, force_reconnect)


class WireDevice(StandardReadable):
    """A StandardReadable on one leased port; subclasses say how the instrument proves itself.

    Subclasses set ``model`` (named in every descriptor ``source``: ``"1830-C <port> D?"``) and
    implement :meth:`identify` (raise IdentityMismatch unless the replies prove the instrument)
    and, if needed, :meth:`prepare` (profile settings and read-backs at connect, same lease).
    """

    model: ClassVar[str] = "instrument"
    terminator: ClassVar[bytes] = b"\n"

    def __init__(
        self,
        port: LeasedPort,
        *,
        name: str = "",
        timeout: float = 1.0,
        lease_timeout: float = 5.0,
    ) -> None:
        if not isinstance(port, LeasedPort):
            raise ConfigError(
                f"{self.model} {name!r} needs a port with async leases (url, generation, "
                f"async_lease), got {type(port).__name__}.",
                key="port",
                fix="open it with SerialPortPool.open(url, baudrate=...), or pass an object "
                "with the same interface (ReplayPort in tests).",
            )
        self.port = port
        self.reply_timeout = float(timeout)
        self.lease_timeout = float(lease_timeout)
        self.verified_generation: int | None = None
        """The port generation the identity was last proved on; None before connect."""
        self.connected_loop: asyncio.AbstractEventLoop | None = None
        """The event loop the device was connected on (the RunEngine's): synchronous callers
        hand their work to it (:func:`daqbridge.devices.core.call_sync`)."""
        self.closed = False
        """Set by :meth:`close` (the runtime's shutdown): no transaction starts any more."""
        super().__init__(name=name, connector=WireDeviceConnector())

    # --- what subclasses provide ----------------------------------------------------------------

    async def identify(self, x: Exchange) -> None:
        """Raise IdentityMismatch unless the replies prove the instrument (and set its modes)."""
        raise NotImplementedError

    async def prepare(self, x: Exchange) -> None:
        """Connect-time work after the identity, in the same lease (profile settings)."""

    # --- connection -----------------------------------------------------------------------------

    async def connect_wire(self) -> None:
        """Identity and preparation in one lease: nothing else gets in between."""
        self.closed = False
        async with self._lease(verify=False) as x:
            await self._verify(x)
            await self.prepare(x)
        self.connected_loop = asyncio.get_running_loop()

    def close(self) -> None:
        """Stop using the port: every later transaction is refused (the runtime's shutdown).

        The device owns no thread and no task, so there is nothing to join; the port itself is
        closed by its pool afterwards, once every stack has stopped using it.
        """
        self.closed = True
        self.verified_generation = None

    async def _verify(self, x: Exchange) -> None:
        await self.identify(x)
        await x.flush()
        self.verified_generation = self.port.generation

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Exchange]:
        """One lease; re-verifies the instrument first if the port was reopened since."""
        async with self._lease(verify=True) as x:
            yield x

    @asynccontextmanager
    async def _lease(self, *, verify: bool) -> AsyncIterator[Exchange]:
        port = self.port
        if self.closed:
            raise InstrumentError(
                "the device was closed (the lab is shutting down or was shut down).",
                instrument=self.name,
                resource=port.url,
                fix="start the lab again; a closed device is not reopened.",
            )
        try:
            async with port.async_lease(self.name or self.model, self.lease_timeout) as lease:
                x = Exchange(
                    lease,
                    instrument=self.name,
                    resource=port.url,
                    terminator=self.terminator,
                    timeout=self.reply_timeout,
                )
                if verify and self.verified_generation not in (None, port.generation):
                    log.info(
                        "%s %s: port %s was reopened; re-verifying", self.model, self.name, port.url
                    )
                    await lease.drain()
                    await self._verify(x)
                    x.sent.clear()
                yield x
                await x.flush()
        except PortUnavailable as exc:
            if exc.instrument is not None:
                raise
            raise PortUnavailable(
                port.url, exc.reason, pid=exc.pid, fix=exc.fix, instrument=self.name
            ) from None

    def set_name(self, name: str, *, child_name_separator: str | None = None) -> None:
        """Children joined with ``_`` whatever the caller asks (``init_devices`` says ``-``).

        The data keys must be the v1 devices' (``pm_power``): the catalog, plans and shadow mode
        find a quantity by its key, whichever stack recorded it.
        """
        super().set_name(name, child_name_separator="_")

    # --- helpers for drivers --------------------------------------------------------------------

    async def read_together(self, signals: Sequence[SignalR]) -> dict[str, Reading]:
        """The readings of ``signals`` (keyed by signal name, in their order), every query asked
        in ONE lease straight from the signals' wire backends.

        For a driver's ``read()`` and ``read_configuration()``. ``StandardReadable.read`` gives a
        signal a lease of its own, so another client's command can slip in between two values
        of one point; and it gathers each signal in a task of its own whose read runs under
        ``asyncio.wait_for`` (another task): two tasks and six turns of the event loop per
        signal and point, for transactions their reply and lease timeouts already bound. Every
        answer comes first, then the stores, so a garbled reply half-way leaves no mix of old
        and new readings. A backend that does not ask (``asks`` False) gives its last reading.
        A mock-connected device (the unit tier) reads each signal through ophyd-async.
        """
        backends = [signal._connector.backend for signal in signals]
        if not all(isinstance(b, WireSignalBackend) for b in backends):
            return await merge_gathered_dicts([s.read(cached=False) for s in signals])
        asked = [b for b in backends if b.asks]
        if asked:
            async with self.transaction() as x:
                values = [await b.read_in(x) for b in asked]
            for backend, value in zip(asked, values, strict=True):
                backend.store(value)
        return {
            signal.name: dict(backend.last_reading)  # type: ignore[arg-type,misc]
            for signal, backend in zip(signals, backends, strict=True)
        }

    def check_number(
        self, value: Any, *, what: str, low: float, high: float, integer: bool = False
    ) -> float:
        """Validate a number before any byte is sent; the error names instrument, port, limits."""
        try:
            return check_number(
                value, instrument=self.name, what=what, low=low, high=high, integer=integer
            )
        except ValueRejected as exc:
            raise ValueRejected(
                exc.what,
                value=exc.value,
                limit=exc.limit,
                instrument=self.name,
                resource=self.port.url,
                fix=exc.fix or f"give a number between {low} and {high}.",
            ) from None

    def source_for(self, command: str) -> str:
        """The descriptor ``source`` of a value read with ``command``: model, port, command."""
        return f"{self.model} {self.port.url} {command}"

    def rejected(self, what: str, value: Any, fix: str | None = None) -> ValueRejected:
        return ValueRejected(
            what, value=value, instrument=self.name, resource=self.port.url, fix=fix
        )
