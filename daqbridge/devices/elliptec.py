"""Thorlabs Elliptec ELL14 rotation mounts as native ophyd-async positioners on one shared bus.

The bus's facts (framing, status codes and their fixes, position encoding, the ``IN`` layout)
are written once, below; :class:`ElliptecSettings` (the profile's ``[instruments.elliptec]``
table) is declared from them and the module registers the driver
(:func:`daqbridge.devices.register_driver`), so ``config check`` and start-up cannot disagree.
The data keys, kinds, units, precision, limits and descriptor ``source`` are those of the v1
mounts this driver replaced (ADR 0007), so catalogs written before read the same.

Why it looks the way it does (INSTRUMENTS.md, "Thorlabs Elliptec ELL14"; docs/resources.md;
tests/transcripts/elliptec.yaml):

* **The bus reader owns the input.** Up to 16 mounts share one half-duplex line and a mount's
  ``PO`` can land inside another mount's exchange, so nothing here reads the port: the
  transport's :class:`~daqbridge.transport.SerialBus` (one reader, framed by
  :class:`ElliptecBusRouter`) files every packet under its address, and each mount only talks
  through its own :class:`~daqbridge.transport.BusEndpoint` (``transact_async``: the port's
  async lease for the write only, then the reply from this address's inbox). Shadow mode's
  legacy twin shares the same endpoint from its thread; the endpoint's claims keep the two from
  taking each other's replies.
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
* **Every error status is latched** and repeated by the next ``gs``: after an error the driver
  reads ``gs`` once, so the stale code cannot be mistaken for a new failure later.
* **Moves to one mount are spaced** by ``move_spacing`` (a move sent less than ~100 ms after
  the previous one goes to 0); other mounts are not delayed. A final position more than
  ``tolerance`` from the target is a fault that says so.
* The scale comes from ``IN`` (pulses per full travel / travel), never assumed (some documents
  give 136533 pulses per turn, wrong for these units); an angle that no 32-bit position can hold
  is refused before any byte, as are soft-limit violations. An absent address is silent:
  connecting to it is a clear timeout naming address and port.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Annotated, Any, TypeVar

from ophyd_async.core import AsyncStatus, SignalRW, StandardReadable
from ophyd_async.core import StandardReadableFormat as Format
from pydantic import BeforeValidator, Field, field_validator, model_validator

from daqbridge.devices._base import check_number, positive_setting
from daqbridge.devices._registry import (
    DriverSettings,
    ProfileEntry,
    TwinField,
    TwinView,
    register_driver,
    settings_error,
)
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

__all__ = [
    "ADDRESSES",
    "ELL14_MODEL",
    "FULL_TURN_DEG",
    "STATUS_CODES",
    "ElliptecAddress",
    "ElliptecBus",
    "ElliptecBusRouter",
    "ElliptecIdentity",
    "ElliptecMount",
    "ElliptecSettings",
    "build",
    "decode_position",
    "encode_position",
    "mounts_of",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

ADDRESSES = 16
"""Addresses on one bus: one hex digit, ``0``-``F``."""

FULL_TURN_DEG = 360.0
"""An ELL14 turns +/-1 revolution from home; a limit the profile leaves out is this far away."""

ELL14_MODEL = 0x0E

STATUS_CODES: dict[int, str] = {
    0x00: "ok",
    0x01: "communication timeout",
    0x02: "mechanical timeout",
    0x03: "command error",
    0x04: "value out of range",
    0x05: "module isolated",
    0x06: "out of isolation",
    0x07: "initialising error",
    0x08: "thermal error",
    0x09: "busy",
    0x0A: "sensor error",
    0x0B: "motor error",
    0x0C: "out of range",
    0x0D: "over current",
}
"""``GS`` status codes (INSTRUMENTS.md)."""

_STATUS_FIXES: dict[int, str] = {
    0x01: "a command reached the mount incomplete (line noise, or a packet sent in pieces); "
    "check the cable and retry.",
    0x02: "the mount could not reach its target: check that nothing blocks the rotation, then "
    "home it (home()).",
    0x03: "the mount does not know that command (wrong model at this address?).",
    0x04: "the value is outside what the mount accepts; use a smaller value.",
    0x07: "power-cycle the mount.",
    0x08: "let the mount cool down before moving it again.",
    0x0A: "power-cycle the mount; if it persists the mount needs service.",
    0x0B: "power-cycle the mount; if it persists the mount needs service.",
    0x0C: "keep targets within one revolution (+/-360 deg) of home, or home the mount first.",
    0x0D: "the motor drew too much current: check for a mechanical block, then power-cycle.",
}

_REPLY_LENGTHS: dict[str, int] = {
    "IN": 30,
    "GS": 2,
    "PO": 8,
    "GV": 2,
    "GJ": 8,
    "HO": 8,
    "I1": 22,
    "I2": 22,
    # c1/c2 current curve: 87 samples of 12 characters (ELLx protocol manual; tl_elliptec)
    "C1": 87 * 12,
    "C2": 87 * 12,
}
"""Data length of every reply kind INSTRUMENTS.md lists; unknown kinds pass unchecked."""

_HEX_ADDRESS = b"0123456789ABCDEF"
_PACKET = re.compile(rb"([0-9A-F])([A-Z][A-Z0-9])([\x20-\x7e]*)")
_EOL = re.compile(rb"[\r\n]")
_UPPER_HEX = re.compile(r"[0-9A-F]+")


def encode_position(pulses: int) -> str:
    """Signed pulses -> 8 upper-case hex digits, 32-bit two's complement (-9572 -> FFFFDA9C)."""
    if not -(2**31) <= pulses < 2**31:
        raise ValueError(f"{pulses} pulses do not fit in a signed 32-bit position")
    return f"{pulses & 0xFFFFFFFF:08X}"


