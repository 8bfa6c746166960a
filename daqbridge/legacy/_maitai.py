"""Legacy driver of the Spectra-Physics MaiTai Ti:Sapphire laser (INSTRUMENTS.md, "MaiTai").

Quirks handled: replies carry unit suffixes (``820nm``, ``3.000W``, ``100.00%``); the reply
terminator varies by unit (configurable, CR/LF tolerated); replies can take up to 2 s and the laser
needs a pause (about 50 ms) after a write; set commands are silent, so nothing is assumed: the
shutter is read back (real units sometimes accept and ignore it: local mode, interlock), a
wavelength change is followed until it settles, ``ON`` is refused until warm-up reaches 100 %.
A refused wavelength target is seen in ``WAVELENGTH?`` (the commanded value, which a refused
target leaves unchanged), never in ``*STB?``: the real laser's status byte has no such bit.
"""

from __future__ import annotations

import re
import time
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
from daqbridge.legacy._serial_line import (
    TERMINATORS,
    SerialLine,
    connected_line,
    naming_port_loss,
)

WAVELENGTH_LIMITS = (690.0, 1040.0)
STB_EMISSION = 1
STB_ON_REFUSED = 64
COMMANDED_TOLERANCE_NM = 0.5
"""``WAVELENGTH?`` answers to 1 nm (``820nm``): a target within half of that was taken."""
_VALUE = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z%]*)\s*$")


def parse_quantity(reply: str, unit: str = "") -> float:
    """``820nm`` -> 820.0, ``3.000W`` -> 3.0, ``100.00%`` -> 100.0; the suffix, if any, must be
    ``unit`` (a reply with another unit is someone else's answer)."""
    m = _VALUE.match(reply)
    if not m:
        raise ValueError(f"not a number: {reply!r}")
    suffix = m.group(2)
    if suffix and unit and suffix.lower() != unit.lower():
        raise ValueError(f"expected a value in {unit!r}, got {reply!r}")
    return float(m.group(1))


class MaiTaiOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    terminator: str = pydantic.Field(
        "LF", description='terminator = "LF" (the laser\'s reply terminator: LF, CR or CRLF)'
    )
    xonxoff: bool = pydantic.Field(
        False, description="xonxoff = false (software flow control; must match other users)"
    )
    wavelength_nm: float | None = pydantic.Field(
        None, ge=690, le=1040, description="wavelength_nm = 800 (690 to 1040), set at connect"
    )
    timeout_s: float = pydantic.Field(
        2.0, gt=0, le=30, description="timeout_s = 2.0 (replies can take up to 2 s)"
    )
    command_gap_s: float = pydantic.Field(
        0.05, ge=0, le=2, description="command_gap_s = 0.05 (pause after a write)"
    )
    settle_timeout_s: float = pydantic.Field(
        30.0, ge=0, le=600, description="settle_timeout_s = 30 (wait for a wavelength change)"
    )
    settle_tolerance_nm: float = pydantic.Field(
        1.0, gt=0, le=20, description="settle_tolerance_nm = 1.0"
    )
    readback_timeout_s: float = pydantic.Field(
        1.0, ge=0, le=30, description="readback_timeout_s = 1.0 (shutter/emission confirmation)"
    )
    lease_timeout_s: float = pydantic.Field(
        5.0, gt=0, le=60, description="lease_timeout_s = 5.0 (wait for the shared port)"
    )

    @pydantic.field_validator("terminator")
    @classmethod
    def _terminator(cls, v: str) -> str:
        if v.upper() not in TERMINATORS:
            raise ValueError(f"terminator must be one of {list(TERMINATORS)}")
        return v.upper()


