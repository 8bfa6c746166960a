"""Signals declared from their wire commands: an ophyd-async backend that talks through a lease.

Why a backend of its own rather than soft signals with getters and setters (ophyd-async ADR 0019):
a soft signal keeps the last value it was given, so after a failed or ignored set it would report
the commanded value. Here nothing is stored that the instrument did not say: ``get_value`` and
``get_reading`` send the query inside one lease; ``put`` sends the set command and reads the value
back in the SAME lease (no other driver can change it in between) and fails with
:class:`SetNotConfirmed` when the read-back disagrees. The only value kept is the last reply, for
subscribers (``set_callback``) and for a staged signal's cache, and it is refreshed by every
exchange.

A declaration reads like the manual (pymeasure's ``Instrument.control``)::

    wavelength = wire_signal_rw(int, meter, WireCommand(
        query="W?", parse=parse_int, set_command="W{:04d}", validate=check_wavelength,
        units="nm"))
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from bluesky.protocols import Reading
from event_model import DataKey
from ophyd_async.core import SignalBackend, SignalR, SignalRW

from daqbridge.devices.core._errors import SetNotConfirmed
from daqbridge.devices.core._exchange import Exchange

if TYPE_CHECKING:
    from daqbridge.devices.core._device import WireDevice

log = logging.getLogger(__name__)

T = TypeVar("T", int, float, str, bool)

_DTYPES: dict[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}


@dataclass(frozen=True)
class WireCommand(Generic[T]):
    """How one value is read and set on the wire.

    ``query`` is sent to read (and named in the descriptor's ``source``); ``parse`` turns the
    reply line into the value and raises ValueError (or a daqbridge error) for anything else.
    ``read`` replaces the plain query when a reading takes more than one exchange (the 1830-C's
    ``C``, ``D?``, ``Q?``). ``set_command`` is a ``str.format`` pattern of the validated value;
    ``validate`` raises ValueRejected (naming instrument, port and fix) before any byte is sent
    and returns the value to format; ``confirmed(wanted, got)`` decides whether the read-back
    proves the set. ``units``, ``precision`` and ``limits`` go into the descriptor.
    """

    query: str
    parse: Callable[[str], T] | None = None
    read: Callable[[Exchange], Awaitable[T]] | None = None
    set_command: str | None = None
    validate: Callable[[Any], T] | None = None
    confirmed: Callable[[T, T], bool] = operator.eq
    units: str | None = None
    precision: int | None = None
    limits: tuple[float, float] | None = None
    what: str = "a value"
    """How a reply that fails ``parse`` is described in the error (``"a whole number"``)."""


class WireSignalBackend(SignalBackend[T]):
    """A SignalBackend whose every value comes from the instrument, through its device's lease."""

    def __init__(self, datatype: type[T], device: WireDevice, command: WireCommand[T]) -> None:
        if datatype not in _DTYPES:
            raise TypeError(f"wire signals carry scalars (bool, int, float, str), not {datatype}")
        if command.parse is None and command.read is None:
            raise TypeError(f"WireCommand {command.query!r} needs parse or read")
        super().__init__(datatype)
        self.device = device
        self.command = command
        self._reading: Reading[T] | None = None
        self._callback: Callable[[Reading[T]], None] | None = None
        self._first: asyncio.Task | None = None

    # --- description ----------------------------------------------------------------------------

    def source(self, name: str, read: bool) -> str:
        cmd = self.command
        command = cmd.query if read or cmd.set_command is None else cmd.set_command.split("{")[0]
        return self.device.source_for(command)

    async def connect(self, timeout: float) -> None:
        """Nothing per signal: the device's connector proved the instrument before children."""

    async def get_datakey(self, source: str) -> DataKey:
        # Built by hand, not with ophyd_async's make_datakey: that adds ``dtype_numpy``, which the
        # v1 devices' descriptors do not carry, and the catalog must see one schema whichever
        # stack recorded a key (shadow mode compares them key by key).
        cmd = self.command
        key = DataKey(dtype=_DTYPES[self.datatype], shape=[], source=source)  # type: ignore[arg-type,index]
        if cmd.units is not None:
            key["units"] = cmd.units
        if cmd.precision is not None:
            key["precision"] = cmd.precision
        if cmd.limits is not None:
            key["limits"] = {"control": {"low": cmd.limits[0], "high": cmd.limits[1]}}
        return key

    # --- reading --------------------------------------------------------------------------------

    @property
    def asks(self) -> bool:
        """Whether a read goes to the instrument. A backend whose value is not on the wire (a
        SCPI signal with a command and no query) says False: a read gives its last reading."""
        return True

    async def read_in(self, x: Exchange) -> T:
        """The value, inside a transaction the caller holds (the device's connect uses it)."""
        cmd = self.command
        if cmd.read is not None:
            return await cmd.read(x)
        reply = await x.query(cmd.query)
        try:
            return cmd.parse(reply)  # type: ignore[misc]
        except ValueError:
            raise x.reply_error(cmd.query, reply, cmd.what) from None

    @property
    def last_reading(self) -> Reading[T] | None:
        """The instrument's latest reply through this signal (None before the first): what a
        synchronous front end shows without a wire exchange (the IOC's PVs)."""
        return self._reading

    def store(self, value: T) -> Reading[T]:
        """Keep an instrument's reply as the latest reading and tell the subscriber."""
        reading: Reading[T] = {"value": value, "timestamp": time.time(), "alarm_severity": 0}
        self._reading = reading
        if self._callback is not None:
            self._callback(reading)
        return reading

    async def get_reading(self) -> Reading[T]:
        async with self.device.transaction() as x:
            value = await self.read_in(x)
        return self.store(value)

    async def get_value(self) -> T:
        return (await self.get_reading())["value"]

    async def get_setpoint(self) -> T:
        """For a setting the instrument's read-back IS the setpoint it holds, so ask it."""
        return await self.get_value()

    # --- setting --------------------------------------------------------------------------------

    def check(self, value: Any) -> tuple[T, str]:
        """(validated value, set command), or ValueRejected: synchronous, before any byte."""
        cmd = self.command
        if cmd.set_command is None:
            raise TypeError(f"{cmd.query} has no set command")
        if value is None:
            raise self.device.rejected("a setting needs a value, got None", value)
        wanted = cmd.validate(value) if cmd.validate is not None else value
        return wanted, cmd.set_command.format(wanted)

    async def put(self, value: T | None) -> None:
        cmd = self.command
        wanted, command = self.check(value)
        async with self.device.transaction() as x:
            await x.write(command)
            got = await self.read_in(x)
        if not cmd.confirmed(wanted, got):
            raise SetNotConfirmed(
                f"the instrument did not take {command!r}: {cmd.query} reads {got!r} afterwards.",
                wanted=wanted,
                got=got,
                instrument=self.device.name,
                resource=self.device.port.url,
                fix="check the front panel (local mode, lockout) and that the value is supported "
                "by this instrument.",
            )
        self.store(got)

    # --- monitoring -----------------------------------------------------------------------------

    def set_callback(self, callback: Callable[[Reading[T]], None] | None) -> None:
        """Subscribers see every value the instrument reports through this signal.

        The instrument pushes nothing, and no poller is started (no threads, no schedulers):
        updates come with each read and each confirmed set. A staged signal (bluesky stages a
        scan's motor) needs one value at once: the last reply if there is one, else one read.
        """
        if callback is not None and self._callback is not None:
            raise RuntimeError(f"{self.command.query}: a callback is already set")
        self._callback = callback
        if callback is None:
            if self._first is not None:
                self._first.cancel()
                self._first = None
            return
        if self._reading is not None:
            callback(self._reading)
        else:
            self._first = asyncio.get_running_loop().create_task(self._first_reading())

    async def _first_reading(self) -> None:
        try:
            await self.get_reading()
        except Exception:  # noqa: BLE001 - the subscriber waits for the next successful read
            log.exception("first reading of %s for a subscriber failed", self.command.query)


class RecordedAsV1:
    """A signal read on its own is recorded as an ophyd v1 signal (and the legacy adapter's) is.

    A plan that reads one signal by itself (a wavelength scan reads the meter's wavelength with
    every point) records that object's ``hints`` and ``configuration`` in the descriptor. ophyd
    v1 signals give their own key as hints when their device hints it (else none) and their own
    reading as configuration; ophyd-async signals give neither. The catalog must not tell the
    stacks apart, so wire signals do as v1 ones do.
    """

    @property
    def hints(self) -> dict[str, list[str]]:
        parent = getattr(self, "parent", None)
        fields = (getattr(parent, "hints", None) or {}).get("fields") or []
        name = self.name  # type: ignore[attr-defined]
        return {"fields": [name] if name in fields else []}

    async def describe_configuration(self) -> dict[str, DataKey]:
        return await self.describe()  # type: ignore[attr-defined,no-any-return]

    async def read_configuration(self) -> dict[str, Reading]:
        return await self.read()  # type: ignore[attr-defined,no-any-return]


class WireSignalR(RecordedAsV1, SignalR[T]):
    """A read-only wire signal (:func:`wire_signal_r`)."""


class WireSignalRW(RecordedAsV1, SignalRW[T]):
    """A settable wire signal (:func:`wire_signal_rw`)."""


def wire_signal_r(
    datatype: type[T], device: WireDevice, command: WireCommand[T], name: str = ""
) -> SignalR[T]:
    """A read-only signal whose value is read from the instrument on every get."""
    return WireSignalR(WireSignalBackend(datatype, device, command), name=name)


def wire_signal_rw(
    datatype: type[T], device: WireDevice, command: WireCommand[T], name: str = ""
) -> SignalRW[T]:
    """A setting: set command plus read-back in one lease; reads always ask the instrument."""
    if command.set_command is None:
        raise TypeError(f"wire_signal_rw({command.query!r}) needs a set_command")
    return WireSignalRW(WireSignalBackend(datatype, device, command), name=name)
