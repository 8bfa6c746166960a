"""Legacy driver of the Newport 1830-C optical power meter (INSTRUMENTS.md, "Newport 1830-C").

Quirks handled: single-letter commands, LF both ways, every set silent (so each set is confirmed
by reading it back), ``D?`` in short scientific notation (``+.75E-9``, ``5E-9``) in W mode and a
plain decimal in dBm/dB, ``OVER``/``UNDER``/``SAT``/``ERR`` instead of a number, and echo mode:
``E0`` is sent first, and a reply line equal to the command is skipped anyway.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pydantic

from daqbridge.errors import DaqbridgeError, InstrumentFault, ReplyError, ValueRejected
from daqbridge.legacy._command import Command, CommandResult
from daqbridge.legacy._config import InstrumentConfig, register_driver
from daqbridge.legacy._instrument import LegacyInstrument
from daqbridge.legacy._measurement import ChannelInfo, Measurement, ParameterInfo
from daqbridge.legacy._serial_line import SerialLine, connected_line, naming_port_loss

UNITS = {"W": 1, "dBm": 2, "dB": 3, "REL": 4}
FILTERS = {"slow": 1, "medium": 2, "fast": 3}
_UNIT_BY_CODE = {v: k for k, v in UNITS.items()}
_FILTER_BY_CODE = {v: k for k, v in FILTERS.items()}
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_OUT_OF_RANGE = ("OVER", "UNDER", "SAT", "ERR")

# What the meter can display: at most 25 W (the top range R8, 25 mW, with the attenuator in,
# x1000) and at least 2.5e-13 W (R1's resolution, full scale / 10000); beyond that it answers
# OVER or UNDER. A number outside these bounds (an exponent that overflows a float, the 9.91E37
# "not a number" of SCPI instruments) did not come from a working 1830-C. dBm and dB are rounded
# outward by half of their last displayed digit (0.01).
_MAX_W, _MIN_STEP_W = 25.0, 2.5e-13
_DB_SPAN = 10 * math.log10(_MAX_W / _MIN_STEP_W)
READING_LIMITS: dict[str, tuple[float, float]] = {
    "W": (-_MAX_W, _MAX_W),
    "dBm": (10 * math.log10(_MIN_STEP_W / 1e-3) - 0.005, 10 * math.log10(_MAX_W / 1e-3) + 0.005),
    "dB": (-_DB_SPAN - 0.005, _DB_SPAN + 0.005),
    "REL": (-_MAX_W / _MIN_STEP_W, _MAX_W / _MIN_STEP_W),
}
"""Per unit, the (lowest, highest) number a ``D?`` reply can hold."""


def parse_reading(reply: str) -> tuple[float, str | None]:
    """(value, status) of a ``D?`` reply; status is ``OVER``/``UNDER``/... with value NaN."""
    text = reply.strip()
    upper = text.upper()
    for word in _OUT_OF_RANGE:
        if word in upper:
            return math.nan, word
    if not _NUMBER.match(text):
        raise ValueError(f"not a power reading: {reply!r}")
    return float(text), None


def _parse_int(reply: str) -> int:
    text = reply.strip()
    if not re.fullmatch(r"[+-]?\d+(?:\.0*)?", text):
        raise ValueError(f"not an integer: {reply!r}")
    return int(float(text))


class Newport1830COptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")

    wavelength_nm: int | None = pydantic.Field(
        None, ge=300, le=1100, description="wavelength_nm = 800 (300 to 1100), set at connect"
    )
    units: str = pydantic.Field("W", description='units = "W" (one of W, dBm, dB, REL)')
    range: int | None = pydantic.Field(
        None, ge=0, le=8, description="range = 0 (auto) or 1 to 8, set at connect"
    )
    filter: str | None = pydantic.Field(
        None, description='filter = "slow", "medium" or "fast", set at connect'
    )
    attenuator: bool | None = pydantic.Field(None, description="attenuator = true or false")
    timeout_s: float = pydantic.Field(1.0, gt=0, le=30, description="timeout_s = 1.0 (reply wait)")
    lease_timeout_s: float = pydantic.Field(
        5.0, gt=0, le=60, description="lease_timeout_s = 5.0 (wait for the shared port)"
    )

    @pydantic.field_validator("units")
    @classmethod
    def _units(cls, v: str) -> str:
        if v not in UNITS:
            raise ValueError(f"units must be one of {list(UNITS)}")
        return v

    @pydantic.field_validator("filter")
    @classmethod
    def _filter(cls, v: str | None) -> str | None:
        if v is not None and v not in FILTERS:
            raise ValueError(f"filter must be one of {list(FILTERS)}")
        return v


class Newport1830C(LegacyInstrument):
    """Channel ``power`` (W, or dBm/dB/REL after ``set units``); parameters ``wavelength``,
    ``range``, ``filter``, ``attenuator``, ``units``; execute ``zero`` and ``clear_status``."""

    def __init__(
        self,
        instrument_id: str,
        ports: Any,
        port: str,
        *,
        baud_rate: int = 9600,
        wavelength_nm: int | None = None,
        units: str = "W",
        range: int | None = None,  # noqa: A002 - the instrument's own word
        filter: str | None = None,  # noqa: A002
        attenuator: bool | None = None,
        timeout_s: float = 1.0,
        lease_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(instrument_id)
        self._pool = ports
        self.port_name = port
        self.baud_rate = baud_rate
        self.timeout_s = timeout_s
        self.lease_timeout_s = lease_timeout_s
        self._initial: list[tuple[str, Any]] = [("units", units)]
        for name, value in (
            ("wavelength", wavelength_nm),
            ("range", range),
            ("filter", filter),
            ("attenuator", attenuator),
        ):
            if value is not None:
                self._initial.append((name, value))
        self._units = units
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
            shared = self._pool.open(self.port_name, baudrate=self.baud_rate, rtscts=False)
        self._line = SerialLine(
            self.instrument_id,
            shared,
            write_terminator=b"\n",
            read_terminator=b"\n",
            timeout=self.timeout_s,
            lease_timeout=self.lease_timeout_s,
        )
        with self._line.exchange() as x:
            x.send("E0")  # echo off first: echoed commands have corrupted real readings
            reply = x.query("W?", skip_echo=True)
        try:
            nm = _parse_int(reply)
        except ValueError:
            nm = -1
        if not 300 <= nm <= 1100:
            raise ReplyError(
                "the device on this port does not answer W? like a 1830-C",
                reply=reply,
                instrument=self.instrument_id,
                resource=self.port_name,
                fix="check that the power meter is on this port at 9600 baud.",
            )
        for name, value in self._initial:
            result = self._set(name, value)
            if not result.ok:
                raise result.error or ReplyError(result.message, instrument=self.instrument_id)

    def disconnect(self) -> None:
        # The pool owns the port (other drivers may share it); forgetting it is all we do.
        self._line = None

    # --- data -----------------------------------------------------------------------------

    def poll(self) -> list[Measurement]:
        return [self._read_power()]

    def _read_power(self) -> Measurement:
        reply = self._link().query("D?", skip_echo=True)
        try:
            value, status = parse_reading(reply)
        except ValueError:
            raise ReplyError(
                "unparseable power reading",
                reply=reply,
                instrument=self.instrument_id,
                resource=self.port_name,
                fix="line noise or a second program on the port; the runtime retries.",
            ) from None
        low, high = READING_LIMITS[self._units]
        if status is None and not low <= value <= high:  # also refuses inf and NaN
            raise ReplyError(
                f"reply to 'D?' is not a reading the meter can give in {self._units}: outside "
                f"[{low:.6g}, {high:.6g}] (25 W on R8 with the attenuator in is its top; beyond "
                "its range it answers OVER or UNDER)",
                reply=reply,
                instrument=self.instrument_id,
                resource=self.port_name,
                fix="line noise, or another instrument or program on the port; the runtime "
                "retries. If it repeats, check that a 1830-C is on this port.",
            )
        meta: dict[str, Any] = {"status": status} if status else {}
        return Measurement.now(self.instrument_id, "power", value, self._units, **meta)

    def channels(self) -> dict[str, ChannelInfo]:
        return {"power": ChannelInfo("power", self._units, "number", doc="optical power")}

    def parameters(self) -> dict[str, ParameterInfo]:
        return {
            "wavelength": ParameterInfo("wavelength", "nm", limits=(300, 1100), dtype="integer"),
            "range": ParameterInfo(
                "range", "", limits=(0, 8), dtype="integer", doc="0 auto, 1 (2.5 nW) to 8"
            ),
            "filter": ParameterInfo("filter", "", choices=tuple(FILTERS), dtype="string"),
            "attenuator": ParameterInfo("attenuator", "", choices=(False, True), dtype="boolean"),
            "units": ParameterInfo("units", "", choices=tuple(UNITS), dtype="string"),
            "power": ParameterInfo("power", self._units, settable=False),
        }

    # --- commands -------------------------------------------------------------------------

    def handle(self, command: Command) -> CommandResult:
        try:
            if command.kind == "set":
                return self._set(command.name, command.value)
            if command.kind == "query":
                return self._query(command.name)
            return self._execute(command.name, command.args)
        except DaqbridgeError as exc:
            return CommandResult.failure(exc)

    def _set(self, name: str, value: Any) -> CommandResult:
        if name == "filter" and value in _FILTER_BY_CODE:
            value = _FILTER_BY_CODE[value]
        if name == "attenuator" and value in (0, 1):
            value = bool(value)
        value = self.check_value(name, value)
        if name == "wavelength":
            text, ask, expect = f"W{value:04d}", "W?", value
        elif name == "range":
            text, ask, expect = f"R{value}", "R?", value
        elif name == "filter":
            text, ask, expect = f"F{FILTERS[value]}", "F?", FILTERS[value]
        elif name == "attenuator":
            text, ask, expect = f"A{int(value)}", "A?", int(value)
        else:  # units
            text, ask, expect = f"U{UNITS[value]}", "U?", UNITS[value]
        with self._link().exchange() as x:  # set and read-back in one lease
            x.send(text)
            reply = x.query(ask, skip_echo=True)
        try:
            got = _parse_int(reply)
        except ValueError:
            raise ReplyError(
                f"read-back of {name} after {text} is not a number",
                reply=reply,
                instrument=self.instrument_id,
                resource=self.port_name,
            ) from None
        # R0 (auto) reads back the range in use, never 0.
        confirmed = 1 <= got <= 8 if (name == "range" and value == 0) else got == expect
        if not confirmed:
            return CommandResult.failure(
                InstrumentFault(
                    f"{name} not changed: sent {text}, the meter reports {reply}",
                    code=reply,
                    instrument=self.instrument_id,
                    resource=self.port_name,
                    fix="the meter may be in local mode or the value unsupported; check its panel.",
                )
            )
        if name == "units":
            self._units = value
        return CommandResult.success(value)

    def _query(self, name: str) -> CommandResult:
        if name == "power":
            m = self._read_power()
            return CommandResult.success(m.value, m.metadata.get("status", ""))
        asks = {
            "wavelength": "W?",
            "range": "R?",
            "filter": "F?",
            "attenuator": "A?",
            "units": "U?",
        }
        if name not in asks:
            return self._unknown("query", name)
        reply = self._link().query(asks[name], skip_echo=True)
        try:
            n = _parse_int(reply)
            value: Any = {
                "filter": lambda: _FILTER_BY_CODE[n],
                "attenuator": lambda: bool(n),
                "units": lambda: _UNIT_BY_CODE[n],
            }.get(name, lambda: n)()
        except (ValueError, KeyError):
            raise ReplyError(
                f"unexpected reply to {asks[name]}",
                reply=reply,
                instrument=self.instrument_id,
                resource=self.port_name,
            ) from None
        return CommandResult.success(value)

    def _execute(self, name: str, args: dict[str, Any]) -> CommandResult:
        if name == "zero":
            self._link().send("Z1" if args.get("attenuator") else "Z0")
            return CommandResult.success()
        if name == "clear_status":
            # The manual's clear-status command is C; the meter does not know "CS".
            self._link().send("C")
            return CommandResult.success()
        return self._unknown("execute", name)

    def _unknown(self, kind: str, name: str) -> CommandResult:
        known = {
            "query": "power, wavelength, range, filter, attenuator, units",
            "execute": "zero(attenuator=False), clear_status",
        }[kind]
        return CommandResult.failure(
            ValueRejected(
                f"cannot {kind} {name!r}",
                value=name,
                instrument=self.instrument_id,
                fix=f"{kind} one of: {known}.",
            )
        )

    def _link(self) -> SerialLine:
        return connected_line(self._line, self.instrument_id, self.port_name)


def _factory(entry: InstrumentConfig, ports: Any) -> Newport1830C:
    return Newport1830C(
        entry.name, ports, entry.port or "", baud_rate=entry.baud_rate or 9600, **entry.options
    )


register_driver(
    "newport_1830c",
    _factory,
    options=Newport1830COptions,
    default_baud_rate=9600,
    description="Newport 1830-C optical power meter (RS-232)",
)