class MaiTai(LegacyInstrument):
    """Channels ``wavelength`` (nm), ``power`` (W), ``shutter`` (0/1), ``warmup`` (%);
    settable ``wavelength`` and ``shutter``; execute ``on`` / ``off``; queries also
    ``status`` (*STB?), ``identity``, ``pump_power``, ``humidity``."""

    def __init__(
        self,
        instrument_id: str,
        ports: Any,
        port: str,
        *,
        baud_rate: int = 9600,
        terminator: str = "LF",
        xonxoff: bool = False,
        wavelength_nm: float | None = None,
        timeout_s: float = 2.0,
        command_gap_s: float = 0.05,
        settle_timeout_s: float = 30.0,
        settle_tolerance_nm: float = 1.0,
        readback_timeout_s: float = 1.0,
        lease_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(instrument_id)
        if terminator.upper() not in TERMINATORS:
            raise ValueRejected(
                f"terminator {terminator!r} is not one of {list(TERMINATORS)}",
                value=terminator,
                instrument=instrument_id,
                fix='use terminator = "LF", "CR" or "CRLF".',
            )
        self._pool = ports
        self.port_name = port
        self.baud_rate = baud_rate
        self.terminator = TERMINATORS[terminator.upper()]
        self.xonxoff = xonxoff
        self.initial_wavelength = wavelength_nm
        self.timeout_s = timeout_s
        self.command_gap_s = command_gap_s
        self.settle_timeout_s = settle_timeout_s
        self.settle_tolerance_nm = settle_tolerance_nm
        self.readback_timeout_s = readback_timeout_s
        self.lease_timeout_s = lease_timeout_s
        self.identity: str | None = None
        self._line: SerialLine | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def connect(self) -> None:
        if self._pool is None:
            raise ValueRejected(
                "no serial port pool was given",
                instrument=self.instrument_id,
                fix="build the runtime with LegacyRuntime.from_config(config, SerialPortPool()).",
            )
        with naming_port_loss(self.instrument_id):
            shared = self._pool.open(
                self.port_name, baudrate=self.baud_rate, xonxoff=self.xonxoff, rtscts=False
            )
        self._line = SerialLine(
            self.instrument_id,
            shared,
            write_terminator=self.terminator,
            # Read to the last byte of the terminator; a CR left by a CR LF unit is stripped.
            read_terminator=self.terminator[-1:],
            timeout=self.timeout_s,
            lease_timeout=self.lease_timeout_s,
            command_gap=self.command_gap_s,
        )
        idn = self._line.query("*IDN?")
        if "maitai" not in idn.lower().replace(" ", "").replace("-", ""):
            raise IdentityMismatch(
                f"the device on this port is not a MaiTai: *IDN? says {idn!r}",
                instrument=self.instrument_id,
                resource=self.port_name,
                fix="check the port and the terminator setting in the configuration.",
            )
        self.identity = idn
        if self.initial_wavelength is not None:
            result = self._set_wavelength(self.initial_wavelength)
            if not result.ok:
                raise result.error or InstrumentFault(result.message, instrument=self.instrument_id)

    def disconnect(self) -> None:
        self._line = None  # the pool owns the port; other drivers may share it

    # --- data -----------------------------------------------------------------------------

    def poll(self) -> list[Measurement]:
        with self._link().exchange() as x:  # one lease: the four readings belong together
            wavelength = self._number(x.query("READ:WAV?"), "nm", "READ:WAV?")
            power = self._number(x.query("READ:POWER?"), "W", "READ:POWER?")
            shutter = self._flag(x.query("SHUTTER?"), "SHUTTER?")
            warmup = self._number(x.query("READ:PCTWARMEDUP?"), "%", "READ:PCTWARMEDUP?")
        return [
            self.measurement("wavelength", wavelength),
            self.measurement("power", power),
            self.measurement("shutter", shutter),
            self.measurement("warmup", warmup),
        ]

    def channels(self) -> dict[str, ChannelInfo]:
        return {
            "wavelength": ChannelInfo("wavelength", "nm", "number"),
            "power": ChannelInfo("power", "W", "number"),
            "shutter": ChannelInfo("shutter", "", "integer", doc="1 open, 0 closed"),
            "warmup": ChannelInfo("warmup", "%", "number"),
        }

    def parameters(self) -> dict[str, ParameterInfo]:
        return {
            "wavelength": ParameterInfo("wavelength", "nm", limits=WAVELENGTH_LIMITS),
            "shutter": ParameterInfo("shutter", "", choices=(0, 1), dtype="integer"),
            "emission": ParameterInfo(
                "emission", "", choices=(0, 1), dtype="integer", doc="1 on (ON), 0 off (OFF)"
            ),
            "power": ParameterInfo("power", "W", settable=False),
            "warmup": ParameterInfo("warmup", "%", settable=False),
            "status": ParameterInfo("status", "", settable=False, dtype="integer"),
            "identity": ParameterInfo("identity", "", settable=False, dtype="string"),
            "pump_power": ParameterInfo("pump_power", "W", settable=False),
            "humidity": ParameterInfo("humidity", "%", settable=False),
        }

    # --- commands -------------------------------------------------------------------------

    def handle(self, command: Command) -> CommandResult:
        try:
            if command.kind == "set":
                if command.name == "shutter" and isinstance(command.value, bool):
                    value: Any = int(command.value)
                else:
                    value = self.check_value(command.name, command.value)
                if command.name == "wavelength":
                    return self._set_wavelength(value)
                if command.name == "emission":
                    result = self._emission(bool(value))
                    return CommandResult.success(int(result.value)) if result.ok else result
                return self._set_shutter(int(value))
            if command.kind == "query":
                return self._query(command.name)
            if command.name in ("on", "off"):
                return self._emission(command.name == "on")
            return self._unknown(command)
        except DaqbridgeError as exc:
            return CommandResult.failure(exc)

    def _query(self, name: str) -> CommandResult:
        asks = {
            "wavelength": ("READ:WAV?", "nm"),
            "power": ("READ:POWER?", "W"),
            "warmup": ("READ:PCTWARMEDUP?", "%"),
            "pump_power": ("PLASER:POWER?", "W"),
            "humidity": ("READ:HUM?", "%"),
        }
        if name in asks:
            text, unit = asks[name]
            return CommandResult.success(self._number(self._link().query(text), unit, text))
        if name == "shutter":
            return CommandResult.success(self._flag(self._link().query("SHUTTER?"), "SHUTTER?"))
        if name == "status":
            return CommandResult.success(self._status())
        if name == "emission":
            return CommandResult.success(1 if self._status() & STB_EMISSION else 0)
        if name == "identity":
            return CommandResult.success(self._link().query("*IDN?"))
        return self._unknown(Command.query(name))

    def _set_wavelength(self, nm: float) -> CommandResult:
        self._link().send(f"WAVELENGTH {nm:g}")
        commanded = self._number(self._link().query("WAVELENGTH?"), "nm", "WAVELENGTH?")
        if abs(commanded - nm) > COMMANDED_TOLERANCE_NM:
            return CommandResult.failure(
                InstrumentFault(
                    f"the laser refused wavelength {nm:g} nm: its commanded wavelength "
                    f"(WAVELENGTH?) is still {commanded:g} nm",
                    code="wavelength refused",
                    instrument=self.instrument_id,
                    resource=self.port_name,
                    fix="this unit's tuning range may be narrower than 690-1040 nm (the front "
                    "panel or WAVELENGTH:MIN?/MAX? give it): choose a wavelength inside it.",
                )
            )
        # Tuning takes seconds; follow it so the set is confirmed by the laser, not assumed.
        deadline = time.monotonic() + self.settle_timeout_s
        while True:
            now_nm = self._number(self._link().query("READ:WAV?"), "nm", "READ:WAV?")
            if abs(now_nm - nm) <= self.settle_tolerance_nm:
                self.publish(self.measurement("wavelength", now_nm))
                return CommandResult.success(now_nm)
            if time.monotonic() >= deadline:
                return CommandResult.failure(
                    InstrumentFault(
                        f"wavelength did not reach {nm:g} nm within {self.settle_timeout_s:g} s "
                        f"(now {now_nm:g} nm)",
                        code="settle",
                        instrument=self.instrument_id,
                        resource=self.port_name,
                        fix="give settle_timeout_s more time for large steps, or check the laser.",
                    )
                )
            time.sleep(0.05)

    def _set_shutter(self, state: int) -> CommandResult:
        self._link().send(f"SHUTTER {state}")
        seen = self._await(lambda: self._flag(self._link().query("SHUTTER?"), "SHUTTER?"), state)
        if seen != state:
            return CommandResult.failure(
                InstrumentFault(
                    f"shutter did not {'open' if state else 'close'}: the laser accepted "
                    f"SHUTTER {state} but still reports {seen}",
                    code="shutter",
                    instrument=self.instrument_id,
                    resource=self.port_name,
                    fix="the laser ignores remote shutter commands in local (front-panel) mode or "
                    "with an interlock open: check the panel and interlocks.",
                )
            )
        self.publish(self.measurement("shutter", seen))
        return CommandResult.success(seen)

    def _emission(self, on: bool) -> CommandResult:
        if on:
            warm = self._number(self._link().query("READ:PCTWARMEDUP?"), "%", "READ:PCTWARMEDUP?")
            if warm < 100.0:
                return CommandResult.failure(
                    InstrumentFault(
                        f"cannot turn on: the laser is warming up ({warm:g} %)",
                        code=STB_ON_REFUSED,
                        instrument=self.instrument_id,
                        resource=self.port_name,
                        fix="wait until warm-up reaches 100 % (query warmup), then retry.",
                    )
                )
        self._link().send("ON" if on else "OFF")
        want = 1 if on else 0
        status = self._await(lambda: self._status() & STB_EMISSION, want)
        if status != want:
            return CommandResult.failure(
                InstrumentFault(
                    f"emission did not turn {'on' if on else 'off'} (status byte says "
                    f"{'on' if status else 'off'})",
                    code="emission",
                    instrument=self.instrument_id,
                    resource=self.port_name,
                    fix="check the laser's key switch, interlocks and front panel.",
                )
            )
        return CommandResult.success(bool(status))

    def _await(self, read, want: int) -> int:
        """Read back until ``want`` or ``readback_timeout_s``: real lasers take a moment."""
        deadline = time.monotonic() + self.readback_timeout_s
        while True:
            value = read()
            if value == want or time.monotonic() >= deadline:
                return value
            time.sleep(0.02)

    def _status(self) -> int:
        reply = self._link().query("*STB?")
        try:
            return int(reply.strip())
        except ValueError:
            raise ReplyError(
                "unparseable status byte",
                reply=reply,
                instrument=self.instrument_id,
                resource=self.port_name,
            ) from None

    def _number(self, reply: str, unit: str, asked: str) -> float:
        try:
            return parse_quantity(reply, unit)
        except ValueError:
            raise ReplyError(
                f"unparseable reply to {asked}",
                reply=reply,
                instrument=self.instrument_id,
                resource=self.port_name,
                fix="check the terminator setting; line noise is retried by the runtime.",
            ) from None

    def _flag(self, reply: str, asked: str) -> int:
        text = reply.strip()
        if text not in ("0", "1"):
            raise ReplyError(
                f"unexpected reply to {asked} (expected 0 or 1)",
                reply=reply,
                instrument=self.instrument_id,
                resource=self.port_name,
            )
        return int(text)

    def _unknown(self, command: Command) -> CommandResult:
        return CommandResult.failure(
            ValueRejected(
                f"cannot {command}",
                value=command.name,
                instrument=self.instrument_id,
                fix="set wavelength/shutter/emission; query wavelength, power, shutter, warmup, "
                "emission, status, identity, pump_power, humidity; execute on/off.",
            )
        )

    def _link(self) -> SerialLine:
        return connected_line(self._line, self.instrument_id, self.port_name)


def _factory(entry: InstrumentConfig, ports: Any) -> MaiTai:
    return MaiTai(
        entry.name, ports, entry.port or "", baud_rate=entry.baud_rate or 9600, **entry.options
    )


register_driver(
    "maitai",
    _factory,
    options=MaiTaiOptions,
    default_baud_rate=9600,
    description="Spectra-Physics MaiTai Ti:Sapphire laser (RS-232 / USB-serial)",
)
