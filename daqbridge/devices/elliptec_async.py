"""Thorlabs Elliptec ELL14 rotation mounts as native ophyd-async positioners on one shared bus.

The instrument facts (framing, status codes and fixes, position encoding, ``IN`` layout) are the
v1 driver's (:mod:`daqbridge.devices.elliptec`: imported, never copied); data keys, kinds, units,
precision, limits and descriptor ``source`` are the v1 mount's, key for key.

Why it looks the way it does (INSTRUMENTS.md, "Thorlabs Elliptec ELL14"; docs/resources.md):

* **The bus reader owns the input.** Up to 16 mounts share one half-duplex line and a mount's
  ``PO`` can land inside another mount's exchange, so nothing here reads the port: the
  transport's :class:`~daqbridge.transport.SerialBus` (one reader, framed by the v1
  :class:`ElliptecBusRouter`) files every packet under its address, and each mount only talks
  through its own :class:`~daqbridge.transport.BusEndpoint` (``transact_async``: the port's
  async lease for the write only, then the reply from this address's inbox). Shadow mode's v1
  twin shares the same endpoint from its thread; the endpoint's claims keep the two from taking
  each other's replies.
* **No threads of its own.** A mount waiting for a reply is a future on the event loop that the
  bus reader resolves when a packet for its address arrives, so three mounts waiting at once
  (three moves polled together) cost no thread, and a cancelled wait (a stopped move) leaves
  nothing behind in the endpoint.
* **A move is the core's positioner logic** (:class:`WireMovableLogic`): ``ma`` goes out, then
  each poll asks ``gs`` (``09`` busy while moving, ``00`` idle, anything else a fault, reported
  by code and meaning) and ``gp`` (so the readback and progress bars move). ``gs`` replies
  ``GS``, never ``PO``: a late ``PO`` (the end of an earlier move, a stop's report) can never
  pass for the end of this one, and once ``gs`` says idle every ``PO`` the mount sent before has
  arrived, so the ``gp`` after it is the final position. Mounts poll at most every
  ``poll_interval`` (0.1 s: INSTRUMENTS.md, about ten polls a second per device).
* **Moves to one mount are spaced** by ``move_spacing`` (a move sent less than ~100 ms after
  the previous one goes to 0); other mounts are not delayed. A final position more than
  ``tolerance`` from the target is a fault that says so.
* The scale comes from ``IN`` (pulses per full travel / travel), never assumed; an angle that no
  32-bit position can hold is refused before any byte, as are soft-limit violations.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar

from ophyd_async.core import AsyncStatus, SignalRW, StandardReadable
from ophyd_async.core import StandardReadableFormat as Format

from daqbridge.devices._base import check_number
from daqbridge.devices.core import (
    SetNotConfirmed,
    WireCommand,
    WireDeviceConnector,
    WireMotion,
    WireMovableLogic,
    WirePositioner,
    WireSignalBackend,
    wire_backend,
    wire_signal_r,
    wire_target_signal,
)
from daqbridge.devices.elliptec import (
    _REPLY_LENGTHS,
    _STATUS_FIXES,
    ELL14_MODEL,
    STATUS_CODES,
    ElliptecBusRouter,
    ElliptecIdentity,
    _check_soft_limits,
    _positive,
    decode_position,
    encode_position,
    normalise_address,
    parse_identity,
)
from daqbridge.errors import (
    ConfigError,
    DaqbridgeError,
    IdentityMismatch,
    InstrumentError,
    InstrumentFault,
    InstrumentTimeout,
    PortUnavailable,
    ReplyError,
    ValueRejected,
)
from daqbridge.transport import BusEndpoint, SerialBus, SerialPortPool, default_pool

__all__ = ["ElliptecBusAsync", "ElliptecMountAsync"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_REPLY_KIND = {"in": "IN", "gs": "GS", "gp": "PO", "gv": "GV", "sv": "GS"}
"""The reply kind of every command this driver asks (``sv`` answers with a status)."""
_BUSY, _OK = 0x09, 0x00


class _BusExchange:
    """The :class:`~daqbridge.devices.core.Exchange` interface over one mount's endpoint.

    The core's positioner logic and wire signals talk in commands and reply lines; here a
    command is the mount's packet without its address (``gp``), a query waits for the reply
    kind that command gets (``PO``) on this address only, and a write expects nothing.
    """

    __slots__ = ("mount",)

    def __init__(self, mount: ElliptecMountAsync) -> None:
        self.mount = mount

    async def write(self, command: str) -> None:
        await self.mount.send(command)

    async def query(self, command: str) -> str:
        return await self.mount.ask(command)

    def reply_error(self, command: str, reply: str, what: str) -> ReplyError:
        m = self.mount
        return ReplyError(
            f"mount at address {m.address} answered {command!r} with {reply!r}, not {what}",
            reply=reply,
            instrument=m.name,
            resource=m.resource,
            fix="check the cable and baud rate (9600); the next command asks again.",
        )


class _VelocityBackend(WireSignalBackend[int]):
    """``sv`` answers with a status: a refusal is its code; the read-back is ``gv``.

    Named ``gv/sv`` in the descriptor, as the v1 mount's velocity is.
    """

    def source(self, name: str, read: bool) -> str:
        return self.device.source_for("gv/sv")

    async def put(self, value: int | None) -> None:
        mount: ElliptecMountAsync = self.device  # type: ignore[assignment]
        wanted, command = self.check(value)
        async with mount.transaction() as x:
            code = mount.status_code(await x.query(command))
            if code != _OK:
                await mount.clear_latch()
                raise mount.fault(code, f"when setting the velocity to {wanted}%")
            got = await self.read_in(x)
        if got != wanted:
            raise SetNotConfirmed(
                f"mount at address {mount.address} did not take {command!r}: gv reads {got}%.",
                wanted=wanted,
                got=got,
                instrument=mount.name,
                resource=mount.resource,
                fix="another program may drive this bus; set it again.",
            )
        self.store(got)


@dataclass
class ElliptecMoveLogic(WireMovableLogic):
    """The ELL14's rules around the core's move: spacing, stale packets, status, final check."""

    axis: ElliptecMountAsync
    _next_command: str | None = field(default=None, init=False)
    """A move command other than ``ma`` for the next start (``ho0``: homing)."""
    _first_poll: bool = field(default=False, init=False)

    def check_target(self, value: Any) -> float:
        deg = super().check_target(value)
        self.axis.check_pulses(value, deg)
        return deg

    async def start(self, target: float) -> int:
        """Spacing, stale packets out, then the move in one write (the core's start)."""
        target = self.check_target(target)
        mount = self.axis
        wait = mount.last_move_at + mount.move_spacing - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)  # a move too soon after the previous one goes to 0
        stale = mount.endpoint.discard({"PO", "GS"})
        if stale:  # late replies of earlier exchanges, a stop's PO, a refused move's GS
            log.debug("%s: discarded stale packets %r before a move", mount.name, stale)
        command, self._next_command = self._next_command, None
        self._first_poll = True
        if command is None:
            return await super().start(target)
        move_id = next(self._ids)
        async with mount.transaction() as x:
            await x.write(command)
        self._current = move_id
        return move_id

    async def home(self) -> None:
        """``ho0``, then polled as a move to 0 (``PO`` 0 when the mount ends homing)."""
        self._next_command = "ho0"
        await self.move(0.0, lambda: self.move_timeout)

    async def poll(self, x: Any) -> tuple[bool, float]:
        mount = self.axis
        try:
            done, position = await super().poll(x)
        except InstrumentFault:
            self._arrived = self._current  # the mount refused or ended the move: no st
            raise
        if self._first_poll:
            # The mount had the move by the time it answered (it answers in order); USB
            # adapters and busy hosts delay the write, so the spacing counts from here.
            self._first_poll = False
            mount.last_move_at = time.monotonic()
        return done, position

    async def after_move(self, x: Any, target: float) -> None:
        mount = self.axis
        position = wire_backend(self.readback).last_reading["value"]  # type: ignore[index]
        if abs(position - target) > mount.tolerance:
            raise InstrumentFault(
                f"mount at address {mount.address} ended its move at {position:.3f} deg "
                f"instead of {target:g} deg.",
                instrument=mount.name,
                resource=mount.resource,
                fix="a move sent less than ~100 ms after the previous one goes to 0: keep "
                "move_spacing >= 0.1 s; otherwise check for a mechanical block and home the "
                "mount.",
            )

    async def stop(self) -> None:
        """``st`` only while a move is in progress (the RunEngine stops every mount it moved
        at the end of each run; an idle mount's reply would only be noise)."""
        if self._current:
            await self._send_stop(self._current)


