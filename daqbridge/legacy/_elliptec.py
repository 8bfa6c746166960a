"""Legacy driver of a Thorlabs Elliptec bus of ELL14 rotation mounts (INSTRUMENTS.md, "Elliptec").

Several mounts share one half-duplex line (addresses 0-F). The port's multi-drop bus
(``SharedSerialPort.bus(router)``) owns all reading; ``ElliptecRouter`` below tells it how replies
are framed and addressed, so the late ``PO`` at the end of one mount's move is filed under that
mount instead of landing in whatever transaction reads next. Quirks handled: the pulses-per-degree
scale is read from each mount's ``IN`` reply (not the 136533 some documents quote), positions are
signed 32-bit two's complement in 8 upper-case hex digits, commands to one mount are spaced by
``command_spacing_s`` (a move sent too soon goes to 0 on real units), and a move's reply is the
``PO`` sent when it ENDS (or a ``GS`` fault).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import pydantic

from daqbridge.errors import (
    DaqbridgeError,
    IdentityMismatch,
    InstrumentFault,
    ReplyError,
    ValueRejected,
)
from daqbridge.legacy._command import Command, CommandResult
from daqbridge.legacy._config import InstrumentConfig, register_driver
from daqbridge.legacy._instrument import LegacyInstrument
from daqbridge.legacy._measurement import ChannelInfo, Measurement, ParameterInfo
from daqbridge.legacy._serial_line import naming_port_loss

STATUS_TEXT = {
    0x00: "ok",
    0x01: "communication timeout",
    0x02: "mechanical timeout",
    0x03: "command error",
    0x04: "value out of range",
    0x05: "module isolated",
    0x06: "module out of isolation",
    0x07: "initialising error",
    0x08: "thermal error",
    0x09: "busy",
    0x0A: "sensor error",
    0x0B: "motor error",
    0x0C: "out of range",
    0x0D: "over current",
}
_STATUS_OK, _STATUS_BUSY = 0x00, 0x09
_REPLY = re.compile(rb"^([0-9A-Fa-f])([A-Z][A-Z0-9])(.*)$")
_HEX8 = re.compile(r"^[0-9A-Fa-f]{8}$")
_MAX_JUNK = 512


def encode_position(pulses: int) -> str:
    """Signed pulses as the bus writes them: 8 upper-case hex digits, two's complement."""
    if not -(2**31) <= pulses < 2**31:
        raise ValueError(f"{pulses} pulses do not fit in 32 bits")
    return f"{pulses & 0xFFFFFFFF:08X}"


def decode_position(text: str) -> int:
    """``FFFFDA9C`` -> -9572."""
    if not _HEX8.match(text):
        raise ValueError(f"not an 8-digit hex position: {text!r}")
    value = int(text, 16)
    return value - 2**32 if value >= 2**31 else value


@dataclass(frozen=True)
class MountInfo:
    """Decoded ``IN`` reply of one mount."""

    model: int
    serial: str
    year: int
    firmware: int
    hardware: int
    travel_deg: int
    pulses_per_travel: int

    @property
    def pulses_per_deg(self) -> float:
        return self.pulses_per_travel / self.travel_deg


def parse_info(data: str) -> MountInfo:
    """The 30 characters after ``IN``: model(2 hex) serial(8) year(4) fw(2 hex) hw(2 hex)
    travel(4 hex) pulses(8 hex)."""
    if len(data) != 30:
        raise ValueError(f"IN payload has {len(data)} characters, expected 30: {data!r}")
    info = MountInfo(
        model=int(data[0:2], 16),
        serial=data[2:10],
        year=int(data[10:14]),
        firmware=int(data[14:16], 16),
        hardware=int(data[16:18], 16),
        travel_deg=int(data[18:22], 16),
        pulses_per_travel=int(data[22:30], 16),
    )
    if info.travel_deg <= 0 or info.pulses_per_travel <= 0:
        raise ValueError(f"IN payload gives no usable scale: {data!r}")
    return info


