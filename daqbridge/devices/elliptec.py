"""Thorlabs Elliptec ELL14 rotation mounts sharing one multi-drop serial bus.

What the real bus does that shapes this driver (INSTRUMENTS.md, "Elliptec"):

* Up to 16 mounts (addresses 0-F) share one half-duplex line, and a mount reports the end of a
  move (``PO``) whenever the motion ends, possibly in the middle of another mount's exchange.
  :class:`ElliptecBusRouter` frames the incoming stream into ``<addr><KIND><data>`` packets so the
  resources layer (:class:`~daqbridge.transport.SerialBus`) files each one under its
  address; a mount only ever reads its own inbox, so late packets never reach the wrong mount.
* A move command replies only when the motion ends: ``set()`` sends ``ma`` and its status
  finishes once a ``PO`` came and ``gs`` confirms the mount is idle (a late ``PO`` of an earlier
  exchange looks just like the end), the final ``gp`` checked against the target, or fails on a
  ``GS`` error, reported by code and meaning. While moving, ``gp`` is polled so the readback
  (and progress bars) move.
* Every error status is latched and repeated by the next ``gs``: after an error the driver reads
  ``gs`` once, so the stale code cannot be mistaken for a new failure later.
* A move sent less than ~100 ms after the previous move to the same mount goes to 0: moves to one
  mount are spaced by ``move_spacing`` (per address; other mounts are not delayed).
* The scale is read from the mount (``IN``: pulses per full travel / travel), never assumed
  (some documents give 136533 pulses per turn, wrong for these units).
* An absent address is silent: connecting to it is a clear timeout naming address and port.

Threads: each mount has its own :class:`InstrumentWorker`, so mounts on one bus move at the same
time (the bus serialises only the bytes on the wire, per lease, and the replies per address).
``stop()`` sends ``st`` from a short-lived thread, because the mount's worker is busy waiting for
the end of the very move being stopped.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, Kind
from ophyd.positioner import PositionerBase
from ophyd.status import MoveStatus, StatusBase

from daqbridge.devices._base import (
    InstrumentSignal,
    InstrumentWorker,
    OwnMoveStatus,
    SettingSignal,
    as_instrument_error,
    check_number,
    fail_status,
    finish_status,
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
from daqbridge.transport import (
    BusEndpoint,
    SerialBus,
    SerialPortPool,
    SharedSerialPort,
    default_pool,
)

__all__ = [
    "ELL14_MODEL",
    "STATUS_CODES",
    "ElliptecBus",
    "ElliptecBusRouter",
    "ElliptecIdentity",
    "ElliptecMount",
    "decode_position",
    "encode_position",
]

log = logging.getLogger(__name__)

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


# --- the mount ---------------------------------------------------------------------------------


class ElliptecMount(Device, PositionerBase):
    """One ELL14 rotation mount on an Elliptec bus, positioned in degrees.

    ``bus`` is an :class:`ElliptecBus` (usual) or a ready :class:`BusEndpoint`; ``limits`` are
    soft limits in degrees (checked before anything is sent; None: only the mount's own +/-1
    revolution range applies, reported by the mount as GS0C).
    """

    readback = Cpt(InstrumentSignal, units="deg", precision=3, kind=Kind.hinted, value=0.0)
    setpoint = Cpt(InstrumentSignal, units="deg", precision=3, kind=Kind.normal, value=0.0)
    velocity = Cpt(SettingSignal, apply="_set_velocity", units="%", kind=Kind.config, value=0)

    def __init__(
        self,
        bus: ElliptecBus | BusEndpoint,
        address: str | int | None = None,
        *,
        name: str,
        limits: tuple[float, float] | list[float] | None = None,
        reply_timeout: float = 1.0,
        move_timeout: float = 30.0,
        poll_interval: float = 0.1,
        move_spacing: float = 0.12,
        tolerance: float = 0.1,
        lease_timeout: float = 5.0,
        **kwargs: Any,
    ) -> None:
        if isinstance(bus, ElliptecBus):
            address = normalise_address(address)
            bus._check_free(address)
            endpoint = bus.endpoint(address)
        elif isinstance(bus, BusEndpoint):
            if not isinstance(bus.bus.router, ElliptecBusRouter):
                raise ConfigError(
                    f"the bus on {bus.bus.port.url} is framed by "
                    f"{type(bus.bus.router).__name__}, not by ElliptecBusRouter.",
                    key="bus",
                    instrument=name,
                    fix="open the bus with ElliptecBus(port) (or port.bus(ElliptecBusRouter())).",
                )
            if address is not None and normalise_address(address) != bus.address:
                raise ConfigError(
                    f"address {address!r} does not match the endpoint's address {bus.address!r}.",
                    key="address",
                    instrument=name,
                )
            endpoint = bus
            address = bus.address
        else:
            raise ConfigError(
                f"ElliptecMount needs an ElliptecBus or a BusEndpoint, got {type(bus).__name__}.",
                key="bus",
                instrument=name,
                fix="create mounts with ElliptecBus(port).mount(address, name=...).",
            )
        self.endpoint = endpoint
        self.address = address
        self.elliptec_bus = bus if isinstance(bus, ElliptecBus) else None
        self._soft_limits = _check_soft_limits(limits, name)
        self.reply_timeout = _positive(reply_timeout, "reply_timeout", name)
        self.move_timeout = _positive(move_timeout, "move_timeout", name)
        self.poll_interval = _positive(poll_interval, "poll_interval", name)
        self.move_spacing = _positive(move_spacing, "move_spacing", name, zero=True)
        self.tolerance = _positive(tolerance, "tolerance", name, zero=True)
        self.lease_timeout = _positive(lease_timeout, "lease_timeout", name)
        self.identity: ElliptecIdentity | None = None
        self.last_status: int | None = None
        self._scale: float | None = None
        self._connected = False
        self._move_gen = 0
        self._status: MoveStatus | None = None
        self._stopping = False
        self._unsettled = False
        self._stop_thread: threading.Thread | None = None
        self._last_move_at = -math.inf
        self._setpoint_lock = threading.Lock()
        self._worker = InstrumentWorker(name)
        super().__init__(prefix="", name=name, **kwargs)
        self.readback.name = self.name
        source = f"{name} (ELL14 address {address}) on {self.port_url}"
        self.readback._source = f"{source}: gp"
        self.setpoint._source = f"{source}: ma"
        self.velocity._source = f"{source}: gv/sv"
        if self._soft_limits is not None:
            self.setpoint._limits = self._soft_limits
            self.readback._limits = self._soft_limits
        if self.elliptec_bus is not None:
            self.elliptec_bus._register(self)

    # --- identity and limits -----------------------------------------------------------------

    @property
    def port_url(self) -> str:
        return self.endpoint.bus.port.url

    @property
    def resource(self) -> str:
        return f"{self.port_url} address {self.address}"

    @property
    def egu(self) -> str:
        return "deg"

    @property
    def limits(self) -> tuple[float, float]:
        # ophyd's convention: (0, 0) means "no soft limits".
        return self._soft_limits if self._soft_limits is not None else (0.0, 0.0)

    @property
    def precision(self) -> int:
        return 3

    @property
    def pulses_per_degree(self) -> float | None:
        return self._scale

    @property
    def is_connected(self) -> bool:
        return self._connected

    def locate(self) -> dict[str, float]:
        return {"setpoint": self.setpoint.get(), "readback": self.readback.get()}

    def check_value(self, value: Any, **kwargs: Any) -> None:
        low, high = self._soft_limits if self._soft_limits is not None else (None, None)
        deg = check_number(value, instrument=self.name, what="angle (deg)", low=low, high=high)
        # Compared as floats: a huge finite angle times the scale overflows to inf, which
        # round() cannot turn into pulses.
        if self._scale is not None and abs(deg * self._scale) >= 2**31 - 0.5:
            raise ValueRejected(
                f"angle {deg!r} deg cannot be sent to the mount at address {self.address}: it is "
                f"beyond what its 32-bit position can hold (+/-{(2**31 - 1) / self._scale:.0f} "
                "deg).",
                instrument=self.name,
                resource=self.resource,
                value=value,
                limit=(-(2**31) / self._scale, (2**31 - 1) / self._scale),
                fix="use an angle within one revolution (+/-360 deg) of home.",
            )

    # --- lifecycle ---------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> None:
        """Check that an ELL14 answers at the address and read scale, velocity and position."""
        self._worker.call(self._connect_io, timeout=timeout, resource=self.resource)

    def close(self) -> None:
        """Stop the worker (the bus and port stay open for the other mounts)."""
        self._connected = False
        self._move_gen += 1
        self._worker.shutdown(wait=True)
        if self.elliptec_bus is not None:
            self.elliptec_bus._forget(self)

    # --- motion ------------------------------------------------------------------------------

    def move(
        self,
        position: Any,
        wait: bool = False,
        moved_cb: Any = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> MoveStatus:
        self._require_connected("move")
        self.check_value(position)  # before any byte is sent
        target = float(position)
        pulses = round(target * self._scale)
        status = self._begin(target, moved_cb=moved_cb, timeout=timeout)
        self._submit_motion(status, "ma", encode_position(pulses), target, pulses)
        if wait:
            status.wait()
        return status

    def home(self, *, wait: bool = False, timeout: float | None = None) -> MoveStatus:
        """Home the mount (``ho0``); the status finishes on its ``PO`` at position 0."""
        self._require_connected("home")
        status = self._begin(0.0, moved_cb=None, timeout=timeout)
        self._submit_motion(status, "ho", "0", 0.0, 0)
        if wait:
            status.wait()
        return status

    def stop(self, *, success: bool = False) -> None:
        """Send ``st`` now (from a helper thread: the worker is busy with the move) and end the
        move's status.

        The RunEngine calls ``stop(success=True)`` on every mount it moved at the end of every
        run; an idle mount is then left alone (no ``st``, whose reply would only be noise).
        """
        if self._connected and (self._moving or self._unsettled or not success):
            self._stopping = True
            self._unsettled = True
            thread = threading.Thread(
                target=self._send_stop, name=f"daqbridge-{self.name}-stop", daemon=True
            )
            # Published only once started: a settle on the worker joins it, and joining a
            # thread that has not started raises.
            thread.start()
            self._stop_thread = thread
        status = self._status
        if status is not None and not status.done:
            self._reset_sub(self._SUB_REQ_DONE)
            self._moving = False
            if success:
                finish_status(status)
            else:
                fail_status(
                    status,
                    InstrumentError(
                        f"move of mount at address {self.address} stopped (st sent) before it "
                        "reached its target.",
                        instrument=self.name,
                        resource=self.resource,
                    ),
                )

    def _stop_move(self, status: StatusBase) -> None:
        if status is self._status:
            self.stop()

    def trigger(self) -> StatusBase:
        """Refresh the readback with ``gp`` (for use as a detector)."""
        self._require_connected("read")
        # No obj: ophyd would call stop() (send st) when a reading fails.
        return self._worker.status(self._refresh_position)

    # --- settings ----------------------------------------------------------------------------

    def refresh_configuration(self, timeout: float | None = None) -> None:
        """Ask the mount for its settings now: its velocity (``gv``), the one it has.

        Another program (or the legacy twin in shadow) may have set it since connect or the
        last set, and a recorded setting must be one the mount reported. A query only: nothing
        is changed. Blocking (the baseline reads it from its own thread; interactive use), never
        inside a plan; behind a move of this mount it waits for the move's end.
        """
        self._require_connected("read its settings")
        self._worker.call(
            lambda: self.velocity.update(self._read_velocity()),
            timeout=timeout or self.lease_timeout + self.reply_timeout + 1.0,
            resource=self.resource,
        )

    def _set_velocity(self, value: Any) -> StatusBase:
        pct = int(
            check_number(
                value, instrument=self.name, what="velocity (%)", low=1, high=100, integer=True
            )
        )
        self._require_connected("set the velocity")
        return self._worker.status(lambda: self._velocity_io(pct), obj=self.velocity)

    def _require_connected(self, what: str) -> None:
        if not self._connected:
            raise InstrumentError(
                f"cannot {what}: the mount at address {self.address} is not connected.",
                instrument=self.name,
                resource=self.resource,
                fix="call connect() first (the runtime does it at start-up).",
            )

    # --- status bookkeeping (caller's thread) ------------------------------------------------

    def _begin(self, target: float, *, moved_cb: Any, timeout: float | None) -> MoveStatus:
        old = self._status
        if old is not None and not old.done:
            fail_status(
                old,
                InstrumentError(
                    f"move replaced by a new move to {target:g} deg before it finished.",
                    instrument=self.name,
                    resource=self.resource,
                ),
            )
        self._reset_sub(self._SUB_REQ_DONE)
        self._move_gen += 1
        status = OwnMoveStatus(
            self,
            target,
            timeout=timeout if timeout is not None else self._timeout,
            settle_time=self._settle_time,
        )
        if moved_cb is not None:
            status.add_callback(lambda st: moved_cb(st, obj=self))
        self.subscribe(status._finished, event_type=self._SUB_REQ_DONE, run=False)
        self._status = status
        self._stopping = False
        with self._setpoint_lock:
            self.setpoint.update(target)
            self._moving = True
        self._run_subs(sub_type=self.SUB_START, timestamp=time.time())
        return status

    def _submit_motion(
        self, status: MoveStatus, command: str, data: str, target: float, pulses: int
    ) -> None:
        gen = self._move_gen

        def task() -> None:
            try:
                self._motion_io(status, gen, command, data, target, pulses)
            except BaseException as exc:  # noqa: BLE001 - every failure must reach the status
                if gen == self._move_gen:
                    self._moving = False
                    self._reset_sub(self._SUB_REQ_DONE)
                fail_status(status, as_instrument_error(exc, self.name, self.resource))
                return
            if gen == self._move_gen and not status.done:
                self._moving = False
                self._done_moving(success=True, value=self._position)

        self._worker.submit(task)

    # --- worker side -------------------------------------------------------------------------

    def _store(self, pulses: int) -> float:
        deg = pulses / self._scale
        self.readback.update(deg)
        self._set_position(deg)
        return deg

    def _connect_io(self) -> None:
        self._connected = False
        # No discard() of old inbox packets: in shadow the legacy driver shares this address's
        # endpoint, and emptying the inbox took the reply its poll was about to read (it then
        # failed start-up with "no PO packet ... after b'2gp'"). Transactions only take packets
        # that arrive after their own request, so stale ones never pass for a reply.
        try:
            packet = self._transact("in", expect="IN")
        except InstrumentTimeout as exc:
            raise InstrumentTimeout(
                f"no Elliptec device answers at address {self.address} on {self.port_url} "
                f"(no IN reply to {self.address}in within {self.reply_timeout:g} s).",
                instrument=self.name,
                resource=self.resource,
                fix="check the address in the profile (an absent address stays silent), that the "
                "mount is powered and cabled to this bus, and that no `ca` moved it elsewhere.",
            ) from exc
        data = self._data(packet, "IN")
        try:
            ident = parse_identity(self.address, data)
        except ValueError as exc:
            raise ReplyError(
                f"the IN reply of address {self.address} cannot be decoded: {exc}",
                reply=packet,
                instrument=self.name,
                resource=self.resource,
                fix="check the cable; connect again.",
            ) from None
        if ident.model != ELL14_MODEL:
            raise IdentityMismatch(
                f"address {self.address} on {self.port_url} answers as an Elliptec "
                f"{ident.model_name} (model byte {ident.model:02X}, serial {ident.serial}), "
                f"not an ELL14 rotation mount (model byte 0E).",
                instrument=self.name,
                resource=self.resource,
                fix="check the address in the profile: another Elliptec device is there.",
            )
        self.identity = ident
        self._scale = ident.pulses_per_unit
        # A fault latched before we connected (noise at power-up) is read and reported once,
        # so it is not mistaken for the result of our first command.
        code = self._get_status()
        self.last_status = code
        if code not in (0x00, 0x09):
            log.warning(
                "%s: mount at address %s had latched status GS%02X (%s) at connect",
                self.name,
                self.address,
                code,
                STATUS_CODES.get(code, "unknown"),
            )
        self.velocity.update(self._read_velocity())
        deg = self._store(self._read_pulses())
        self.setpoint.update(deg)
        self._connected = True

    def _refresh_position(self) -> None:
        gen = self._move_gen
        deg = self._store(self._read_pulses())
        # Another driver moved the mount (its legacy twin in shadow, another program): our last
        # target is no longer what it was commanded to, and a run recording it would record a
        # stale setpoint. The idle mount's reported position is the target it was given.
        with self._setpoint_lock:
            idle = gen == self._move_gen and not (self._moving or self._unsettled)
            if idle and abs(deg - self.setpoint.get()) > self.tolerance:
                self.setpoint.update(deg)

    def _velocity_io(self, pct: int) -> None:
        packet = self._transact("sv", f"{pct:02X}", expect="GS")
        code = self._status_code(packet)
        if code != 0x00:
            self._clear_latch()
            raise self._fault(code, f"when setting the velocity to {pct}%")
        self.velocity.update(self._read_velocity())

    def _motion_io(
        self, status: MoveStatus, gen: int, command: str, data: str, target: float, pulses: int
    ) -> None:
        if gen != self._move_gen:
            return  # replaced before it started
        if self._unsettled:
            self._settle()
        # Late packets of earlier exchanges (a reply that came after its timeout) must not be
        # taken for the end of this move.
        stale = self.endpoint.discard({"PO", "GS"})
        if stale:
            log.debug("%s: discarded stale packets %r before %s", self.name, stale, command)
        wait = self._last_move_at + self.move_spacing - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # a move too soon after the previous one goes to 0 on the mount
        if gen != self._move_gen or status.done:
            return  # stopped or replaced while waiting: never send a move nobody wants
        self._unsettled = True  # until the end of this move has been seen
        self._send(command + data)
        # The mount received the move somewhere between this send and its first reply after it
        # (USB adapters and busy hosts add latency); _await_end moves the mark to that reply, so
        # the spacing to the next move holds whatever the delay was.
        self._last_move_at = time.monotonic()
        self._await_end(status, gen, target, pulses)

    def _settle(self) -> None:
        """Wait until the mount is idle and every reply of an unfinished exchange is in.

        Needed after a stop, a fault or a lost reply: the mount may still be moving, and its
        late PO (or the stop's PO, or a poll's) would otherwise be taken for the end of the next
        move. ``gs`` replies GS, never PO, and the mount answers in order, so once it says
        "not busy" every earlier packet has arrived and can be discarded.
        """
        stopper = self._stop_thread
        if stopper is not None and stopper is not threading.current_thread():
            stopper.join(self.lease_timeout + 1.0)  # the st must be on the wire first
        deadline = time.monotonic() + self.move_timeout
        previous = None
        while True:
            code = self._get_status()
            if code == 0x00 or (code != 0x09 and previous not in (None, 0x09)):
                break
            if code not in (0x00, 0x09):
                log.info(
                    "%s: address %s reported latched GS%02X (%s) while settling",
                    self.name,
                    self.address,
                    code,
                    STATUS_CODES.get(code, "unknown"),
                )
            previous = code
            if time.monotonic() > deadline:
                raise InstrumentTimeout(
                    f"mount at address {self.address} still reports busy (GS09) after "
                    f"{self.move_timeout:g} s.",
                    instrument=self.name,
                    resource=self.resource,
                    fix="check that the mount turns freely; power-cycle a mount that stays busy.",
                )
            if code == 0x09:
                time.sleep(self.poll_interval)
        self.endpoint.discard({"PO", "GS"})
        self._store(self._read_pulses())
        self._unsettled = False

    def _await_end(self, status: MoveStatus, gen: int, target: float, pulses: int) -> None:
        # Every gp poll and the end of the move each produce one PO, and nothing tells them
        # apart: a poll sent just before the end can take the end's PO for its reply while its
        # own reply comes later (on a loaded host, later than the next poll: then every poll
        # takes the previous poll's reply). A late PO of an earlier exchange (a reply that came
        # after its timeout, the report of a stop) looks the same too. So POs only say "perhaps
        # ended"; the mount decides. It answers in order, so when its reply to gs says it is
        # idle, every PO it sent before has arrived: the end's PO is among them (or was lost),
        # and the position it reports to a gp now is the final one.
        deadline = time.monotonic() + self.move_timeout
        tolerance = max(1, round(self.tolerance * self._scale))
        polls = 0
        seen = 0
        last: int | None = None
        unchanged = 0
        while True:
            if gen != self._move_gen or self._stopping or status.done:
                return  # replaced, stopped or given up: the next move settles the mount first
            try:
                packet = self._wait_for_end(self.poll_interval)
            except InstrumentTimeout:
                packet = None
            if packet is not None and self.router_kind(packet) == "GS":
                code = self._status_code(packet)
                if code in (0x00, 0x09):
                    continue
                self._clear_latch()
                raise self._fault(code, f"while moving to {target:g} deg")
            if packet is not None:
                if not seen:
                    self._last_move_at = time.monotonic()
                seen += 1
                last = self._pulses_of(packet)
                self._store(last)
            else:
                if time.monotonic() > deadline:
                    raise self._end_timeout(target)
                polls += 1
                now = self._poll_pulses(target)
                if not seen:
                    self._last_move_at = time.monotonic()
                seen += 1
                self._store(now)
                unchanged = unchanged + 1 if now == last else 0
                last = now
            if seen < polls + 1 and not (packet is None and unchanged >= 2):
                continue  # moving, and no PO beyond the polls' replies yet
            if self._stopping or status.done:
                return  # the PO of a stop (or of a move whose status already ended)
            code = self._get_status()
            if code == 0x09:
                # Still moving: a PO beyond the polls' replies was not the end (a late one).
                seen = min(seen, polls)
                unchanged = 0
                if time.monotonic() > deadline:
                    raise self._end_timeout(target)
                continue
            if code != 0x00:
                raise self._fault(code, f"at the end of its move to {target:g} deg")
            # Idle: every PO sent before the GS is in (counted, or waiting in the inbox).
            arrived = seen + len(self.endpoint.discard("PO"))
            if arrived < polls + 1:
                raise ReplyError(
                    f"the end-of-move report (PO) from address {self.address} never arrived "
                    f"although the mount is idle at {last / self._scale:.3f} deg (target "
                    f"{target:g} deg): a reply was lost or garbled on the line.",
                    instrument=self.name,
                    resource=self.resource,
                    fix="check the cable and that only one program drives this bus; the next "
                    "move starts clean.",
                )
            self._unsettled = False
            last = self._read_pulses()  # idle, nothing in flight: this reply is the position
            self._store(last)
            if abs(last - pulses) > tolerance:
                raise InstrumentFault(
                    f"mount at address {self.address} ended its move at "
                    f"{last / self._scale:.3f} deg instead of {target:g} deg.",
                    instrument=self.name,
                    resource=self.resource,
                    fix="a move sent less than ~100 ms after the previous one goes to 0: keep "
                    "move_spacing >= 0.1 s; otherwise check for a mechanical block and home "
                    "the mount.",
                )
            self.last_status = 0x00
            return

    def _end_timeout(self, target: float) -> InstrumentTimeout:
        return InstrumentTimeout(
            f"mount at address {self.address} did not report the end of its move to "
            f"{target:g} deg within {self.move_timeout:g} s.",
            instrument=self.name,
            resource=self.resource,
            fix="check that the mount turns freely; raise move_timeout for slow velocities.",
        )

    def _poll_pulses(self, target: float) -> int:
        try:
            return self._read_pulses()
        except InstrumentTimeout as exc:
            raise InstrumentTimeout(
                f"mount at address {self.address} did not answer gp while moving to "
                f"{target:g} deg: a reply was lost on the line.",
                instrument=self.name,
                resource=self.resource,
                fix="check the cable; the next move starts clean.",
            ) from exc

    def _send_stop(self) -> None:
        try:
            self._send("st")
        except Exception as exc:  # noqa: BLE001 - a stop must not raise on a helper thread
            log.error("%s: could not send st to address %s: %s", self.name, self.address, exc)
        try:  # then, once the worker is free, wait for the mount to stop and read where it is
            self._worker.submit(self._settle_quietly)
        except InstrumentError:
            pass  # closed meanwhile

    def _settle_quietly(self) -> None:
        if not self._unsettled:
            return
        try:
            self._settle()
        except Exception as exc:  # noqa: BLE001 - the next move settles again and reports
            log.warning(
                "%s: settling address %s after stop failed: %s", self.name, self.address, exc
            )

    # --- protocol ------------------------------------------------------------------------------

    @staticmethod
    def router_kind(packet: bytes) -> str:
        return packet[1:3].decode("ascii", errors="replace")

    def _port_lost(self, exc: PortUnavailable) -> PortUnavailable:
        # The bus knows the port, not which mount was using it: name the mount and its address.
        if exc.instrument is not None:
            return exc
        return PortUnavailable(
            self.resource, exc.reason, pid=exc.pid, fix=exc.fix, instrument=self.name
        )

    def _send(self, body: str) -> None:
        try:
            self.endpoint.send(
                f"{self.address}{body}".encode("ascii"), owner=self.name, timeout=self.lease_timeout
            )
        except PortUnavailable as exc:
            raise self._port_lost(exc) from exc

    def _wait_for_end(self, timeout: float) -> bytes:
        try:
            return self.endpoint.wait_for({"PO", "GS"}, timeout=timeout)
        except PortUnavailable as exc:
            raise self._port_lost(exc) from exc

    def _transact(self, command: str, data: str = "", *, expect: str) -> bytes:
        packet = f"{self.address}{command}{data}".encode("ascii")
        try:
            return self.endpoint.transact(
                packet, expect=expect, timeout=self.reply_timeout, owner=self.name
            )
        except PortUnavailable as exc:
            raise self._port_lost(exc) from exc
        except InstrumentTimeout as exc:
            raise InstrumentTimeout(
                f"mount at address {self.address} did not answer {packet.decode()!r} with "
                f"{expect} within {self.reply_timeout:g} s",
                reply=exc.reply,
                instrument=self.name,
                resource=self.resource,
                fix="check that the mount is powered and cabled (an absent or hung mount is "
                "silent; power-cycle a mount that stopped answering after heavy use).",
            ) from exc

    def _data(self, packet: bytes, kind: str) -> str:
        text = packet.decode("ascii", errors="replace")
        length = _REPLY_LENGTHS[kind]
        if text[1:3] != kind or len(text) != 3 + length:
            raise ReplyError(
                f"expected a {kind} reply with {length} characters from address {self.address}",
                reply=packet,
                instrument=self.name,
                resource=self.resource,
                fix="check the cable and baud rate (9600); the next command resends.",
            )
        return text[3:]

    def _pulses_of(self, packet: bytes) -> int:
        data = self._data(packet, "PO")
        try:
            return decode_position(data)
        except ValueError:
            raise ReplyError(
                f"the position from address {self.address} is not 8 upper-case hex digits",
                reply=packet,
                instrument=self.name,
                resource=self.resource,
                fix="check the cable and baud rate (9600); the next command resends.",
            ) from None

    def _status_code(self, packet: bytes) -> int:
        data = self._data(packet, "GS")
        if not _UPPER_HEX.fullmatch(data):
            raise ReplyError(
                f"the status from address {self.address} is not 2 upper-case hex digits",
                reply=packet,
                instrument=self.name,
                resource=self.resource,
            )
        return int(data, 16)

    def _get_status(self) -> int:
        return self._status_code(self._transact("gs", expect="GS"))

    def _clear_latch(self) -> None:
        # The mount repeats its last error on the next gs: read it now so it is not reported
        # again as the result of a later command. Best effort.
        try:
            self.last_status = self._get_status()
        except DaqbridgeError as exc:
            log.debug("%s: gs after a fault failed: %s", self.name, exc)

    def _read_pulses(self) -> int:
        return self._pulses_of(self._transact("gp", expect="PO"))

    def _read_velocity(self) -> int:
        data = self._data(self._transact("gv", expect="GV"), "GV")
        if not _UPPER_HEX.fullmatch(data):
            raise ReplyError(
                f"the velocity from address {self.address} is not 2 upper-case hex digits",
                reply=data,
                instrument=self.name,
                resource=self.resource,
            )
        return int(data, 16)

    def _fault(self, code: int, during: str) -> InstrumentFault:
        meaning = STATUS_CODES.get(code, "unknown status")
        self.last_status = code
        return InstrumentFault(
            f"mount at address {self.address} on {self.port_url} reported GS{code:02X} "
            f"{meaning} {during}.",
            code=code,
            instrument=self.name,
            resource=self.resource,
            fix=_STATUS_FIXES.get(code, "see the Elliptec manual for this status code."),
        )


# --- the bus -----------------------------------------------------------------------------------


class ElliptecBus:
    """The Elliptec bus on one serial port, and the mounts on it.

    Owns the port's :class:`SerialBus` (one reader routing packets by address); mounts are made
    with :meth:`mount` and connected together with :meth:`connect`.
    """

    def __init__(self, port: SharedSerialPort, *, name: str = "elliptec") -> None:
        if not isinstance(port, SharedSerialPort):
            raise ConfigError(
                f"ElliptecBus needs an open SharedSerialPort, got {type(port).__name__}.",
                key="port",
                instrument=name,
                fix="open it with SerialPortPool.open(url) or use ElliptecBus.from_url(url).",
            )
        self.name = name
        self.port = port
        self.serial_bus: SerialBus = port.bus(ElliptecBusRouter())
        self.router: ElliptecBusRouter = self.serial_bus.router
        self._mounts: dict[str, ElliptecMount] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ElliptecBus {self.name!r} on {self.port.url!r} mounts={sorted(self._mounts)}>"

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        pool: SerialPortPool | None = None,
        name: str = "elliptec",
        baudrate: int = 9600,
    ) -> ElliptecBus:
        """Open ``url`` from ``pool`` (9600 8N1, no flow control: RTS/CTS hangs the bus)."""
        port = (pool or default_pool()).open(url, baudrate=baudrate)
        return cls(port, name=name)

    @property
    def mounts(self) -> dict[str, ElliptecMount]:
        with self._lock:
            return dict(self._mounts)

    def endpoint(self, address: str | int) -> BusEndpoint:
        return self.serial_bus.endpoint(normalise_address(address))

    def mount(self, address: str | int, *, name: str | None = None, **kwargs: Any) -> ElliptecMount:
        """Create the mount at ``address`` (not yet connected); one object per address."""
        address = normalise_address(address)
        return ElliptecMount(self, address, name=name or f"{self.name}_{address.lower()}", **kwargs)

    def connect(self, timeout: float = 10.0) -> None:
        """Connect every mount, in parallel; raises the first failure (naming its address)."""
        futures: list[tuple[ElliptecMount, Future]] = [
            (m, m._worker.submit(m._connect_io)) for m in self.mounts.values()
        ]
        first: BaseException | None = None
        deadline = time.monotonic() + timeout
        for mount, fut in futures:
            try:
                fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                if fut.done():  # the mount's own timeout (InstrumentTimeout), not ours
                    first = first or fut.exception()
                    continue
                first = first or InstrumentTimeout(
                    f"connecting the mount at address {mount.address} took longer than "
                    f"{timeout:g} s.",
                    instrument=mount.name,
                    resource=mount.resource,
                    fix="check that the mount is powered and cabled.",
                )
            except BaseException as exc:  # noqa: BLE001 - reported below, first one wins
                first = first or exc
        if first is not None:
            raise first

    def detect(
        self,
        addresses: Iterable[str | int] = range(16),
        timeout: float = 0.3,
    ) -> dict[str, ElliptecIdentity]:
        """Ask each address for ``in`` (one at a time: the line is half-duplex); answers only.

        For the ``hardware`` command; addresses whose mount object is busy are reported from
        that mount's last identity.
        """
        found: dict[str, ElliptecIdentity] = {}
        for raw in addresses:
            address = normalise_address(raw)
            existing = self.mounts.get(address)
            if existing is not None and existing.identity is not None:
                found[address] = existing.identity
                continue
            ep = self.endpoint(address)
            try:
                packet = ep.transact(
                    f"{address}in".encode(),
                    expect="IN",
                    timeout=timeout,
                    owner=f"{self.name} detect",
                )
                found[address] = parse_identity(address, packet[3:].decode("ascii"))
            except (InstrumentTimeout, ValueError, UnicodeDecodeError):
                continue
        return found

    def stop(self) -> None:
        for mount in self.mounts.values():
            mount.stop()

    def stats(self) -> dict[str, Any]:
        stats = self.serial_bus.stats()
        stats["junk"] = self.router.junk
        return stats

    def close(self) -> None:
        """Close every mount. The bus reader belongs to the port and stops when the port closes:
        in shadow the legacy driver still reads through it until its own shutdown phase, and
        closing it here failed that driver's poll ("the bus was closed ... restarting")."""
        for mount in list(self.mounts.values()):
            mount.close()

    def _check_free(self, address: str) -> None:
        with self._lock:
            if address in self._mounts:
                raise ConfigError(
                    f"address {address} on {self.port.url} already has a mount "
                    f"({self._mounts[address].name!r}).",
                    key="address",
                    instrument=self.name,
                    fix="list each address once; two objects driving one mount would fight.",
                )

    def _register(self, mount: ElliptecMount) -> None:
        with self._lock:
            self._mounts.setdefault(mount.address, mount)
        if self._mounts[mount.address] is not mount:  # two threads built the same address
            mount._worker.shutdown(wait=False)
            self._check_free(mount.address)

    def _forget(self, mount: ElliptecMount) -> None:
        with self._lock:
            if self._mounts.get(mount.address) is mount:
                del self._mounts[mount.address]


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


def _positive(value: Any, key: str, name: str, *, zero: bool = False) -> float:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value >= 0 if zero else value > 0)
    )
    if not ok:
        raise ConfigError(
            f"{key} must be a finite number {'>= 0' if zero else '> 0'}, got {value!r}.",
            key=key,
            instrument=name,
        )
    return float(value)