class ElliptecMountAsync(StandardReadable, WirePositioner):
    """One ELL14 on an Elliptec bus, in degrees: readback ``<name>`` (hinted, ``gp``),
    ``<name>_setpoint`` (``ma``), configuration ``<name>_velocity`` (%, ``gv/sv``).

    Made by :meth:`ElliptecBusAsync.mount`; ``limits`` are soft limits in degrees (None: only
    the mount's own +/-1 revolution applies, which it reports as GS0C).
    """

    model = "ELL14"

    def __init__(
        self,
        bus: ElliptecBusAsync,
        address: str | int,
        *,
        name: str = "",
        limits: tuple[float, float] | list[float] | None = None,
        reply_timeout: float = 1.0,
        move_timeout: float = 30.0,
        poll_interval: float = 0.1,
        move_spacing: float = 0.12,
        tolerance: float = 0.1,
        lease_timeout: float = 5.0,
    ) -> None:
        self.bus = bus
        self.port = bus.port
        self.address = normalise_address(address)
        self.endpoint: BusEndpoint = bus.serial_bus.endpoint(self.address)
        self.soft_limits = _check_soft_limits(limits, name)
        self.reply_timeout = _positive(reply_timeout, "reply_timeout", name)
        self.move_timeout = _positive(move_timeout, "move_timeout", name)
        self.poll_interval = _positive(poll_interval, "poll_interval", name)
        self.move_spacing = _positive(move_spacing, "move_spacing", name, zero=True)
        self.tolerance = _positive(tolerance, "tolerance", name, zero=True)
        self.lease_timeout = _positive(lease_timeout, "lease_timeout", name)
        self.identity: ElliptecIdentity | None = None
        self.last_status: int | None = None
        """The last ``gs`` code read (connect, polls, after a fault)."""
        self.pulses_per_degree: float | None = None
        self.verified_generation: int | None = None
        self.connected_loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self.last_move_at = -math.inf
        """When the mount last had a move command (for ``move_spacing``)."""
        self._exchange = _BusExchange(self)
        with self.add_children_as_readables(Format.HINTED_UNCACHED_SIGNAL):
            self.readback = wire_signal_r(
                float,
                self,  # type: ignore[arg-type]
                WireCommand(
                    query="gp",
                    read=self._read_degrees,
                    units="deg",
                    precision=3,
                    limits=self.soft_limits,
                ),
            )
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.setpoint = wire_target_signal(
                self,  # type: ignore[arg-type]
                "ma",
                lambda target: self.movable_logic.start(target),
                units="deg",
                precision=3,
                limits=self.soft_limits,
            )
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.velocity = SignalRW(
                _VelocityBackend(
                    int,
                    self,  # type: ignore[arg-type]
                    WireCommand(
                        query="gv",
                        read=self._read_velocity,
                        set_command="sv{:02X}",
                        validate=self._check_velocity,
                        units="%",
                    ),
                )
            )
        super().__init__(name=name, connector=WireDeviceConnector())

    @cached_property
    def movable_logic(self) -> ElliptecMoveLogic:
        pi = self.poll_interval
        low, high = self.soft_limits or (None, None)
        return ElliptecMoveLogic(
            setpoint=self.setpoint,
            readback=self.readback,
            axis=self,
            motion=WireMotion(
                move="ma{}",
                done="gs",
                is_done=self._is_idle,
                stop="st",
                format_target=lambda deg: encode_position(round(deg * self._scale())),
                backoff=(0.0, pi / 4, pi / 2, pi),
            ),
            limits=(low, high),
            move_timeout=self.move_timeout,
            what="angle (deg)",
        )

    # --- names, limits, checks ------------------------------------------------------------------

    def set_name(self, name: str, *, child_name_separator: str | None = None) -> None:
        """Children joined with ``_`` (``m2_setpoint``): the v1 mount's data keys."""
        super().set_name(name, child_name_separator="_")

    @property
    def resource(self) -> str:
        return f"{self.port.url} address {self.address}"

    @property
    def limits(self) -> tuple[float, float]:
        """Soft limits as ophyd gives them ((0, 0): none), for the IOC's motor record."""
        return self.soft_limits if self.soft_limits is not None else (0.0, 0.0)

    @property
    def egu(self) -> str:
        return "deg"

    def source_for(self, command: str) -> str:
        return f"{self.name} (ELL14 address {self.address}) on {self.port.url}: {command}"

    def rejected(self, what: str, value: Any, fix: str | None = None) -> ValueRejected:
        return ValueRejected(
            what, value=value, instrument=self.name, resource=self.resource, fix=fix
        )

    def _scale(self) -> float:
        if self.pulses_per_degree is None:
            raise InstrumentError(
                f"the mount at address {self.address} is not connected.",
                instrument=self.name,
                resource=self.resource,
                fix="connect it first (the runtime does it at start-up).",
            )
        return self.pulses_per_degree

    def check_pulses(self, value: Any, deg: float) -> None:
        """Refuse an angle no signed 32-bit position holds (compared as floats: a huge finite
        angle times the scale overflows to inf, which round() cannot turn into pulses)."""
        scale = self._scale()
        if abs(deg * scale) >= 2**31 - 0.5:
            raise ValueRejected(
                f"angle {deg!r} deg cannot be sent to the mount at address {self.address}: it "
                f"is beyond what its 32-bit position can hold (+/-{(2**31 - 1) / scale:.0f} "
                "deg).",
                instrument=self.name,
                resource=self.resource,
                value=value,
                limit=(-(2**31) / scale, (2**31 - 1) / scale),
                fix="use an angle within one revolution (+/-360 deg) of home.",
            )

    def _check_velocity(self, value: Any) -> int:
        what = "velocity (%)"
        return int(
            check_number(value, instrument=self.name, what=what, low=1, high=100, integer=True)
        )

    # --- the wire -------------------------------------------------------------------------------

    async def connect_wire(self) -> None:
        """``in`` (an ELL14, and its scale), ``gs`` (a latched fault is logged once), ``gv``,
        ``gp``: the v1 mount's connect, one exchange after the other on this address."""
        self.closed = False
        self.verified_generation = None
        x = self._exchange
        await self._identify()
        code = self.last_status = self.status_code(await x.query("gs"))
        if code not in (_OK, _BUSY):
            log.warning(
                "%s: mount at address %s had latched status GS%02X (%s) at connect",
                self.name,
                self.address,
                code,
                STATUS_CODES.get(code, "unknown"),
            )
        for signal in (self.velocity, self.readback):
            backend = wire_backend(signal)
            backend.store(await backend.read_in(x))
        self.setpoint._connector.backend.store(wire_backend(self.readback).last_reading["value"])  # type: ignore[attr-defined,index]
        self.verified_generation = self.port.generation
        self.connected_loop = asyncio.get_running_loop()

    async def _identify(self) -> None:
        try:
            data = await self.ask("in")
        except InstrumentTimeout as exc:
            raise InstrumentTimeout(
                f"no Elliptec device answers at address {self.address} on {self.port.url} "
                f"(no IN reply to {self.address}in within {self.reply_timeout:g} s).",
                instrument=self.name,
                resource=self.resource,
                fix="check the address in the profile (an absent address stays silent), that the "
                "mount is powered and cabled to this bus, and that no `ca` moved it elsewhere.",
            ) from exc
        try:
            ident = parse_identity(self.address, data)
        except ValueError as exc:
            raise self._exchange.reply_error("in", data, f"an IN payload ({exc})") from None
        if ident.model != ELL14_MODEL:
            raise IdentityMismatch(
                f"address {self.address} on {self.port.url} answers as an Elliptec "
                f"{ident.model_name} (model byte {ident.model:02X}, serial {ident.serial}), "
                f"not an ELL14 rotation mount (model byte 0E).",
                instrument=self.name,
                resource=self.resource,
                fix="check the address in the profile: another Elliptec device is there.",
            )
        known = self.identity
        if known is not None and ident.serial != known.serial:
            raise IdentityMismatch(
                f"address {self.address} on {self.port.url} is now ELL14 serial {ident.serial}, "
                f"not the {known.serial} that was there at connect.",
                instrument=self.name,
                resource=self.resource,
                fix="another mount was cabled to this address: connect again to use it.",
            )
        self.identity = ident
        self.pulses_per_degree = ident.pulses_per_unit

    def close(self) -> None:
        """Refuse every later exchange (the runtime's shutdown); the bus stays for the others."""
        self.closed = True
        self.verified_generation = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_BusExchange]:
        """The mount's exchange; after a port reopen the mount is identified again first (it may
        have been power-cycled, or another mount cabled to this address)."""
        if self.closed:
            raise InstrumentError(
                "the mount was closed (the lab is shutting down or was shut down).",
                instrument=self.name,
                resource=self.resource,
                fix="start the lab again; a closed device is not reopened.",
            )
        if self.verified_generation not in (None, self.port.generation):
            log.info("%s: port %s was reopened; identifying again", self.name, self.port.url)
            await self._identify()
            self.verified_generation = self.port.generation
        yield self._exchange

    async def send(self, command: str) -> None:
        """A packet that gets no reply now (``ma``: the ``PO`` comes when the move ends)."""
        packet = f"{self.address}{command}".encode("ascii")
        await self._call(
            self.endpoint.send_async(
                packet, owner=self.name or self.model, timeout=self.lease_timeout
            )
        )
        if command.startswith(("ma", "ho")):
            self.last_move_at = time.monotonic()

    async def ask(self, command: str) -> str:
        """Send ``command``, return the data of its reply (from this address, of its kind)."""
        kind = _REPLY_KIND[command[:2]]
        packet = f"{self.address}{command}".encode("ascii")
        try:
            reply = await self._call(
                self.endpoint.transact_async(
                    packet, expect=kind, timeout=self.reply_timeout, owner=self.name or self.model
                )
            )
        except InstrumentTimeout as exc:
            raise InstrumentTimeout(
                f"mount at address {self.address} did not answer {packet.decode()!r} with "
                f"{kind} within {self.reply_timeout:g} s",
                reply=exc.reply,
                instrument=self.name,
                resource=self.resource,
                fix="check that the mount is powered and cabled (an absent or hung mount is "
                "silent; power-cycle a mount that stopped answering after heavy use).",
            ) from exc
        text = reply.decode("ascii", errors="replace")
        if text[1:3] != kind or len(text) != 3 + _REPLY_LENGTHS[kind]:
            raise self._exchange.reply_error(command, text, f"a {kind} reply")
        return text[3:]

    async def _call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except PortUnavailable as exc:
            if exc.instrument is not None:
                raise
            # The bus knows the port, not which mount was using it: name the mount.
            raise PortUnavailable(
                self.resource, exc.reason, pid=exc.pid, fix=exc.fix, instrument=self.name
            ) from None

    def status_code(self, data: str) -> int:
        try:
            code = int(data, 16)
        except ValueError:
            raise self._exchange.reply_error("gs", data, "a 2-digit hex status") from None
        self.last_status = code
        return code

    def _is_idle(self, data: str) -> bool:
        code = self.status_code(data)
        if code == _BUSY:
            return False
        if code == _OK:
            return True
        raise self.fault(code, "during its move")

    async def clear_latch(self) -> None:
        """The mount repeats its last error on the next ``gs``: read it now, so it is not
        reported again as the result of a later command. Best effort."""
        try:
            self.status_code(await self.ask("gs"))
        except DaqbridgeError as exc:
            log.debug("%s: gs after a fault failed: %s", self.name, exc)

    def fault(self, code: int, during: str) -> InstrumentFault:
        meaning = STATUS_CODES.get(code, "unknown status")
        return InstrumentFault(
            f"mount at address {self.address} on {self.port.url} reported GS{code:02X} "
            f"{meaning} {during}.",
            code=code,
            instrument=self.name,
            resource=self.resource,
            fix=_STATUS_FIXES.get(code, "see the Elliptec manual for this status code."),
        )

    async def _read_degrees(self, x: _BusExchange) -> float:
        data = await x.query("gp")
        try:
            pulses = decode_position(data)
        except ValueError:
            raise x.reply_error("gp", data, "8 upper-case hex digits") from None
        return pulses / self._scale()

    async def _read_velocity(self, x: _BusExchange) -> int:
        data = await x.query("gv")
        try:
            return int(data, 16)
        except ValueError:
            raise x.reply_error("gv", data, "2 hex digits") from None

    # --- more than a move -----------------------------------------------------------------------

    @AsyncStatus.wrap
    async def home(self) -> None:
        """Home the mount (``ho0``); done when it reports idle at position 0."""
        await self.movable_logic.home()