class ElliptecRouter:
    """How Elliptec device replies are framed: ``<addr><TWO UPPER LETTERS><data>\\r\\n``.

    Implements the ``BusRouter`` protocol of ``daqbridge.transport``. Lines that are not
    replies (noise, an echo of a host packet, which has lower-case letters) are skipped and counted.
    """

    protocol = "thorlabs-elliptec"  # shares a bus with any other Elliptec driver

    def __init__(self) -> None:
        self.junk = 0

    def split(self, buffer: bytearray) -> list[bytes]:
        packets: list[bytes] = []
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                if len(buffer) > _MAX_JUNK:  # no terminator for this long: noise, resynchronise
                    self.junk += 1
                    del buffer[:-64]
                return packets
            line = bytes(buffer[:end]).strip(b"\r\n\x00 ")
            del buffer[: end + 1]
            if _REPLY.match(line):
                packets.append(line)
            elif line:
                self.junk += 1

    def address_of(self, packet: bytes) -> str:
        return chr(packet[0]).upper()

    def kind_of(self, packet: bytes) -> str:
        return packet[1:3].decode("ascii")


def normalise_address(value: int | str) -> str:
    if isinstance(value, bool):
        raise ValueError(f"bus address must be 0-15 or one hex digit, got {value!r}")
    if isinstance(value, int):
        if not 0 <= value <= 15:
            raise ValueError(f"bus address must be 0-15, got {value}")
        return f"{value:X}"
    if isinstance(value, str) and re.fullmatch(r"[0-9A-Fa-f]", value.strip()):
        return value.strip().upper()
    raise ValueError(f"bus address must be 0-15 or one hex digit, got {value!r}")


class ElliptecOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    device_addresses: list[int | str] = pydantic.Field(
        ..., min_length=1, description="device_addresses = [2, 3] (0-15, one per mount)"
    )
    timeout_s: float = pydantic.Field(1.0, gt=0, le=30, description="timeout_s = 1.0 (reply wait)")
    move_timeout_s: float = pydantic.Field(
        20.0, gt=0, le=600, description="move_timeout_s = 20 (longest move or home)"
    )
    command_spacing_s: float = pydantic.Field(
        0.1, ge=0, le=5, description="command_spacing_s = 0.1 (pause between commands to a mount)"
    )
    position_tolerance_deg: float = pydantic.Field(
        0.05, gt=0, le=10, description="position_tolerance_deg = 0.05 (arrival check)"
    )
    lease_timeout_s: float = pydantic.Field(
        5.0, gt=0, le=60, description="lease_timeout_s = 5.0 (wait for the shared port)"
    )

    @pydantic.field_validator("device_addresses")
    @classmethod
    def _addresses(cls, v: list[int | str]) -> list[int | str]:
        seen = [normalise_address(a) for a in v]
        if len(set(seen)) != len(seen):
            raise ValueError(f"an address appears twice in {v}")
        return v


@dataclass
class _Mount:
    address: str
    endpoint: Any
    info: MountInfo
    last_command_at: float = 0.0