def decode_position(text: str) -> int:
    """8 upper-case hex digits (two's complement) -> signed pulses (FFFFF072 -> -3982)."""
    if len(text) != 8 or not _UPPER_HEX.fullmatch(text):
        raise ValueError(f"{text!r} is not 8 upper-case hex digits")
    value = int(text, 16)
    return value - 2**32 if value >= 2**31 else value


def normalise_address(address: Any) -> str:
    """``2``, ``'2'``, ``10``, ``'a'`` -> ``'2'``, ``'2'``, ``'A'``, ``'A'``."""
    if isinstance(address, int) and not isinstance(address, bool) and 0 <= address <= 15:
        return f"{address:X}"
    if isinstance(address, str) and re.fullmatch(r"[0-9A-Fa-f]", address):
        return address.upper()
    raise ConfigError(
        f"Elliptec address {address!r} is not one hex digit.",
        key="address",
        fix="use '0'-'9', 'A'-'F' (or the integers 0-15).",
    )


# --- framing ---------------------------------------------------------------------------------


class ElliptecBusRouter:
    """Frames the Elliptec reply stream: ``<addr><TWO UPPER-CASE LETTERS><data>`` + CR LF.

    Robust to junk: a line that is not a packet is dropped (and counted); a packet with stray
    bytes before it (line noise, a half packet from before a reconnect) is recovered when its
    kind and data length are known. Only the bus reader thread calls ``split``.
    """

    protocol = "thorlabs-elliptec"  # shares a bus with any other Elliptec driver

    MAX_PENDING = 3 + max(_REPLY_LENGTHS.values()) + 64
    """Bytes without any line end that are kept; beyond that they are junk (a noisy line). The
    longest reply (a c1/c2 current curve, 1047 bytes) must fit, or a maintenance run started by
    another program on the bus would cut the line into junk."""

    def __init__(self) -> None:
        self.junk = 0
        self.junk_samples: deque[bytes] = deque(maxlen=16)

    def split(self, buffer: bytearray) -> list[bytes]:
        packets: list[bytes] = []
        while True:
            m = _EOL.search(buffer)
            if m is None:
                if len(buffer) > self.MAX_PENDING:
                    self._junk(bytes(buffer))
                    buffer.clear()
                return packets
            end = m.start()
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if not line:
                continue  # the LF of a CR LF, or blank separators
            packet = self._packet(line)
            if packet is None:
                self._junk(line)
            else:
                packets.append(packet)

    def address_of(self, packet: bytes) -> str:
        return chr(packet[0])

    def kind_of(self, packet: bytes) -> str:
        return packet[1:3].decode("ascii")

    def _junk(self, data: bytes) -> None:
        self.junk += 1
        self.junk_samples.append(data[:64])
        log.debug("elliptec bus: dropped junk %r", data[:64])

    @staticmethod
    def _packet(line: bytes) -> bytes | None:
        m = _PACKET.fullmatch(line)
        if m is not None:
            expected = _REPLY_LENGTHS.get(m.group(2).decode("ascii"))
            if expected is None or len(m.group(3)) == expected:
                return line
        # Junk in front of a packet: look for a known packet that ends exactly at the line end.
        for kind, length in _REPLY_LENGTHS.items():
            start = len(line) - 3 - length
            if (
                start > 0
                and line[start] in _HEX_ADDRESS
                and line[start + 1 : start + 3] == kind.encode()
                and _PACKET.fullmatch(line[start:])
            ):
                return line[start:]
        return None