class ElliptecBusAsync:
    """The Elliptec bus on one serial port, and its native mounts.

    The port's :class:`SerialBus` is shared with any v1 :class:`ElliptecBus` on the same port
    (same bus family): one reader, one set of inboxes.
    """

    def __init__(self, port: Any, *, name: str = "elliptec") -> None:
        if not callable(getattr(port, "bus", None)):
            raise ConfigError(
                f"ElliptecBusAsync needs an open SharedSerialPort, got {type(port).__name__}.",
                key="port",
                instrument=name,
                fix="open it with SerialPortPool.open(url) or use ElliptecBusAsync.from_url(url).",
            )
        self.name = name
        self.port = port
        self.serial_bus: SerialBus = port.bus(ElliptecBusRouter())
        self.mounts: dict[str, ElliptecMountAsync] = {}

    def __repr__(self) -> str:
        return f"<ElliptecBusAsync {self.name!r} on {self.port.url!r} mounts={sorted(self.mounts)}>"

    @classmethod
    def from_url(
        cls, url: str, *, pool: SerialPortPool | None = None, name: str = "elliptec"
    ) -> ElliptecBusAsync:
        """Open ``url`` at 9600 8N1 without flow control (RTS/CTS hangs the bus)."""
        return cls((pool or default_pool()).open(url, baudrate=9600), name=name)

    def mount(
        self, address: str | int, *, name: str | None = None, **options: Any
    ) -> ElliptecMountAsync:
        """The mount at ``address`` (not yet connected); one object per address."""
        address = normalise_address(address)
        if address in self.mounts:
            raise ConfigError(
                f"address {address} on {self.port.url} already has a mount "
                f"({self.mounts[address].name!r}).",
                key="address",
                instrument=self.name,
                fix="list each address once; two objects driving one mount would fight.",
            )
        mount = ElliptecMountAsync(
            self, address, name=name or f"{self.name}_{address.lower()}", **options
        )
        self.mounts[address] = mount
        return mount

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect every mount at once (the bus serialises the bytes)."""
        await asyncio.gather(*(m.connect(timeout=timeout) for m in self.mounts.values()))

    async def stop(self, success: bool = False) -> None:
        await asyncio.gather(*(m.stop(success=success) for m in self.mounts.values()))

    def close(self) -> None:
        """Close the mounts; the port's bus reader stops with the port (a v1 twin in shadow
        still reads through it)."""
        for mount in self.mounts.values():
            mount.close()