class ElliptecBus(LegacyInstrument):
    """All configured mounts of one bus as one legacy instrument.

    Channels ``position_<addr>`` (deg); settable ``position_<addr>`` (waits for the move to end);
    queries ``position_<addr>``, ``status_<addr>``, ``info_<addr>``; execute ``home_<addr>`` and
    ``stop``. A move blocks this instrument's worker until the mount reports its end; ``stop()``
    (``LegacyRuntime.halt``) ends it early from another thread.
    """

    def __init__(
        self,
        instrument_id: str,
        ports: Any,
        port: str,
        *,
        device_addresses: list[int | str],
        baud_rate: int = 9600,
        timeout_s: float = 1.0,
        move_timeout_s: float = 20.0,
        command_spacing_s: float = 0.1,
        position_tolerance_deg: float = 0.05,
        lease_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(instrument_id)
        self._pool = ports
        self.port_name = port
        self.baud_rate = baud_rate
        self.addresses = [normalise_address(a) for a in device_addresses]
        if not self.addresses:
            raise ValueRejected(
                "no device addresses given",
                instrument=instrument_id,
                fix="set device_addresses = [2, 3] (the mounts' bus addresses).",
            )
        self.timeout_s = timeout_s
        self.move_timeout_s = move_timeout_s
        self.command_spacing_s = command_spacing_s
        self.tolerance_deg = position_tolerance_deg
        self.lease_timeout_s = lease_timeout_s
        self._mounts: dict[str, _Mount] = {}
        self._bus: Any = None
        self._stop_requested = threading.Event()

    # --- lifecycle ------------------------------------------------------------------------

    def connect(self) -> None:
        if self._pool is None:
            raise ValueRejected(
                "no serial port pool was given",
                instrument=self.instrument_id,
                fix="build the runtime with LegacyRuntime.from_config(config, SerialPortPool()).",
            )
        with naming_port_loss(self.instrument_id):
            shared = self._pool.open(self.port_name, baudrate=self.baud_rate, rtscts=False)
            self._bus = shared.bus(ElliptecRouter(), timeout=self.lease_timeout_s)
        mounts: dict[str, _Mount] = {}
        for address in self.addresses:
            # No discard() of old inbox packets, here or anywhere: another driver may share this
            # address's endpoint and wait for them. Transactions only take packets that arrive
            # after their own request, so stale ones never pass for a reply.
            endpoint = self._bus.endpoint(address)
            mount = _Mount(address, endpoint, MountInfo(0, "", 0, 0, 0, 1, 1))
            reply = self._transact(mount, "in", expect="IN")
            try:
                mount.info = parse_info(reply[3:].decode("ascii"))
            except ValueError as exc:
                raise IdentityMismatch(
                    f"mount at address {address} sent an unusable IN reply ({exc})",
                    instrument=self.instrument_id,
                    resource=self.port_name,
                    fix="check that an ELL14 answers at this address.",
                ) from None
            mounts[address] = mount
        self._mounts = mounts

    def disconnect(self) -> None:
        # The bus belongs to the port (other drivers may use it); we only forget our endpoints.
        self._mounts = {}
        self._bus = None

    def stop(self) -> bool:
        """Send ``st`` to every mount now (thread-safe: bus writes go through the port lease)."""
        mounts = list(self._mounts.values())
        if not mounts:
            return False
        self._stop_requested.set()
        with naming_port_loss(self.instrument_id):
            for mount in mounts:
                mount.endpoint.send(
                    f"{mount.address}st".encode(),
                    owner=self.instrument_id,
                    timeout=self.lease_timeout_s,
                )
        return True

    # --- data -----------------------------------------------------------------------------

    def poll(self) -> list[Measurement]:
        out = []
        for mount in self._connected_mounts():
            out.append(self._position_measurement(mount, self._read_position(mount)))
        return out

    def channels(self) -> dict[str, ChannelInfo]:
        return {
            f"position_{a}": ChannelInfo(f"position_{a}", "deg", "number", doc=f"mount {a} angle")
            for a in self.addresses
        }

    def parameters(self) -> dict[str, ParameterInfo]:
        params: dict[str, ParameterInfo] = {}
        for a in self.addresses:
            params[f"position_{a}"] = ParameterInfo(f"position_{a}", "deg", limits=(-360.0, 360.0))
            params[f"status_{a}"] = ParameterInfo(f"status_{a}", "", settable=False, dtype="string")
            params[f"info_{a}"] = ParameterInfo(f"info_{a}", "", settable=False, dtype="string")
            params[f"velocity_{a}"] = ParameterInfo(
                f"velocity_{a}", "%", limits=(1, 100), dtype="integer", doc="speed, % of maximum"
            )
        return params

    # --- commands -------------------------------------------------------------------------

    def handle(self, command: Command) -> CommandResult:
        try:
            if command.kind == "set" and command.name.startswith("position_"):
                target = self.check_value(command.name, command.value)
                return self._move_to(self._mount(command.name), target)
            if command.kind == "set" and command.name.startswith("velocity_"):
                pct = int(self.check_value(command.name, command.value))
                return self._set_velocity(self._mount(command.name), pct)
            if command.kind == "set":
                self.check_value(command.name, command.value)  # raises: not settable/unknown
            if command.kind == "query":
                return self._query(command.name)
            if command.kind == "execute":
                if command.name == "stop":
                    return CommandResult.success(self.stop())
                if command.name.startswith("home_"):
                    return self._home(self._mount(command.name))
            return self._unknown(command)
        except DaqbridgeError as exc:
            return CommandResult.failure(exc)

    def _query(self, name: str) -> CommandResult:
        mount = self._mount(name)
        if name.startswith("position_"):
            return CommandResult.success(self._read_position(mount))
        if name.startswith("velocity_"):
            return CommandResult.success(self._read_velocity(mount))
        if name.startswith("status_"):
            reply = self._transact(mount, "gs", expect="GS")
            code = self._status_code(mount, reply)
            return CommandResult.success(code, STATUS_TEXT.get(code, f"unknown status {code:02X}"))
        if name.startswith("info_"):
            i = mount.info
            return CommandResult.success(
                {
                    "model": i.model,
                    "serial": i.serial,
                    "year": i.year,
                    "firmware": i.firmware,
                    "hardware": i.hardware,
                    "travel_deg": i.travel_deg,
                    "pulses_per_deg": i.pulses_per_deg,
                }
            )
        return self._unknown(Command.query(name))

    def _move_to(self, mount: _Mount, target_deg: float) -> CommandResult:
        pulses = round(target_deg * mount.info.pulses_per_deg)
        return self._motion(mount, f"ma{encode_position(pulses)}", target_deg)

    def _home(self, mount: _Mount) -> CommandResult:
        return self._motion(mount, "ho0", None)

    def _motion(self, mount: _Mount, text: str, target_deg: float | None) -> CommandResult:
        self._stop_requested.clear()
        expected = 0.0 if target_deg is None else target_deg
        try:
            packet = self._transact(mount, text, expect={"PO", "GS"}, timeout=self.move_timeout_s)
            deadline = time.monotonic() + self.move_timeout_s
            while True:
                if packet[1:3] == b"GS":
                    # GS 00 / 09 (busy) may precede the PO on some firmware: keep waiting.
                    code = self._status_code(mount, packet)
                    if code not in (_STATUS_OK, _STATUS_BUSY):
                        return CommandResult.failure(self._fault(mount, code, text))
                elif abs(self._decode(mount, packet) - expected) <= self.tolerance_deg:
                    break
                else:
                    # Short of the target: the end of this move (stopped, blocked), or a late PO
                    # of an earlier exchange, which looks the same? The mount answers in order,
                    # so busy means a late one; idle means the move ended, and gp says where.
                    code = self._status_code(mount, self._transact(mount, "gs", expect="GS"))
                    if code not in (_STATUS_OK, _STATUS_BUSY):
                        return CommandResult.failure(self._fault(mount, code, text))
                    if code == _STATUS_OK:
                        packet = self._transact(mount, "gp", expect="PO")
                        break
                with naming_port_loss(self.instrument_id):
                    packet = mount.endpoint.wait_for(
                        {"PO", "GS"}, max(0.0, deadline - time.monotonic())
                    )
        finally:
            mount.last_command_at = time.monotonic()
        position = self._decode(mount, packet)
        self.publish(self._position_measurement(mount, position))
        if self._stop_requested.is_set():
            return CommandResult.failure(
                InstrumentFault(
                    f"{'move' if target_deg is not None else 'home'} of mount {mount.address} "
                    f"stopped at {position:.3f} deg",
                    code="stopped",
                    instrument=self.instrument_id,
                    resource=self.port_name,
                    fix="repeat the move if the stop was not intended.",
                )
            )
        if target_deg is not None and abs(position - expected) > self.tolerance_deg:
            return CommandResult.failure(
                InstrumentFault(
                    f"mount {mount.address} ended at {position:.3f} deg instead of "
                    f"{target_deg:.3f} deg",
                    code="position",
                    instrument=self.instrument_id,
                    resource=self.port_name,
                    fix="check for a blocked mount or moves sent too close together; repeat it.",
                )
            )
        return CommandResult.success(position)

    # --- wire -----------------------------------------------------------------------------

    def _transact(
        self, mount: _Mount, text: str, *, expect: str | set[str], timeout: float | None = None
    ) -> bytes:
        wait = mount.last_command_at + self.command_spacing_s - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        try:
            with naming_port_loss(self.instrument_id):
                return mount.endpoint.transact(
                    f"{mount.address}{text}".encode("ascii"),
                    expect=expect,
                    timeout=self.timeout_s if timeout is None else timeout,
                    owner=self.instrument_id,
                )
        finally:
            mount.last_command_at = time.monotonic()

    def _set_velocity(self, mount: _Mount, pct: int) -> CommandResult:
        code = self._status_code(mount, self._transact(mount, f"sv{pct:02X}", expect="GS"))
        if code != _STATUS_OK:
            return CommandResult.failure(self._fault(mount, code, f"sv{pct:02X}"))
        return CommandResult.success(self._read_velocity(mount))

    def _read_velocity(self, mount: _Mount) -> int:
        packet = self._transact(mount, "gv", expect="GV")
        try:
            return int(packet[3:5].decode("ascii"), 16)
        except (ValueError, UnicodeDecodeError):
            raise ReplyError(
                f"unparseable velocity from mount {mount.address}",
                reply=packet,
                instrument=self.instrument_id,
                resource=self.port_name,
                fix="line noise on the bus; the runtime retries.",
            ) from None

    def _read_position(self, mount: _Mount) -> float:
        return self._decode(mount, self._transact(mount, "gp", expect="PO"))

    def _decode(self, mount: _Mount, packet: bytes) -> float:
        try:
            pulses = decode_position(packet[3:].decode("ascii"))
        except (ValueError, UnicodeDecodeError):
            raise ReplyError(
                f"unparseable position from mount {mount.address}",
                reply=packet,
                instrument=self.instrument_id,
                resource=self.port_name,
                fix="line noise on the bus; the runtime retries.",
            ) from None
        return pulses / mount.info.pulses_per_deg

    def _status_code(self, mount: _Mount, packet: bytes) -> int:
        try:
            return int(packet[3:5], 16)
        except ValueError:
            raise ReplyError(
                f"unparseable status from mount {mount.address}",
                reply=packet,
                instrument=self.instrument_id,
                resource=self.port_name,
            ) from None

    def _fault(self, mount: _Mount, code: int, text: str) -> InstrumentFault:
        return InstrumentFault(
            f"mount {mount.address} refused {text!r}: status {code:02X} "
            f"({STATUS_TEXT.get(code, 'unknown')})",
            code=code,
            instrument=self.instrument_id,
            resource=self.port_name,
            fix="check the target is within one revolution and the mount moves freely.",
        )

    def _position_measurement(self, mount: _Mount, position: float) -> Measurement:
        return Measurement.now(self.instrument_id, f"position_{mount.address}", position, "deg")

    def _connected_mounts(self) -> list[_Mount]:
        if not self._mounts:
            raise ReplyError(
                "not connected",
                instrument=self.instrument_id,
                resource=self.port_name,
                fix="the runtime connects instruments on start(); wait for state 'running'.",
            )
        return list(self._mounts.values())

    def _mount(self, name: str) -> _Mount:
        address = name.rsplit("_", 1)[-1].upper()
        if address not in self.addresses:
            raise ValueRejected(
                f"no mount at address {address!r} (from {name!r})",
                value=name,
                instrument=self.instrument_id,
                fix=f"configured addresses: {self.addresses}.",
            )
        mounts = self._connected_mounts()
        return next(m for m in mounts if m.address == address)

    def _unknown(self, command: Command) -> CommandResult:
        a = self.addresses[0]
        return CommandResult.failure(
            ValueRejected(
                f"cannot {command}",
                value=command.name,
                instrument=self.instrument_id,
                fix=f"use set/query position_{a} or velocity_{a}, query status_{a} or info_{a}, "
                f"execute home_{a} or stop.",
            )
        )


def _factory(entry: InstrumentConfig, ports: Any) -> ElliptecBus:
    return ElliptecBus(
        entry.name, ports, entry.port or "", baud_rate=entry.baud_rate or 9600, **entry.options
    )


register_driver(
    "elliptec",
    _factory,
    options=ElliptecOptions,
    default_baud_rate=9600,
    description="Thorlabs Elliptec ELL14 rotation mounts on one multi-drop bus",
)