# --- identity ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElliptecIdentity:
    """The ``IN`` reply, decoded."""

    address: str
    model: int
    serial: str
    year: str
    firmware: int
    hardware: int
    travel: int
    pulses: int

    @property
    def pulses_per_unit(self) -> float:
        """Pulses per degree for rotation mounts (pulses per full travel / travel)."""
        return self.pulses / self.travel

    @property
    def model_name(self) -> str:
        return f"ELL{self.model}"


def parse_identity(address: str, data: str) -> ElliptecIdentity:
    """Decode the 30 characters after ``IN``; ValueError names the bad field."""
    if len(data) != 30:
        raise ValueError(f"IN data must be 30 characters, got {len(data)}")
    fields = {
        "model": data[0:2],
        "serial": data[2:10],
        "year": data[10:14],
        "firmware": data[14:16],
        "hardware": data[16:18],
        "travel": data[18:22],
        "pulses": data[22:30],
    }
    for key in ("model", "firmware", "hardware", "travel", "pulses"):
        if not _UPPER_HEX.fullmatch(fields[key]):
            raise ValueError(f"IN field {key} {fields[key]!r} is not upper-case hex")
    if not fields["year"].isdigit():
        raise ValueError(f"IN field year {fields['year']!r} is not a decimal year")
    travel = int(fields["travel"], 16)
    pulses = int(fields["pulses"], 16)
    if travel <= 0 or pulses <= 0:
        raise ValueError(f"IN gives travel {travel} and pulses {pulses}; both must be > 0")
    return ElliptecIdentity(
        address=address,
        model=int(fields["model"], 16),
        serial=fields["serial"],
        year=fields["year"],
        firmware=int(fields["firmware"], 16),
        hardware=int(fields["hardware"], 16),
        travel=travel,
        pulses=pulses,
    )


# --- the profile's table ------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def _hex_address(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < ADDRESSES:
            raise settings_error(
                f"address {value} is outside 0-{ADDRESSES - 1}",
                f"Elliptec addresses are one hex digit: 0-9, A-F (or the integers "
                f"0-{ADDRESSES - 1})",
            )
        return f"{value:X}"
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9A-Fa-f]", value):
            raise settings_error(
                f"address {value!r} is not one hex digit",
                "Elliptec addresses are one hex digit: '0'-'9', 'A'-'F'",
            )
        return value.upper()
    return value  # the strict str check reports the wrong type


