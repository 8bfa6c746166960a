"""Newport 1830-C optical power meter as a native ophyd-async device.

Why it is built this way (wire facts from INSTRUMENTS.md, "Newport 1830-C";
tests/transcripts/newport1830c.yaml pins them byte for byte):

* Each value is a signal declared from its wire commands (:mod:`daqbridge.devices.core`): every
  read asks the meter inside one lease, every set is read back in the same lease, and nothing is
  stored that the meter did not say. The device owns no thread: reads and sets are coroutines on
  the RunEngine's loop, the port's lease serialises the bytes (ADR 0007).
* The meter is not SCPI and has no ``*IDN?``. Connect, one lease: ``E0``, ``U1`` (echo left on
  by another program has corrupted real readings; W is the one unambiguous number format),
  identity by reply shape (``W?`` -> 3-4 digits in :data:`WAVELENGTH_RANGE_NM`, ``U?`` -> ``1``),
  the profile's settings, then ``W?``, ``R?``, ``F?``, ``A?``: a setting the meter ignored fails
  connect, and the answers seed the signals' last readings. Silence or anything else is refused
  with :class:`IdentityMismatch`, the replies shown. Echo lines are skipped on every query.
* A reading is ``C``, ``D?``, ``Q?`` in one lease. A saturated photodiode still answers a number,
  so the status byte decides (manual p. 38: 4 saturated, 8 over range, 32 busy auto-ranging or
  powering up); ``C`` first because the bits latch. ``OVER``/``UNDER``/``SAT``/``ERR`` and
  numbers beyond :data:`MAX_READING_W` raise, naming the range and what to do, never a number.
  ``read()`` takes the reading; ``trigger()`` has nothing to start (it is there so plans and the
  IOC treat the meter as the detector it is).
* The wavelength always goes out as the manual's four digits (``W0633``): the meter does not take
  ``W633`` (see the simulator's docstring for the sources).
* ``range`` reads what ``R?`` answers. After ``R0`` (auto) that is the range in use: the meter has
  no way to report "auto" on the wire, and a recorded value must be what the instrument replied.
  ``R0`` is confirmed by ``R?`` naming a range 1-8.
* It records the data keys, kinds, dtypes, units and descriptor ``source`` of the ophyd v1 meter
  it replaced, key for key, so the catalog cannot tell which stack or generation recorded a run.
* The meter's facts (wavelength range, ranges, filters, units) are written once, below, and
  :class:`Newport1830cSettings` (the profile's ``[instruments.newport1830c]`` table) is declared
  from them. The constructor validates through that model and the module registers it
  (:func:`daqbridge.devices.register_driver`), so ``config check`` and start-up cannot disagree.
* Synchronous code (the baseline's thread, the IOC, a prompt) reaches it through
  :func:`daqbridge.devices.core.call_sync`, which runs the coroutines on the device's loop.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar, Literal

from bluesky.protocols import Reading
from ophyd_async.core import StandardReadableFormat as Format
from pydantic import Field, ValidationInfo, field_validator

from daqbridge.devices._registry import (
    DriverSettings,
    ProfileEntry,
    TwinField,
    TwinView,
    for_native_stack,
    register_driver,
    settings_error,
    validate_settings,
)
from daqbridge.devices.core import (
    Exchange,
    LeasedPort,
    WireCommand,
    WireDevice,
    WireSignalBackend,
    wire_signal_r,
    wire_signal_rw,
)
from daqbridge.errors import IdentityMismatch, InstrumentFault, InstrumentTimeout

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


_FILTER_CODES = tuple(sorted(FILTERS.values()))


def _whole(reply: str) -> int:
    if not reply.isdigit():
        raise ValueError(reply)
    return int(reply)


class Newport1830C(WireDevice):
    """Newport 1830-C power meter: ``power`` (W, hinted), settings as configuration.

    Readable and Configurable, not Triggerable: every ``read()`` asks the meter, so there is
    nothing to start, and bluesky then skips a point's trigger and wait (:meth:`read`).

    ``wavelength`` (nm), ``range`` (0 = auto, 1-8), ``filter`` (1 slow, 2 medium, 3 fast; names
    accepted) and ``attenuator`` (0/1) are settable with ``set()``/``bps.mv``; constructor
    settings left at None keep what the meter has. ``port`` is any :class:`LeasedPort`.
    """

    model: ClassVar[str] = "1830-C"

    def __init__(
        self,
        port: LeasedPort,
        *,
        name: str = "",
        wavelength_nm: int | None = None,
        range: int | None = None,  # noqa: A002 - the meter's own word, as in the v1 device
        filter: int | str | None = None,  # noqa: A002
        attenuator: bool | int | None = None,
        units: str = "W",
        timeout: float = 1.0,
        lease_timeout: float = 5.0,
    ) -> None:
        # The driver's settings model (the profile's [instruments.newport1830c] table): the
        # constructor refuses what `config check` refuses, in the same words.
        validate_settings(
            Newport1830cSettings,
            {
                "wavelength_nm": wavelength_nm,
                "range": range,
                "filter": filter,
                "attenuator": attenuator,
                "units": units,
            },
            instrument=name,
            resource=getattr(port, "url", None),
        )
        self._auto_range = False
        with self.add_children_as_readables(Format.HINTED_UNCACHED_SIGNAL):
            # Uncached: a staged power signal would otherwise report the last reading again.
            self.power = wire_signal_r(
                float, self, WireCommand(query="D?", read=self._read_power, units="W")
            )
        # One block per setting: a block registers its signals as a set (no order), and the
        # recorded keys must come in the v1 meter's order (object_keys are compared as lists).
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.wavelength = wire_signal_rw(
                int,
                self,
                WireCommand(
                    query="W?",
                    parse=self._parse_wavelength,
                    set_command="W{:04d}",
                    validate=self._check_wavelength,
                    units="nm",
                    what="a wavelength of 3-4 digits",
                ),
            )
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.range = wire_signal_rw(
                int,
                self,
                WireCommand(
                    query="R?",
                    parse=_whole,
                    set_command="R{}",
                    validate=self._check_range,
                    confirmed=self._range_confirmed,
                    what="a whole number",
                ),
            )
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.filter = wire_signal_rw(
                int,
                self,
                WireCommand(
                    query="F?",
                    parse=_whole,
                    set_command="F{}",
                    validate=self._check_filter,
                    what="a whole number",
                ),
            )
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.attenuator = wire_signal_rw(
                int,
                self,
                WireCommand(
                    query="A?",
                    parse=_whole,
                    set_command="A{}",
                    validate=self._check_attenuator,
                    what="a whole number",
                ),
            )
        super().__init__(port, name=name, timeout=timeout, lease_timeout=lease_timeout)
        # Validated now, before any port traffic.
        self._initial: list[tuple[WireSignalBackend, Any, str]] = []
        for signal, value in (
            (self.wavelength, wavelength_nm),
            (self.range, range),
            (self.filter, filter),
            (self.attenuator, attenuator),
        ):
            if value is not None:
                backend = self._backend(signal)
                wanted, command = backend.check(value)
                self._initial.append((backend, wanted, command))

    @staticmethod
    def _backend(signal: Any) -> WireSignalBackend:
        return signal._connector.backend  # the wire backend, before any mock connect

    # --- validation (synchronous, before any byte) ----------------------------------------------

    def _check_wavelength(self, value: Any) -> int:
        low, high = WAVELENGTH_RANGE_NM
        return int(
            self.check_number(value, what="wavelength (nm)", low=low, high=high, integer=True)
        )

    def _check_range(self, value: Any) -> int:
        low, high = RANGE_RANGE
        return int(
            self.check_number(value, what="range (0 = auto, 1-8)", low=low, high=high, integer=True)
        )

    def _check_filter(self, value: Any) -> int:
        if isinstance(value, str):
            code = FILTERS.get(value.strip().lower())
            if code is None:
                raise self.rejected(
                    f"filter {value!r} is not one of {', '.join(FILTERS)}.",
                    value,
                    fix="use 'slow', 'medium', 'fast' or 1, 2, 3.",
                )
            return code
        return int(
            self.check_number(
                value,
                what="filter (1 slow, 2 medium, 3 fast)",
                low=_FILTER_CODES[0],
                high=_FILTER_CODES[-1],
                integer=True,
            )
        )

    def _check_attenuator(self, value: Any) -> int:
        if isinstance(value, bool):
            return int(value)
        low, high = ATTENUATOR_RANGE
        return int(
            self.check_number(
                value, what="attenuator (0 out, 1 in)", low=low, high=high, integer=True
            )
        )

    def _range_confirmed(self, wanted: int, got: int) -> bool:
        # R? after R0 names the range auto-ranging picked; "auto" itself is not on the wire.
        ok = got == wanted or (wanted == 0 and RANGE_RANGE[0] < got <= RANGE_RANGE[1])
        if ok:
            self._auto_range = wanted == 0
        return ok

    @staticmethod
    def _parse_wavelength(reply: str) -> int:
        low, high = WAVELENGTH_RANGE_NM
        if WAVELENGTH_REPLY.fullmatch(reply) and low <= int(reply) <= high:
            return int(reply)
        raise ValueError(reply)

    # --- connection -----------------------------------------------------------------------------

    async def identify(self, x: Exchange) -> None:
        await x.write("E0")
        await x.write(f"U{UNITS_WATTS}")
        answers = []
        w = u = None
        try:
            w = await x.query("W?")
            answers.append(f"W? -> {w!r}")
            u = await x.query("U?")
            answers.append(f"U? -> {u!r}")
        except InstrumentTimeout:
            answers.append("then nothing")
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
                f"{'; '.join(answers)}.",
                instrument=self.name,
                resource=self.port.url,
                fix="check the port path, that the meter is on, 9600 baud and no RTS/CTS flow "
                "control (it breaks the 1830-C's link).",
            )

    async def prepare(self, x: Exchange) -> None:
        """Profile settings, then every setting read back; the answers become the readings."""
        for _backend, _wanted, command in self._initial:
            await x.write(command)
        backends = [
            self._backend(s) for s in (self.wavelength, self.range, self.filter, self.attenuator)
        ]
        # Every answer first, then the stores: a garbled reply half-way must not leave a mix.
        values = [await b.read_in(x) for b in backends]
        for backend, wanted, command in self._initial:
            got = values[backends.index(backend)]
            if not backend.command.confirmed(wanted, got):
                raise InstrumentFault(
                    f"the meter did not take {command!r} at connect: "
                    f"{backend.command.query} reads {got} afterwards.",
                    code=got,
                    instrument=self.name,
                    resource=self.port.url,
                    fix="check the front panel (local mode?) and that the value is supported by "
                    "this detector head.",
                )
        for backend, value in zip(backends, values, strict=True):
            backend.store(value)

    async def refresh_configuration(self) -> None:
        """Ask the meter for its settings now (``W?``, ``R?``, ``F?``, ``A?`` in one lease).

        Someone may have turned a knob on the front panel since connect or the last set, and a
        recorded setting must be one the meter reported: the answers become the signals' latest
        readings (and so what a staged or monitored signal reports). Queries only: nothing is
        changed. The baseline calls it before each reading of the meter.
        """
        await self.read_together([self.wavelength, self.range, self.filter, self.attenuator])

    async def read(self) -> dict[str, Reading]:
        """The power (``C``, ``D?``, ``Q?``), one lease and no task (:meth:`read_together`).

        The meter measures all the time and has no acquisition to arm, so the device has no
        ``trigger()``: a triggered reading kept until ``read()`` would be a stored value the
        next read could pass off as fresh, and a no-op trigger costs every point a ``trigger``
        and a ``wait`` message in the RunEngine (about a third of a count's time per point
        over the zero-latency simulator; docs/performance.md).
        """
        return await self.read_together([self.power])

    # --- the reading ----------------------------------------------------------------------------

    async def _read_power(self, x: Exchange) -> float:
        await x.write("C")
        reply = await x.query("D?")
        status = await x.query("Q?")
        upper = reply.upper()
        for word in FAULT_WORDS:
            if word in upper:
                raise self._range_fault(word, reply)
        if not POWER_REPLY.fullmatch(reply):
            raise x.reply_error("D?", reply, "a power reading")
        watts = float(reply)
        if not (math.isfinite(watts) and abs(watts) <= MAX_READING_W):
            raise x.reply_error(
                "D?",
                reply,
                f"a reading the meter can give: beyond +/-{MAX_READING_W:g} W (R8 with the "
                "attenuator in; above its range the meter answers OVER)",
                fix="line noise, or another instrument or program on the port; the next reading "
                "drains the line. If it repeats, check that a 1830-C is on this port.",
            )
        if not (STATUS_REPLY.fullmatch(status) and int(status) <= 255):
            raise x.reply_error("Q?", status, "a status byte (0-255)")
        bits = int(status)  # the manual prints both "04" and "8": a number, not text
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
        return watts

    def _range_fault(self, word: str, reply: str, status: str | None = None) -> InstrumentFault:
        # The range named is the meter's last answer to R? (connect, a set, a configuration
        # read): asking again here would add a query to the transcript of every fault.
        last = self._backend(self.range)._reading
        r = last["value"] if last is not None else None
        auto = self._auto_range
        where = "on auto range" if auto else (f"on R{r}" if r is not None else "on its range")
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
                if not auto
                else "the light exceeds the highest range: put the attenuator in (attenuator=1) "
                "or reduce the power"
            )
        elif word == "UNDER":
            what = "under range"
            fix = (
                "choose a lower range or enable auto range (range 0)"
                if not auto
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


def build(
    port: LeasedPort, *, name: str, settings: Newport1830cSettings, timeout: float
) -> Newport1830C:
    """The meter of one profile entry, not connected (the runtime connects it on its loop)."""
    return Newport1830C(port, name=name, timeout=timeout, **settings.model_dump())


def twin_fields(settings: Newport1830cSettings, part: str | None) -> dict[str, TwinField]:
    """The legacy meter under this driver's names: its own codes (F1-F3, A0/A1) and readings
    in W only (``units`` is the profile's, not a reading), as this driver records them."""
    return {
        "power": TwinField("power", "hinted"),
        "wavelength": TwinField("wavelength", "config", describe_limits=False),
        "range": TwinField("range", "config", describe_limits=False),
        "filter": TwinField("filter", "config", dtype="integer", codes=FILTERS),
        "attenuator": TwinField("attenuator", "config", dtype="integer"),
    }


register_driver(
    "newport1830c",
    settings=Newport1830cSettings,
    build=build,
    simulator="newport1830c",
    legacy_twin="newport_1830c",
    twin_view=TwinView(fields=twin_fields),
    entry=ProfileEntry(
        "Newport 1830-C optical power meter.",
        table_description="Meter settings.",
        table_required=False,
        refused_flow_controls={"rtscts": "RTS/CTS flow control breaks the 1830-C's serial link"},
    ),
)
