"""Newport 1830-C optical power meter as a bluesky detector.

Why it is built this way (wire facts from INSTRUMENTS.md, "Newport 1830-C"):

* The meter is not SCPI and has no ``*IDN?``. Identity is judged from the *shape* of two
  replies no other instrument on the lab's ports gives together: ``W?`` answers the calibration
  wavelength as 3-4 bare digits within :data:`WAVELENGTH_RANGE_NM` (``0800``), and ``U?`` (after
  ``U1``) answers the
  single digit ``1``. Silence or anything else is refused with :class:`IdentityMismatch`, the
  replies shown.
* ``E0`` and ``U1`` are forced at connect: echo left on by another program has corrupted real
  readings (the command comes back as its own line before the value), and W mode is the one
  with an unambiguous number format. Echo lines are still recognised and skipped on every
  query, so a meter that keeps echoing does not shift replies by one.
* Input is drained before every query and replies end in LF (a CR before it is stripped).
* ``D?`` in W mode answers short scientific notation (``+.75E-9``, ``5E-9``), parsed by an
  explicit pattern; ``OVER``/``UNDER``/``SAT``/``ERR`` replies raise :class:`InstrumentFault`
  naming the range and what to do, never a number.
* Set commands are silent; each one is read back (``W?``, ``R?``, ``F?``, ``A?``) so a setting
  the meter ignored is reported, not assumed.
* A saturated detector still answers ``D?`` with a number (the photodiode clips), so a number
  alone does not prove a valid reading. Each reading is ``C`` (clear the status byte), ``D?``,
  ``Q?`` in one lease, and the status byte (manual p. 38: 4 saturated, 8 over range, 32 busy
  auto-ranging or powering up) decides. ``C`` first, because those bits latch until cleared: a
  saturation before this reading must not condemn it. Cost: one more query per point, measured
  in docs/instruments.md.
* The wavelength always goes out as the manual's four digits (``W0633``): the meter does not
  take ``W633`` (see the simulator's docstring for the sources).
* All I/O runs on the meter's :class:`InstrumentWorker`; ``trigger()`` returns at once and its
  status finishes when the fresh reading is stored.
* The meter's facts (wavelength range, ranges, filters, units) are written once, below, and
  :class:`Newport1830cSettings` (the profile's ``[instruments.newport1830c]`` table) is declared
  from them. The constructor validates through that model and the module registers it
  (:func:`daqbridge.devices.register_driver`), so ``config check`` and start-up cannot disagree.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any, Literal

from ophyd import Component as Cpt
from ophyd import Device, Kind
from ophyd.status import Status
from ophyd.status import wait as status_wait
from pydantic import Field, ValidationInfo, field_validator

from daqbridge.devices._base import InstrumentSignal, InstrumentWorker, check_number
from daqbridge.devices._registry import (
    DriverSettings,
    for_native_stack,
    register_driver,
    settings_error,
    validate_settings,
)
from daqbridge.errors import (
    ConfigError,
    IdentityMismatch,
    InstrumentError,
    InstrumentFault,
    InstrumentTimeout,
    PortUnavailable,
    ReplyError,
    ValueRejected,
)
from daqbridge.transport import SerialLease, SerialPortPool, SharedSerialPort, default_pool

__all__ = [
    "ATTENUATOR_RANGE",
    "FAULT_WORDS",
    "FILTERS",
    "MAX_READING_W",
    "METER_UNITS",
    "NATIVE_UNITS",
    "POWER_REPLY",
    "RANGE_RANGE",
    "STATUS_REPLY",
    "STATUS_BUSY",
    "STATUS_OVER_RANGE",
    "STATUS_SATURATED",
    "UNITS_WATTS",
    "WAVELENGTH_RANGE_NM",
    "WAVELENGTH_REPLY",
    "Newport1830C",
    "Newport1830cSettings",
    "build",
]

log = logging.getLogger(__name__)

FILTERS: dict[str, int] = {"slow": 1, "medium": 2, "fast": 3}
"""Averaging filter names and their ``F`` codes."""

WAVELENGTH_RANGE_NM = (300, 1100)
"""Calibration wavelengths the meter takes (``W0300``-``W1100``) and answers to ``W?``."""
RANGE_RANGE = (0, 8)
"""``R0`` auto range, ``R1``-``R8`` fixed ranges."""
ATTENUATOR_RANGE = (0, 1)
"""``A0`` attenuator out, ``A1`` in."""
UNITS_WATTS = 1
"""``U1``: W, the one mode whose ``D?`` replies have an unambiguous number format."""
METER_UNITS = ("W", "dBm", "dB", "REL")
"""Every unit the meter reads in, ``U1``-``U4`` in this order; the legacy driver reads all four."""
NATIVE_UNITS = (METER_UNITS[UNITS_WATTS - 1],)
"""What this driver reads in: W only (``E0``/``U1`` are forced at connect, module docstring)."""

POWER_REPLY = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
WAVELENGTH_REPLY = re.compile(r"\d{3,4}")
FAULT_WORDS = ("OVER", "UNDER", "SAT", "ERR")
STATUS_REPLY = re.compile(r"\d{1,3}")
STATUS_SATURATED = 4
STATUS_OVER_RANGE = 8
STATUS_BUSY = 32
"""Bits of the ``Q?`` status byte that make a numeric reading invalid (manual p. 38)."""
_MAX_ECHO_LINES = 3
"""Lines skipped as echoes per query: the command itself plus commands written just before."""
MAX_READING_W = 25.0
"""The most the meter can display, either sign: the top range R8 (25 mW) with the attenuator in
(x1000). Above its range the meter answers OVER, so a larger number (an exponent that overflows a
float, the 9.91E37 "not a number" of SCPI instruments) did not come from a working 1830-C."""


class Newport1830cSettings(DriverSettings):
    """``[instruments.newport1830c]``: power meter settings applied when it connects."""

    wavelength_nm: int | None = Field(
        None,
        ge=WAVELENGTH_RANGE_NM[0],
        le=WAVELENGTH_RANGE_NM[1],
        description=f"Calibration wavelength ({WAVELENGTH_RANGE_NM[0]}-{WAVELENGTH_RANGE_NM[1]} "
        "nm); unset: keep.",
    )
    range: int | None = Field(
        None,
        ge=RANGE_RANGE[0],
        le=RANGE_RANGE[1],
        description=f"Range 1-{RANGE_RANGE[1]}, or {RANGE_RANGE[0]} for auto range; unset: keep.",
    )
    filter: Literal[tuple(FILTERS)] | None = Field(  # type: ignore[valid-type]
        None, description="Averaging filter (`F1`-`F3`); unset: keep."
    )
    units: Literal[METER_UNITS] = Field(  # type: ignore[valid-type]
        "W", description="Reading units; drivers parse W readings most robustly."
    )
    attenuator: bool | None = Field(None, description="Attenuator in (`A1`) or out; unset: keep.")

    @field_validator("units")
    @classmethod
    def _native_reads_watts(cls, units: str, info: ValidationInfo) -> str:
        # The legacy driver reads every unit; this one parses W replies only. Refused here, so a
        # profile that would fail at start-up fails `config check` instead, in the same words.
        if units not in NATIVE_UNITS and for_native_stack(info):
            raise settings_error(
                f"units {units!r} are not supported by the native 1830-C driver; it reads in W "
                "(U1), the only mode with an unambiguous number format",
                'set units = "W" (convert to dBm in analysis if needed), or run the meter on '
                'the legacy stack (stack = "legacy"), whose driver reads every unit',
            )
        return units


class _MeterSetting(InstrumentSignal):
    """A meter setting: validated here, written and read back on the meter's worker."""

    writable = True

    def __init__(self, *, setting: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.setting = setting

    def set(self, value: Any, **kwargs: Any) -> Status:
        meter: Newport1830C = self.parent
        command = meter._setting_command(self.setting, value)
        return meter._worker.status(lambda: meter._apply(self.setting, command), obj=self)

    def put(self, value: Any, *, force: bool = False, **kwargs: Any) -> None:
        if force:
            super().put(value, force=True, **kwargs)
            return
        status_wait(self.set(value), timeout=self.parent.timeout * 4 + 5)


class _PowerReading(InstrumentSignal):
    def put(self, value: Any, *, force: bool = False, **kwargs: Any) -> None:
        if not force:
            raise ValueRejected(
                f"{self.name} is measured by the meter and cannot be written.",
                instrument=self.parent.name if self.parent else None,
                value=value,
                fix="trigger() the meter to take a reading.",
            )
        super().put(value, force=True, **kwargs)

    def set(self, value: Any, **kwargs: Any) -> Status:
        self.put(value)  # raises
        return Status(done=True, success=True)  # pragma: no cover


class Newport1830C(Device):
    """Newport 1830-C power meter: Readable, Triggerable, Configurable.

    ``power`` (W, hinted) is refreshed by ``trigger()``; ``wavelength`` (nm), ``range``
    (0 = auto, 1-8), ``filter`` (1 slow, 2 medium, 3 fast) and ``attenuator`` (0/1) are
    configuration, settable with ``set()``/``bps.mv`` and read back from the meter.
    Constructor settings left at None keep what the meter has; they are the profile's
    ``[instruments.newport1830c]`` keys, checked by :class:`Newport1830cSettings` (a ConfigError
    naming the key and the fix, as ``config check`` prints it).
    """

    power = Cpt(_PowerReading, value=math.nan, units="W", kind=Kind.hinted)
    wavelength = Cpt(_MeterSetting, setting="W", value=0, units="nm", kind=Kind.config)
    range = Cpt(_MeterSetting, setting="R", value=0, kind=Kind.config)
    filter = Cpt(_MeterSetting, setting="F", value=0, kind=Kind.config)
    attenuator = Cpt(_MeterSetting, setting="A", value=0, kind=Kind.config)

    def __init__(
        self,
        port: SharedSerialPort,
        *,
        name: str,
        wavelength_nm: int | None = None,
        range: int | None = None,
        filter: str | None = None,
        attenuator: bool | None = None,
        units: str = "W",
        timeout: float = 1.0,
        lease_timeout: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__("", name=name, **kwargs)
        if not isinstance(port, SharedSerialPort):
            raise ConfigError(
                f"1830-C {name!r} needs a SharedSerialPort, got {type(port).__name__}.",
                key="port",
                fix="open it with SerialPortPool.open(url, baudrate=9600), or use "
                "Newport1830C.from_url(url, name=...).",
            )
        settings = validate_settings(
            Newport1830cSettings,
            {
                "wavelength_nm": wavelength_nm,
                "range": range,
                "filter": filter,
                "attenuator": attenuator,
                "units": units,
            },
            instrument=name,
        )
        self.port = port
        self.timeout = check_number(timeout, instrument=name, what="reply timeout (s)", low=0.001)
        self.lease_timeout = float(
            check_number(lease_timeout, instrument=name, what="lease timeout (s)", low=0.0)
        )
        self._initial: list[tuple[str, str]] = []
        for letter, value in (
            ("W", settings.wavelength_nm),
            ("R", settings.range),
            ("F", settings.filter),
            ("A", settings.attenuator),
        ):
            if value is not None:
                self._initial.append((letter, self._setting_command(letter, value)))
        for sig, cmd in (
            (self.power, "D?"),
            (self.wavelength, "W?"),
            (self.range, "R?"),
            (self.filter, "F?"),
            (self.attenuator, "A?"),
        ):
            sig._source = f"1830-C {port.url} {cmd}"
        self._worker = InstrumentWorker(name)
        self._generation: int | None = None
        self._connected = False
        self._sent: list[str] = []  # commands of the current transaction, to spot their echoes
        self._auto_range = ("R", "R0") in self._initial

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        name: str,
        pool: SerialPortPool | None = None,
        baudrate: int = 9600,
        connect: bool = True,
        **kwargs: Any,
    ) -> Newport1830C:
        """Interactive use: open ``url`` in ``pool`` (the process pool by default) and connect."""
        port = (pool or default_pool()).open(url, baudrate=baudrate)
        meter = cls(port, name=name, **kwargs)
        if connect:
            meter.connect()
        return meter

    # --- validation (synchronous, before any byte) ------------------------------------------

    def _setting_command(self, letter: str, value: Any) -> str:
        name = self.name
        if letter == "W":
            low, high = WAVELENGTH_RANGE_NM
            nm = check_number(
                value, instrument=name, what="wavelength (nm)", low=low, high=high, integer=True
            )
            return f"W{nm:04d}"
        if letter == "R":
            low, high = RANGE_RANGE
            r = check_number(
                value,
                instrument=name,
                what="range (0 = auto, 1-8)",
                low=low,
                high=high,
                integer=True,
            )
            return f"R{r}"
        if letter == "F":
            if isinstance(value, str):
                code = FILTERS.get(value.strip().lower())
                if code is None:
                    raise ValueRejected(
                        f"filter {value!r} is not one of {', '.join(FILTERS)}.",
                        instrument=name,
                        value=value,
                        fix="use 'slow', 'medium', 'fast' or 1, 2, 3.",
                    )
                return f"F{code}"
            f = check_number(
                value,
                instrument=name,
                what="filter (1 slow, 2 medium, 3 fast)",
                low=1,
                high=3,
                integer=True,
            )
            return f"F{f}"
        if letter == "A":
            if isinstance(value, bool):
                return f"A{int(value)}"
            a = check_number(
                value,
                instrument=name,
                what="attenuator (0 out, 1 in)",
                low=ATTENUATOR_RANGE[0],
                high=ATTENUATOR_RANGE[1],
                integer=True,
            )
            return f"A{a}"
        raise ValueError(letter)  # pragma: no cover - internal

    # --- connection -------------------------------------------------------------------------

    def connect(self, timeout: float | None = None) -> None:
        """Echo off, W units, identity by reply shape, profile settings, read back."""
        self._worker.call(self._connect, timeout=timeout or self.lease_timeout + 20 * self.timeout)
        self._connected = True

    @property
    def connected(self) -> bool:
        return self._connected

    def wait_for_connection(self, all_signals: bool = False, timeout: float = 10.0) -> None:
        if not self._connected:
            self.connect(timeout)

    def _connect(self) -> None:
        with self._transaction(verify=False) as lease:
            self._verify(lease)
            for _letter, command in self._initial:
                self._write(lease, command)
            self._read_settings(lease)

    def _verify(self, lease: SerialLease) -> None:
        self._write(lease, "E0")
        self._write(lease, f"U{UNITS_WATTS}")
        answers = []
        try:
            w = self._query(lease, "W?")
            answers.append(f"W? -> {w!r}")
            u = self._query(lease, "U?")
            answers.append(f"U? -> {u!r}")
        except InstrumentTimeout:
            answers.append("then nothing")
            w = u = None
        low, high = WAVELENGTH_RANGE_NM
        if not (
            w is not None
            and WAVELENGTH_REPLY.fullmatch(w)
            and low <= int(w) <= high
            and u == str(UNITS_WATTS)
        ):
            raise IdentityMismatch(
                "no Newport 1830-C answered: after E0 and U1 it must reply to W? with a "
                f"wavelength of 3-4 digits in {low}-{high} and to U? with 1; got "
                f"{'; '.join(answers) or 'nothing'}.",
                instrument=self.name,
                resource=self.port.url,
                fix="check the port path, that the meter is on, 9600 baud and no RTS/CTS flow "
                "control (it breaks the 1830-C's link).",
            )
        self._generation = self.port.generation

    def _read_settings(self, lease: SerialLease) -> None:
        # Every answer first, then the signals: a garbled reply half-way must not leave a mix
        # of fresh and stale settings for the next reading to record.
        w, r, f, a = (self._query_int(lease, q) for q in ("W?", "R?", "F?", "A?"))
        self.wavelength.update(w)
        # After R0, R? names the range in use; the setting stays "auto" (0).
        self.range.update(0 if self._auto_range else r)
        self.filter.update(f)
        self.attenuator.update(a)

    def refresh_configuration(self, timeout: float | None = None) -> None:
        """Ask the meter for its settings now (``W?``, ``R?``, ``F?``, ``A?`` in one lease).

        Someone may have turned a knob on the front panel since connect or the last set, and a
        recorded setting must be one the meter reported. Queries only: nothing is changed.
        Blocking (the baseline reads it from its own thread; interactive use), never inside a
        plan. Raises the meter's usual ReplyError / InstrumentTimeout.
        """
        if not self._connected:
            raise InstrumentError(
                "cannot read the settings: the meter is not connected.",
                instrument=self.name,
                resource=self.port.url,
                fix="call connect() first (the runtime does it at start-up).",
            )
        self._worker.call(
            self._refresh_settings,
            timeout=timeout or self.lease_timeout + 20 * self.timeout,
            resource=self.port.url,
        )

    def _refresh_settings(self) -> None:
        with self._transaction() as lease:
            self._read_settings(lease)

    # --- transactions -----------------------------------------------------------------------

    class _Transaction:
        __slots__ = ("meter", "verify", "_lease_cm", "lease")

        def __init__(self, meter: Newport1830C, verify: bool) -> None:
            self.meter = meter
            self.verify = verify

        def __enter__(self) -> SerialLease:
            meter = self.meter
            self._lease_cm = meter.port.lease(meter.name, meter.lease_timeout)
            lease = self.lease = self._lease_cm.__enter__()
            try:
                meter._sent.clear()
                if self.verify and meter._connected and meter._generation != meter.port.generation:
                    log.info(
                        "1830-C %s: port %s was reopened; re-verifying", meter.name, meter.port.url
                    )
                    lease.drain()
                    meter._verify(lease)
            except BaseException as exc:
                self._lease_cm.__exit__(type(exc), exc, exc.__traceback__)
                raise meter._named(exc) from None
            return lease

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            self._lease_cm.__exit__(exc_type, exc, tb)
            if exc is not None and isinstance(exc, PortUnavailable):
                raise self.meter._named(exc) from None

    def _transaction(self, *, verify: bool = True) -> Newport1830C._Transaction:
        return Newport1830C._Transaction(self, verify)

    def _named(self, exc: BaseException) -> BaseException:
        if isinstance(exc, PortUnavailable) and exc.instrument is None:
            return PortUnavailable(
                self.port.url, exc.reason, pid=exc.pid, fix=exc.fix, instrument=self.name
            )
        return exc

    def _write(self, lease: SerialLease, command: str) -> None:
        lease.write(command.encode("ascii") + b"\n")
        self._sent.append(command)

    def _query(self, lease: SerialLease, command: str) -> str:
        """Drain, send, and return the reply line, skipping echoes of what was just sent."""
        lease.drain()
        lease.write(command.encode("ascii") + b"\n")
        sent = self._sent
        sent.append(command)
        for _ in range(_MAX_ECHO_LINES + 1):
            try:
                raw = lease.read_until(b"\n", self.timeout)
            except InstrumentTimeout as exc:
                raise InstrumentTimeout(
                    f"no reply to {command!r} within {self.timeout:.3f} s",
                    reply=exc.reply,
                    instrument=self.name,
                    resource=self.port.url,
                    fix="check that the meter is on, 9600 baud, no RTS/CTS; a reply lost on the "
                    "line is retried by the next reading.",
                ) from None
            line = raw.decode("ascii", "replace").strip()
            if line in sent:
                continue  # an echo (E1 left on, or the echo of our own E0)
            return line
        raise ReplyError(
            f"only echoes came back for {command!r}",
            reply=line,
            instrument=self.name,
            resource=self.port.url,
            fix="the meter echoes every command: power-cycle it or send E0.",
        )

    def _query_int(self, lease: SerialLease, command: str) -> int:
        reply = self._query(lease, command)
        if reply.isdigit():
            return int(reply)
        raise ReplyError(
            f"reply to {command!r} is not a whole number",
            reply=reply,
            instrument=self.name,
            resource=self.port.url,
            fix="line noise or another program on the port; the next operation drains the line.",
        )

    # --- settings ---------------------------------------------------------------------------

    def _apply(self, letter: str, command: str) -> None:
        sig = {"W": self.wavelength, "R": self.range, "F": self.filter, "A": self.attenuator}[
            letter
        ]
        wanted = int(command[1:])
        with self._transaction() as lease:
            self._write(lease, command)
            got = self._query_int(lease, f"{letter}?")
        if letter == "R":
            self._auto_range = wanted == 0
            if wanted == 0:
                sig.update(0)  # auto range: R? reports the range in use, not "auto"
                return
        if got != wanted:
            raise InstrumentFault(
                f"the meter did not take {command!r}: {letter}? reads {got} afterwards.",
                code=got,
                instrument=self.name,
                resource=self.port.url,
                fix="check the front panel (local mode?) and that the value is supported by "
                "this detector head.",
            )
        sig.update(got)

    # --- detector ---------------------------------------------------------------------------

    def trigger(self) -> Status:
        """Read ``D?`` on the worker; the status finishes when ``power`` holds the new value."""
        return self._worker.status(self._read_power, obj=self)

    def _read_power(self) -> None:
        with self._transaction() as lease:
            self._write(lease, "C")
            reply = self._query(lease, "D?")
            status = self._query(lease, "Q?")
        watts = self._parse_power(reply)
        self._check_status(status, reply)
        self.power.update(watts)

    def _check_status(self, status: str, reply: str) -> None:
        if not (STATUS_REPLY.fullmatch(status) and int(status) <= 255):
            raise ReplyError(
                "reply to 'Q?' is not a status byte (0-255)",
                reply=status,
                instrument=self.name,
                resource=self.port.url,
                fix="line noise or another program on the port; the next reading drains the line.",
            )
        bits = int(status)  # the manual prints both "04" and "8": read a number, not text
        if bits & STATUS_SATURATED:
            raise self._range_fault("SAT", reply, status)
        if bits & STATUS_OVER_RANGE:
            raise self._range_fault("OVER", reply, status)
        if bits & STATUS_BUSY:
            raise InstrumentFault(
                f"power meter busy auto-ranging or powering up (reply {reply!r}, Q? {status!r})",
                code="BUSY",
                instrument=self.name,
                resource=self.port.url,
                fix="take the reading again once the meter has settled; on a fixed range "
                "(range 1-8) it does not auto-range.",
            )

    def _parse_power(self, reply: str) -> float:
        upper = reply.upper()
        for word in FAULT_WORDS:
            if word in upper:
                raise self._range_fault(word, reply)
        if POWER_REPLY.fullmatch(reply):
            watts = float(reply)
            if math.isfinite(watts) and abs(watts) <= MAX_READING_W:
                return watts
            raise ReplyError(
                f"reply to 'D?' is not a reading the meter can give: beyond +/-{MAX_READING_W:g} W "
                "(R8 with the attenuator in; above its range the meter answers OVER)",
                reply=reply,
                instrument=self.name,
                resource=self.port.url,
                fix="line noise, or another instrument or program on the port; the next reading "
                "drains the line. If it repeats, check that a 1830-C is on this port.",
            )
        raise ReplyError(
            "reply to 'D?' is not a power reading",
            reply=reply,
            instrument=self.name,
            resource=self.port.url,
            fix="line noise or another program on the port; the next reading drains the line.",
        )

    def _range_fault(self, word: str, reply: str, status: str | None = None) -> InstrumentFault:
        r = self.range.get()
        where = "on auto range" if r == 0 else f"on R{r}"
        if word == "SAT":
            what = "saturated"
            fix = (
                "the light saturates the detector: put the attenuator in (attenuator=1) or "
                "reduce the power"
            )
        elif word == "OVER":
            what = "over range"
            fix = (
                "choose a higher range or enable auto range (range 0)"
                if r != 0
                else "the light exceeds the highest range: put the attenuator in (attenuator=1) "
                "or reduce the power"
            )
        elif word == "UNDER":
            what = "under range"
            fix = (
                "choose a lower range or enable auto range (range 0)"
                if r != 0
                else "the signal is below the lowest range: check the beam and the detector"
            )
        else:
            what = "in error"
            fix = "clear the meter's status (front panel) and check the detector head"
        return InstrumentFault(
            f"power meter {what} {where} (reply {reply!r}"
            + (f", Q? {status!r})" if status is not None else ")"),
            code=word,
            instrument=self.name,
            resource=self.port.url,
            fix=fix + ".",
        )

    def stop(self, *, success: bool = False) -> None:
        """Nothing moves and a reading takes milliseconds: nothing to stop."""

    # --- shutdown ---------------------------------------------------------------------------

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        self._connected = False

    def destroy(self) -> None:
        self.close()
        super().destroy()


def build(
    port: SharedSerialPort, *, name: str, settings: Newport1830cSettings, timeout: float
) -> Newport1830C:
    """The meter of one profile entry, not connected (the runtime connects it)."""
    return Newport1830C(port, name=name, timeout=timeout, **settings.model_dump())


register_driver(
    "newport1830c",
    settings=Newport1830cSettings,
    build=build,
    simulator="newport1830c",
    legacy_twin="newport_1830c",
)