class ElliptecAddress(DriverSettings):
    """One device on the Elliptec bus. Device id: ``<instrument id>_<name>``."""

    address: Annotated[str, BeforeValidator(_hex_address)] = Field(
        description="Bus address, one hex digit '0'-'F' (an integer 0-15 is accepted)."
    )
    name: str | None = Field(
        None,
        description="Device name; the device id is `<instrument id>_<name>`. Defaults to the "
        "address in lower case.",
    )
    low_limit: float | None = Field(None, description="Lowest angle (deg) a plan may request.")
    high_limit: float | None = Field(None, description="Highest angle (deg) a plan may request.")

    @field_validator("name")
    @classmethod
    def _part_of_an_id(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            raise settings_error(
                f"{value!r} cannot be part of a device id",
                "use ASCII letters, digits and _ only (e.g. 'x', 'rot_a'): it is appended to the "
                "instrument id as <instrument id>_<name>",
            )
        return value

    @model_validator(mode="after")
    def _ordered(self) -> ElliptecAddress:
        low, high = self.low_limit, self.high_limit
        if low is not None and high is not None and not low < high:
            raise settings_error(
                f"address {self.address}: low_limit {low:g} is not below high_limit {high:g}",
                "swap the limits or correct one of them",
                key="high_limit",
            )
        limits = self.limits
        if limits is not None and not limits[0] < limits[1]:
            key = "low_limit" if low is not None else "high_limit"
            raise settings_error(
                f"address {self.address}: {key} {low if low is not None else high:g} leaves no "
                f"angle within the mount's +/-{FULL_TURN_DEG:g} deg",
                f"give a {key} between -{FULL_TURN_DEG:g} and {FULL_TURN_DEG:g} deg, or both "
                "limits",
                key=key,
            )
        return self

    @property
    def device_name(self) -> str:
        return self.name if self.name is not None else self.address.lower()

    @property
    def limits(self) -> tuple[float, float] | None:
        """The mount's soft limits in degrees (a side left out is one turn away), or None."""
        low, high = self.low_limit, self.high_limit
        if low is None and high is None:
            return None
        return (
            low if low is not None else -FULL_TURN_DEG,
            high if high is not None else FULL_TURN_DEG,
        )


class ElliptecSettings(DriverSettings):
    """``[instruments.elliptec]``: every device on the bus (one bus driver owns them all)."""

    addresses: list[ElliptecAddress] = Field(
        min_length=1,
        max_length=ADDRESSES,
        description="Devices on the bus, unique addresses and names.",
    )

    @model_validator(mode="after")
    def _unique(self) -> ElliptecSettings:
        for attr, label in (("address", "address"), ("device_name", "name")):
            seen: dict[str, int] = {}
            for i, item in enumerate(self.addresses):
                value = getattr(item, attr)
                if value in seen:
                    raise settings_error(
                        f"{label} {value!r} appears twice (addresses[{seen[value]}] and "
                        f"addresses[{i}])",
                        f"give every entry of addresses its own {attr}",
                        key=f"addresses[{i}].{attr}",
                    )
                seen[value] = i
        return self


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

    def __init__(self, mount: ElliptecMount) -> None:
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

    Named ``gv/sv`` in the descriptor, as the v1 mount's velocity was.
    """

    def source(self, name: str, read: bool) -> str:
        return self.device.source_for("gv/sv")

    async def put(self, value: int | None) -> None:
        mount: ElliptecMount = self.device  # type: ignore[assignment]
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

    axis: ElliptecMount
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

    async def pause(self, seconds: float) -> None:
        """Until the next ``gs``, or sooner when the mount's own end-of-move report (``PO``)
        arrives: the mount sends it as the motion ends, so its end is seen at once instead of up
        to a whole poll interval later. The report only wakes the poll; ``gs`` still decides
        (a late ``PO`` of an earlier exchange can never end this move), and a report that a
        transaction in flight (the legacy twin's ``gp``) has claimed is left to it."""
        try:
            await self.axis.endpoint.wait_for_async("PO", seconds)
        except InstrumentTimeout:
            pass  # the interval passed without a report: poll as usual

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


class ElliptecMount(StandardReadable, WirePositioner):
    """One ELL14 on an Elliptec bus, in degrees: readback ``<name>`` (hinted, ``gp``),
    ``<name>_setpoint`` (``ma``), configuration ``<name>_velocity`` (%, ``gv/sv``).

    Made by :meth:`ElliptecBus.mount`; ``limits`` are soft limits in degrees (None: only
    the mount's own +/-1 revolution applies, which it reports as GS0C).
    """

    model = "ELL14"

    def __init__(
        self,
        bus: ElliptecBus,
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
        self.reply_timeout = positive_setting(reply_timeout, "reply_timeout", name)
        self.move_timeout = positive_setting(move_timeout, "move_timeout", name)
        self.poll_interval = positive_setting(poll_interval, "poll_interval", name)
        self.move_spacing = positive_setting(move_spacing, "move_spacing", name, zero=True)
        self.tolerance = positive_setting(tolerance, "tolerance", name, zero=True)
        self.lease_timeout = positive_setting(lease_timeout, "lease_timeout", name)
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
        ``gp``: the transcript's connect, one exchange after the other on this address."""
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

    async def read(self) -> dict[str, Any]:
        """The position (``gp``) and the target; an idle mount found away from its last target
        was moved by another driver (its legacy twin in shadow, another program), and the
        position it reports is then the target it was given: recorded as the setpoint, never
        this driver's stale one."""
        reading = await super().read()
        position = reading[self.readback.name]["value"]
        target = self.setpoint.name
        if (
            not self.movable_logic.moving
            and abs(position - reading[target]["value"]) > self.tolerance
        ):
            backend = self.setpoint._connector.backend  # type: ignore[attr-defined]
            backend.store(position)
            reading[target] = await backend.get_reading()
        return reading

    # --- more than a move -----------------------------------------------------------------------

    async def refresh_configuration(self) -> None:
        """Ask the mount for its settings now: its velocity (``gv``), the one it has.

        Another program (or the legacy twin in shadow) may have set it since connect or the
        last set, and a recorded setting must be one the mount reported (the baseline's
        reading). A query only: nothing is changed.
        """
        backend = wire_backend(self.velocity)
        async with self.transaction() as x:
            value = await backend.read_in(x)
        backend.store(value)

    @AsyncStatus.wrap
    async def home(self) -> None:
        """Home the mount (``ho0``); done when it reports idle at position 0."""
        await self.movable_logic.home()


class ElliptecBus:
    """The Elliptec bus on one serial port, and its native mounts.

    Not a device itself (it records and moves nothing: its mounts are the devices, each
    addressed by its own id). The port's :class:`SerialBus` is shared with the legacy twin's
    driver on the same port (same bus family): one reader, one set of inboxes.
    """

    def __init__(self, port: Any, *, name: str = "elliptec") -> None:
        if not callable(getattr(port, "bus", None)):
            raise ConfigError(
                f"ElliptecBus needs an open SharedSerialPort, got {type(port).__name__}.",
                key="port",
                instrument=name,
                fix="open it with SerialPortPool.open(url) or use ElliptecBus.from_url(url).",
            )
        self.name = name
        self.port = port
        self.serial_bus: SerialBus = port.bus(ElliptecBusRouter())
        self.router: Any = self.serial_bus.router
        """The router framing the line (the first driver's to open the bus: in shadow, maybe
        the legacy twin's)."""
        self.mounts: dict[str, ElliptecMount] = {}

    def __repr__(self) -> str:
        return f"<ElliptecBus {self.name!r} on {self.port.url!r} mounts={sorted(self.mounts)}>"

    @classmethod
    def from_url(
        cls, url: str, *, pool: SerialPortPool | None = None, name: str = "elliptec"
    ) -> ElliptecBus:
        """Open ``url`` at 9600 8N1 without flow control (RTS/CTS hangs the bus)."""
        return cls((pool or default_pool()).open(url, baudrate=9600), name=name)

    def mount(
        self, address: str | int, *, name: str | None = None, **options: Any
    ) -> ElliptecMount:
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
        mount = ElliptecMount(
            self, address, name=name or f"{self.name}_{address.lower()}", **options
        )
        self.mounts[address] = mount
        return mount

    async def connect(self, timeout: float = 10.0) -> None:
        """Connect every mount at once (the bus serialises the bytes)."""
        await asyncio.gather(*(m.connect(timeout=timeout) for m in self.mounts.values()))

    async def detect(
        self, addresses: Iterable[str | int] = range(ADDRESSES), timeout: float = 0.3
    ) -> dict[str, ElliptecIdentity]:
        """Ask each address for ``in``, one at a time (the line is half-duplex): the identities
        of those that answer. A connected mount is reported from its identity, not asked."""
        found: dict[str, ElliptecIdentity] = {}
        for raw in addresses:
            address = normalise_address(raw)
            known = self.mounts.get(address)
            if known is not None and known.identity is not None:
                found[address] = known.identity
                continue
            try:
                packet = await self.serial_bus.endpoint(address).transact_async(
                    f"{address}in".encode(),
                    expect="IN",
                    timeout=timeout,
                    owner=f"{self.name} detect",
                )
                found[address] = parse_identity(address, packet[3:].decode("ascii"))
            except (InstrumentTimeout, ValueError, UnicodeDecodeError):
                continue
        return found

    @property
    def connected_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop the mounts were connected on (where :func:`call_sync` runs the bus's
        coroutines)."""
        for mount in self.mounts.values():
            if mount.connected_loop is not None:
                return mount.connected_loop
        return None

    async def stop(self, success: bool = False) -> None:
        """Stop every mount that is moving (``st``); an idle mount gets nothing."""
        await asyncio.gather(*(m.stop(success=success) for m in self.mounts.values()))

    def stats(self) -> dict[str, Any]:
        """The bus's traffic counters, and the junk lines its router dropped."""
        stats = self.serial_bus.stats()
        stats["junk"] = getattr(self.router, "junk", 0)
        return stats

    def close(self) -> None:
        """Close the mounts. The bus reader belongs to the port and stops when the port
        closes: in shadow the legacy driver still reads through it until its own shutdown
        phase, and closing it here failed that driver's poll."""
        for mount in self.mounts.values():
            mount.close()


# --- small helpers ---------------------------------------------------------------------------


def _check_soft_limits(limits: Any, name: str) -> tuple[float, float] | None:
    if limits is None:
        return None
    try:
        low, high = (float(v) for v in limits)
    except (TypeError, ValueError):
        raise ConfigError(
            f"limits must be [low, high] in degrees, got {limits!r}.",
            key="limits",
            instrument=name,
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(
            f"limits [{low:g}, {high:g}] must be finite with low < high.",
            key="limits",
            instrument=name,
            fix="write [low, high] in degrees, e.g. [-180, 180].",
        )
    return (low, high)


# --- the driver's declaration ------------------------------------------------------------------


def build(port: Any, *, name: str, settings: ElliptecSettings, timeout: float) -> ElliptecBus:
    """The bus of one profile entry and a mount per address (``<id>_<name>``), not connected
    (the runtime connects them on the RunEngine's loop); the entry's ``timeout`` is how long a
    mount's reply may take, and each address's limits are its mount's soft limits."""
    bus = ElliptecBus(port, name=name)
    for entry in settings.addresses:
        bus.mount(
            entry.address,
            name=f"{name}_{entry.device_name}",
            limits=entry.limits,
            reply_timeout=timeout,
        )
    return bus


def mounts_of(bus: ElliptecBus) -> Mapping[str, ElliptecMount]:
    """The mounts the lab addresses by their own ids (``sim_rotators_a``)."""
    return {mount.name: mount for mount in bus.mounts.values()}


def twin_channel(settings: ElliptecSettings, part: str) -> str | None:
    """The legacy bus's channel that carries one mount (``position_8`` for mount ``c``)."""
    for address in settings.addresses:
        if address.device_name == part:
            return f"position_{address.address.upper()}"
    return None


def twin_fields(settings: ElliptecSettings, part: str | None) -> dict[str, TwinField] | None:
    """The legacy bus, as this driver's bus, records nothing and moves nothing itself: its mounts
    are the devices (their positions would otherwise be recorded twice, under two keys), and a
    mount is a positioner with a setpoint and a velocity, as :class:`ElliptecMount` is."""
    if part is None:
        return {
            f"position_{a.address.upper()}": TwinField(f"position_{a.address.upper()}", "omitted")
            for a in settings.addresses
        }
    channel = twin_channel(settings, part)
    if channel is None:
        return None
    address = channel.removeprefix("position_")
    return {
        channel: TwinField(
            "readback", "hinted", key="", precision=3, setpoint="setpoint", describe_limits=False
        ),
        f"velocity_{address}": TwinField("velocity", "config", describe_limits=False),
    }


def twin_limits(settings: ElliptecSettings) -> dict[str, tuple[float, float]]:
    """Each mount's own soft limits (a side left out: one turn), as the native mounts have them."""
    return {
        f"position_{a.address.upper()}": (float(a.limits[0]), float(a.limits[1]))
        for a in settings.addresses
        if a.limits is not None
    }


register_driver(
    "elliptec",
    settings=ElliptecSettings,
    build=build,
    simulator="elliptec",
    legacy_twin="elliptec",
    twin_view=TwinView(
        fields=twin_fields,
        part_channel=twin_channel,
        limits=twin_limits,
        whole_movable=False,  # a bus of one mount is not that mount
    ),
    parts=mounts_of,
    device=ElliptecBus,
    entry=ProfileEntry(
        "Thorlabs Elliptec bus: every ELL device on one serial line, addressed 0-F.",
        table_description="The devices on the bus.",
        refused_flow_controls={"rtscts": "RTS/CTS flow control hangs the Elliptec bus"},
        part_names=lambda settings: [a.device_name for a in settings.addresses],
        simulator_options=lambda settings: {
            "addresses": [int(a.address, 16) for a in settings.addresses]
        },
    ),
)
