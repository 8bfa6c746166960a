"""Spectra-Physics MaiTai Ti:Sapphire laser as a native ophyd-async device.

The laser's facts (tuning range, reply terminators, reply formats) are written once, below;
:class:`MaiTaiSettings` (the profile's ``[instruments.maitai]`` table) is declared from them, the
constructor validates through it, and the module registers the driver
(:func:`daqbridge.devices.register_driver`), so ``config check`` and start-up cannot disagree.
The data keys, kinds, units, limits and descriptor ``source`` are those of the v1 laser this
device replaced (ADR 0007), so catalogs written before read the same.

Wire behaviour (INSTRUMENTS.md, "Spectra-Physics MaiTai"; tests/transcripts/maitai.yaml):

* Connect is the transcript's ``connect`` section, in one lease: ``*IDN?`` must name a MaiTai,
  then ``WAVELENGTH:MIN?``/``MAX?`` (the unit's own range, intersected with the profile's
  ``wavelength_limits``), the settings (``READ:PCTWARMEDUP?``, ``*STB?``, ``PLASER:POWER?``,
  ``READ:HUM?``), ``SHUTTER?``, ``READ:POWER?``, ``WAVELENGTH?`` (where the laser is going) and
  ``READ:WAV?`` (where it is). Queries only: connect changes nothing on the laser.
* Set commands are silent and the laser wants about 50 ms after a write before it listens
  again (``write_delay``): a set goes out alone, and the next command, in the same lease or the
  next one, waits out the quiet period. The core's habit of sending a set together with the
  next query in one write would break that rule, so this driver flushes every set itself.
* Replies take up to 2 s (``timeout`` defaults to 3 s); the reply terminator is the profile's
  (LF, CR or CR LF, the same bytes going out). A unit that ends its replies with another one
  (firmware differs) is followed: the first reply that times out but sits complete in the input
  ending in CR or LF is taken, and that terminator frames every exchange from then on, with a
  warning naming the profile setting to change (the laser reads CR, LF or CR LF alike).
* The wavelength is a positioner: ``WAVELENGTH <nm>`` and, in the same lease, ``WAVELENGTH?``
  (a target the laser refused fails at once, with what ``SYSTEM:ERR?`` says); then ``READ:WAV?``
  polls in short leases until ``settle_reads`` readings in a row are the same and within
  ``tolerance_nm``. The laser has no stop command: stopping a tune asks where it is and sends
  that as the new target.
* The shutter and emission can be silently ignored (front panel, interlock, warm-up): every
  change is followed by read-backs (``SHUTTER?``, ``*STB?`` bit 0) until it shows or
  ``shutter_timeout`` passes. ``ON`` is refused before any byte of it while the warm-up is
  below 100 %.
* Emission is what ``*STB?`` bit 0 says, never the last ``ON``/``OFF`` sent (the key switch,
  the front panel and the watchdog turn it off too).
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal

from event_model import DataKey
from ophyd_async.core import SignalR, SignalRW, StandardReadable
from ophyd_async.core import StandardReadableFormat as Format
from pydantic import Field, field_validator

from daqbridge.devices._base import positive_setting
from daqbridge.devices._registry import (
    DriverSettings,
    EntryDefault,
    ProfileEntry,
    TwinField,
    TwinView,
    register_driver,
    settings_error,
    validate_settings,
)
from daqbridge.devices.core import (
    Exchange,
    LeasedPort,
    WireCommand,
    WireDevice,
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
    IdentityMismatch,
    InstrumentFault,
    InstrumentTimeout,
    ValueRejected,
)

__all__ = [
    "REPLY_TERMINATORS",
    "TUNING_RANGE_NM",
    "MaiTaiDiagnostics",
    "MaiTaiLaser",
    "MaiTaiSettings",
    "MaiTaiWavelength",
    "build",
]

log = logging.getLogger(__name__)

TUNING_RANGE_NM = (690.0, 1040.0)
"""What the laser itself accepts; profiles may only narrow it."""

REPLY_TERMINATORS = {"LF": b"\n", "CR": b"\r", "CRLF": b"\r\n"}
"""The terminators units end their replies with (varies by firmware), by profile name."""
_TERMINATOR_NAMES = {b"\r": "CR", b"\n": "LF"}

_IDENTITY_MARK = "maitai"
_POLL_BACKOFF = (0.0, 0.005, 0.01, 0.02)
"""First polls after a tune command come quickly (a short tune is done in milliseconds on a fast
unit), then the interval grows to ``poll_interval``."""

_QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z%]*)$")
_INTEGER = re.compile(r"^[+]?\d+$")
_DIODE_READING = re.compile(r"^([+-]?\d+(?:\.\d*)?)\s*([AC])([12])$")
"""``21.0A1`` / ``26.0C2``: the diode's number follows the unit (a Mai Tai BB)."""
_SHG_STATUS = re.compile(r"^(-?\d+)S$")
_ERROR_CODE = re.compile(r"^([+-]?\d+)e?$")
"""``PLASER:ERRCODE?``: ``0``; some HP firmware is reported to append an ``e``."""
_SYSTEM_ERROR = re.compile(r"^([+-]?\d+)\s*,?\s*(.*)$")
_PUMP_MODES = ("POW", "PPOW", "PCUR")
_ERROR_QUEUE_DEPTH = 16


def _format_nm(nm: float) -> str:
    # Whole numbers go out as the manual writes them ("WAVELENGTH 820"); a tenth is kept otherwise.
    return str(int(round(nm))) if abs(nm - round(nm)) < 1e-9 else f"{nm:.1f}"


ARRIVAL_TOLERANCE_NM = 0.5
"""How far the reported wavelength may be from a tune's target for the tune to count as arrived
(the laser reports whole nm): the device's default, and its legacy twin's tolerance."""


class MaiTaiSettings(DriverSettings):
    """``[instruments.maitai]``: laser limits and the unit's reply terminator."""

    wavelength_limits: list[float] = Field(
        list(TUNING_RANGE_NM),
        min_length=2,
        max_length=2,
        description=f"[low, high] nm a plan may tune to, inside the laser's "
        f"{TUNING_RANGE_NM[0]:g}-{TUNING_RANGE_NM[1]:g} nm.",
    )
    reply_terminator: Literal[tuple(REPLY_TERMINATORS)] = Field(  # type: ignore[valid-type]
        "LF", description="Terminator of the unit's replies (varies by firmware)."
    )

    @field_validator("wavelength_limits")
    @classmethod
    def _inside_tuning_range(cls, limits: list[float]) -> list[float]:
        low, high = limits
        lo, hi = TUNING_RANGE_NM
        if not lo <= low < high <= hi:
            raise settings_error(
                f"wavelength_limits [{low:g}, {high:g}] are not an increasing pair inside "
                f"{lo:g}-{hi:g} nm",
                f"write [low, high] with {lo:g} <= low < high <= {hi:g}, e.g. [700, 1000]",
            )
        return limits


@dataclass(frozen=True)
class MaiTaiDiagnostics:
    """The pump laser and modelocker state, as Spectra-Physics service asks for it."""

    mode: str
    """``POW`` (IR power regulated), ``PPOW`` (pump power) or ``PCUR`` (pump current)."""
    pump_setpoint_w: float
    pump_power_w: float
    pump_current_pct: float
    diode_current_a: tuple[float, float]
    diode_temperature_c: tuple[float, float]
    shg_status: int
    """``0`` settled, ``1`` heating, ``2`` cooling (``3`` settling on some units); < 0 a fault."""
    rf_phase_pct: float
    modelocker_enabled: bool
    pump_error_code: int
    history: tuple[int, ...]
    """The power supply's last status codes, most recent first."""
    watchdog_s: float
    """0: disabled; otherwise the laser turns its pump off after this long without a command."""


_OPEN_WORDS = {"1": 1, "open": 1, "opened": 1, "0": 0, "close": 0, "closed": 0, "shut": 0}


def _shutter_state(value: Any, name: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in _OPEN_WORDS:
        return _OPEN_WORDS[value.strip().lower()]
    raise ValueRejected(
        f"shutter value {value!r} is not open/closed.",
        instrument=name,
        value=value,
        fix="use 1 or 'open' to open, 0 or 'closed' to close.",
    )


def _on_off(value: Any, name: str) -> int:
    words = {"1": 1, "on": 1, "0": 0, "off": 0}
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float) and value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.strip().lower() in words:
        return words[value.strip().lower()]
    raise ValueRejected(
        f"emission value {value!r} is not on/off.",
        instrument=name,
        value=value,
        fix="use 1 or 'on' for emission on, 0 or 'off' for off.",
    )


_EMISSION_BIT = 1
"""``*STB?`` bit 0: emission on ([M], the v1 driver's reading of it)."""


def _quantity(unit: str) -> Callable[[str], float]:
    """A parser for ``820nm`` / ``3.000W`` / ``100.00%``: the unit is required (a reply without
    it is a garbled one); ValueError for anything else, which the core names with the query."""

    def parse(reply: str) -> float:
        m = _QUANTITY.match(reply.strip())
        if m is None or m.group(2).lower() != unit.lower():
            raise ValueError(reply)
        value = float(m.group(1))
        if not math.isfinite(value):
            raise ValueError(reply)
        return value

    return parse


def _status_byte(reply: str) -> int:
    if not _INTEGER.match(reply) or int(reply) > 255:
        raise ValueError(reply)
    return int(reply)


def _shutter(reply: str) -> int:
    if reply not in ("0", "1"):
        raise ValueError(reply)
    return int(reply)


class _FollowingExchange(Exchange):
    """An exchange that follows a unit whose replies end with another terminator than the
    profile's: a query that timed out with a complete line ending in CR or LF in the input takes
    that line, and the laser frames every later exchange with that terminator."""

    __slots__ = ("laser",)

    def __init__(self, x: Exchange, laser: MaiTaiLaser) -> None:
        super().__init__(
            x.lease,
            instrument=x.instrument,
            resource=x.resource,
            # The laser's, not x's: the identity check may have switched it in this very lease.
            terminator=laser.terminator,
            timeout=x.timeout,
        )
        self.sent = x.sent  # one list: echoes of commands the core sent are recognised too
        self.laser = laser

    async def query(self, command: str) -> str:
        try:
            return await super().query(command)
        except InstrumentTimeout as exc:
            line = self.laser.follow_terminator(exc.reply)
            if line is None:
                raise
            self.terminator = self.laser.terminator
            return line


class _RangedBackend(WireSignalBackend[float]):
    """The wavelength read-back: its descriptor limits are the laser's tuning limits as known
    now (the profile's, narrowed at connect by ``WAVELENGTH:MIN?``/``MAX?``), as in v1."""

    async def get_datakey(self, source: str) -> DataKey:
        key = await super().get_datakey(source)
        low, high = self.device.laser.tuning_limits  # type: ignore[attr-defined]
        key["limits"] = {"control": {"low": low, "high": high}}
        return key


class _SwitchBackend(WireSignalBackend[int]):
    """Shutter and emission: the command alone, then read-backs in short leases until the laser
    shows the new state (it may take a moment, or ignore the command: local mode, interlock).

    ``source_text`` replaces the query in the descriptor where v1 names more than the query
    (``*STB? bit 0 (set with ON/OFF)``).
    """

    def __init__(
        self,
        device: MaiTaiLaser,
        command: WireCommand[int],
        *,
        ignored: Callable[[int, int], str],
        source_text: str | None = None,
        words: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(int, device, command)
        self.ignored = ignored
        self.source_text = source_text
        self.words = words

    def source(self, name: str, read: bool) -> str:
        return self.device.source_for(self.source_text or self.command.query)

    def check(self, value: Any) -> tuple[int, str]:
        """The validated state and its command (``words``: ``OFF``/``ON`` instead of a number)."""
        wanted, command = super().check(value)
        return wanted, command if self.words is None else self.words[wanted]

    async def put(self, value: int | None) -> None:
        laser: MaiTaiLaser = self.device  # type: ignore[assignment]
        wanted, command = self.check(value)
        async with laser.transaction() as x:
            await laser.before_switch(x, command)
            await laser.send(x, command)
        deadline = time.monotonic() + laser.shutter_timeout
        for delay in laser.backoff:
            async with laser.transaction() as x:
                got = await self.read_in(x)
            self.store(got)
            if got == wanted:
                return
            if time.monotonic() + delay > deadline:
                break
            await asyncio.sleep(delay)
        raise InstrumentFault(
            self.ignored(wanted, got),
            instrument=laser.name,
            resource=laser.port.url,
            fix="switch the laser to remote control and check the interlocks, then try again.",
        )


@dataclass
class MaiTaiTuning(WireMovableLogic):
    """How the wavelength moves: ``WAVELENGTH`` + ``WAVELENGTH?`` in one lease, ``READ:WAV?``
    polls until it settles; a stop sends where the laser is as the new target."""

    axis: MaiTaiWavelength
    _target: float = field(default=math.nan, init=False)
    _readings: list[float] = field(default_factory=list, init=False)

    @property
    def laser(self) -> MaiTaiLaser:
        return self.axis.laser

    def check_target(self, value: Any) -> float:
        """A number inside the tuning limits, or v1's ValueRejected naming both ranges."""
        laser = self.laser
        nm = laser.check_number(value, what="wavelength (nm)", low=-math.inf, high=math.inf)
        low, high = laser.tuning_limits
        if low <= nm <= high:
            return nm
        plo, phi = laser.wavelength_limits
        own = laser.laser_wavelength_limits
        reports = (
            f"the laser reports {own[0]:g}-{own[1]:g} nm (WAVELENGTH:MIN?/MAX?) and "
            if own is not None
            else ""
        )
        raise ValueRejected(
            f"wavelength {nm:g} nm is outside what {laser.name} may tune: {reports}the profile "
            f"allows {plo:g}-{phi:g} nm.",
            instrument=laser.name,
            resource=laser.port.url,
            value=value,
            limit=(low, high),
            fix=f"choose a wavelength between {low:g} and {high:g} nm.",
        )

    async def start(self, target: float) -> int:
        """The tune command, and in the same lease ``WAVELENGTH?``: a refusal shows at once."""
        laser = self.laser
        target = self.check_target(target)
        move_id = next(self._ids)
        command = self.motion.move.format(self.motion.format_target(target))
        async with laser.transaction() as x:
            await laser.send(x, command)
            await laser.quiet()
            commanded = await wire_backend(laser.commanded).read_in(x)
            if abs(commanded - target) > 0.5 + 1e-9:  # it answers in whole nanometres
                errors = await laser.errors_in(x)
                said = "; ".join(f"{code}, {text}" for code, text in errors) or "nothing"
                raise InstrumentFault(
                    f"MaiTai did not take {command}: WAVELENGTH? still answers {commanded:g} nm "
                    f"(SYSTEM:ERR? reports {said}).",
                    instrument=laser.name,
                    resource=laser.port.url,
                    code=errors[0][0] if errors else None,
                    fix="check that the laser is in remote control and warmed up, and that the "
                    "target is inside its tuning range; then move again.",
                )
        self._target, self._readings = target, []
        self._current = move_id
        return move_id

    async def poll(self, x: Exchange) -> tuple[bool, float]:
        """``READ:WAV?``: settled when the last ``settle_reads`` readings agree at the target."""
        laser = self.laser
        if self._stopped == self._current:
            # Halted: poll no more, even if the cancellation that should end this move was lost
            # (Python 3.11's wait_for, in the transport's lease wait, swallows a cancel that
            # lands in the instant the lease is granted: the halt's release grants it here).
            raise asyncio.CancelledError(f"tuning of {laser.name} was stopped")
        backend = wire_backend(self.readback)
        nm = await backend.read_in(x)
        backend.store(nm)
        self._readings.append(nm)
        last = self._readings[-laser.settle_reads :]
        done = (
            len(last) == laser.settle_reads
            and all(abs(r - self._target) <= laser.tolerance_nm + 1e-9 for r in last)
            and max(last) - min(last) <= 1e-9
        )
        return done, nm

    async def stop(self) -> None:
        """Halt a tune in progress; an idle laser is sent nothing (as v1)."""
        if self.moving:
            await self._send_stop(self._current)

    async def _send_stop(self, move_id: int) -> None:
        # No stop command: the laser slews on towards the old target unless it is given where
        # it is now as the new one.
        laser = self.laser
        self._stopped = move_id
        async with laser.transaction() as x:
            here = await wire_backend(self.readback).read_in(x)
            await laser.send(x, f"WAVELENGTH {_format_nm(here)}")
        wire_backend(self.readback).store(here)
        self.setpoint._connector.backend.store(here)  # type: ignore[attr-defined]


class MaiTaiWavelength(StandardReadable, WirePositioner):
    """The wavelength (nm): readback ``<laser>_wavelength`` (``READ:WAV?``, hinted) and
    ``<laser>_wavelength_setpoint`` (the last ``WAVELENGTH`` target). Part of the laser."""

    def __init__(self, laser: MaiTaiLaser, name: str = "") -> None:
        object.__setattr__(self, "_laser", laser)  # not a child: the laser is the parent
        with self.add_children_as_readables(Format.HINTED_UNCACHED_SIGNAL):
            self.readback = SignalR(
                _RangedBackend(
                    float,
                    self,  # type: ignore[arg-type]
                    WireCommand(
                        query="READ:WAV?",
                        parse=_quantity("nm"),
                        units="nm",
                        precision=1,
                        what="a wavelength in nm",
                    ),
                )
            )
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.setpoint = wire_target_signal(
                self,
                "WAVELENGTH",
                lambda target: self.movable_logic.start(target),
                units="nm",
                precision=1,
                limits=laser.tuning_limits,
            )
        super().__init__(name=name)

    @cached_property
    def movable_logic(self) -> MaiTaiTuning:
        laser = self.laser
        cap = laser.poll_interval
        return MaiTaiTuning(
            setpoint=self.setpoint,
            readback=self.readback,
            axis=self,
            motion=WireMotion(
                move="WAVELENGTH {}",
                done="READ:WAV?",
                is_done=bool,
                stop="WAVELENGTH",
                format_target=_format_nm,
                backoff=tuple(min(d, cap) for d in _POLL_BACKOFF) + (cap,),
            ),
            move_timeout=laser.tune_timeout,
            what="wavelength (nm)",
        )

    @property
    def laser(self) -> MaiTaiLaser:
        return self._laser  # type: ignore[no-any-return]

    @property
    def port(self) -> LeasedPort:
        return self.laser.port

    def transaction(self) -> AbstractAsyncContextManager[Exchange]:
        return self.laser.transaction()

    def source_for(self, command: str) -> str:
        return self.laser.source_for(command)

    def rejected(self, what: str, value: Any, fix: str | None = None) -> ValueRejected:
        return self.laser.rejected(what, value, fix)

    @property
    def limits(self) -> tuple[float, float]:
        return self.laser.tuning_limits

    @property
    def egu(self) -> str:
        return "nm"


class MaiTaiLaser(WireDevice):
    """A MaiTai on one leased port: ``wavelength`` (positioner, hinted), ``power`` (W, hinted),
    ``shutter`` (0/1), configuration ``emission``, ``warmup``, ``status_byte``, ``pump_power``,
    ``humidity``. ``timeout``: how long a reply may take.
    """

    model: ClassVar[str] = "MaiTai"

    def __init__(
        self,
        port: LeasedPort,
        *,
        name: str = "maitai",
        wavelength_limits: tuple[float, float] | list[float] = TUNING_RANGE_NM,
        reply_terminator: str = "LF",
        timeout: float = 3.0,
        write_delay: float = 0.05,
        tolerance_nm: float = ARRIVAL_TOLERANCE_NM,
        settle_reads: int = 2,
        tune_timeout: float = 60.0,
        poll_interval: float = 0.05,
        shutter_timeout: float = 2.0,
        lease_timeout: float = 5.0,
    ) -> None:
        settings = validate_settings(
            MaiTaiSettings,
            {"wavelength_limits": list(wavelength_limits), "reply_terminator": reply_terminator},
            instrument=name,
            resource=getattr(port, "url", None),
        )
        low, high = settings.wavelength_limits
        self.wavelength_limits = (low, high)
        """What the profile lets plans request (the lab's optics)."""
        self.laser_wavelength_limits: tuple[float, float] | None = None
        """The unit's own range (``WAVELENGTH:MIN?``/``MAX?``), read at connect."""
        self.reply_terminator = settings.reply_terminator
        self.write_delay = positive_setting(write_delay, "write_delay", name, zero=True)
        self.tolerance_nm = positive_setting(tolerance_nm, "tolerance_nm", name, zero=True)
        if isinstance(settle_reads, bool) or not isinstance(settle_reads, int) or settle_reads < 1:
            raise ConfigError(
                f"settle_reads must be an integer >= 1, got {settle_reads!r}.",
                key="settle_reads",
                instrument=name,
            )
        self.settle_reads = settle_reads
        self.tune_timeout = positive_setting(tune_timeout, "tune_timeout", name)
        self.poll_interval = positive_setting(poll_interval, "poll_interval", name)
        self.shutter_timeout = positive_setting(shutter_timeout, "shutter_timeout", name, zero=True)
        self.backoff = _Backoff(self.poll_interval)
        # v1 refused these too: a timeout <= 0 fails every query, and the core only casts them.
        timeout = positive_setting(timeout, "timeout", name)
        lease_timeout = positive_setting(lease_timeout, "lease_timeout", name)
        self.identity: str | None = None
        self._quiet_until = 0.0
        with self.add_children_as_readables(Format.CHILD):
            self.wavelength = MaiTaiWavelength(self)
        # One block per signal: a block registers its signals as a set (no order), and the
        # recorded keys must come in the v1 laser's order.
        with self.add_children_as_readables(Format.HINTED_UNCACHED_SIGNAL):
            self.power = wire_signal_r(
                float,
                self,
                WireCommand(
                    query="READ:POWER?",
                    parse=_quantity("W"),
                    units="W",
                    precision=3,
                    what="a power in W",
                ),
            )
        with self.add_children_as_readables(Format.UNCACHED_SIGNAL):
            self.shutter = SignalRW(
                _SwitchBackend(
                    self,
                    WireCommand(
                        query="SHUTTER?",
                        parse=_shutter,
                        set_command="SHUTTER {}",
                        validate=lambda v: _shutter_state(v, self.name),
                        what="0 or 1",
                    ),
                    ignored=lambda wanted, got: (
                        f"MaiTai ignored SHUTTER {wanted}: the laser may be in local/front-panel "
                        f"mode or an interlock is open (SHUTTER? still reads {got} after "
                        f"{self.shutter_timeout:g} s)."
                    ),
                )
            )
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.emission = SignalRW(
                _SwitchBackend(
                    self,
                    WireCommand(
                        query="*STB?",
                        parse=lambda r: _status_byte(r) & _EMISSION_BIT,
                        set_command="{}",
                        validate=lambda v: _on_off(v, self.name),
                        what="a status byte (0-255)",
                    ),
                    ignored=lambda wanted, got: (
                        f"MaiTai ignored {'ON' if wanted else 'OFF'}: *STB? bit 0 still reads "
                        f"{got} after {self.shutter_timeout:g} s (key switch, interlock or "
                        "front panel)."
                    ),
                    source_text="*STB? bit 0 (set with ON/OFF)",
                    words=("OFF", "ON"),
                )
            )
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.warmup = self._reading("READ:PCTWARMEDUP?", "%", 2, "a warm-up in %")
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.status_byte = wire_signal_r(
                int,
                self,
                WireCommand(query="*STB?", parse=_status_byte, what="a status byte (0-255)"),
            )
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.pump_power = self._reading("PLASER:POWER?", "W", 2, "a pump power in W")
        with self.add_children_as_readables(Format.CONFIG_SIGNAL):
            self.humidity = self._reading("READ:HUM?", "%", 2, "a humidity in %")
        # Not recorded (v1 records only the read-back's target as the setpoint): where the
        # laser is going, which confirms a tune command in its own lease.
        self.commanded = wire_signal_r(
            float,
            self,
            WireCommand(query="WAVELENGTH?", parse=_quantity("nm"), what="a wavelength in nm"),
        )
        super().__init__(port, name=name, timeout=timeout, lease_timeout=lease_timeout)
        # The same bytes frame commands and replies (v1 writes the reply terminator too).
        self.terminator = REPLY_TERMINATORS[self.reply_terminator]

    def _reading(self, query: str, unit: str, precision: int, what: str) -> SignalR[float]:
        command = WireCommand(
            query=query, parse=_quantity(unit), units=unit, precision=precision, what=what
        )
        return wire_signal_r(float, self, command)

    # --- limits ---------------------------------------------------------------------------------

    @property
    def tuning_limits(self) -> tuple[float, float]:
        """What a move may request: the profile's limits inside the laser's own range."""
        own = self.laser_wavelength_limits
        if own is None:
            return self.wavelength_limits
        low, high = self.wavelength_limits
        return (max(low, own[0]), min(high, own[1]))

    # --- the wire -------------------------------------------------------------------------------

    def source_for(self, command: str) -> str:
        """v1's descriptor ``source``: ``maitai (MaiTai) on <port>: READ:POWER?``."""
        return f"{self.name} (MaiTai) on {self.port.url}: {command}"

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Exchange]:
        """One lease, opened only once the quiet period after the last set command is over."""
        async with super().transaction() as x:
            await self.quiet()
            following = self._following(x)
            yield following
            await following.flush()

    def _following(self, x: Exchange) -> Exchange:
        """``x`` as an exchange that follows the unit's reply terminator (see the module)."""
        return x if isinstance(x, _FollowingExchange) else _FollowingExchange(x, self)

    def follow_terminator(self, partial: bytes | str | None) -> str | None:
        """The reply line in ``partial`` (what a timed-out query left in the input) if it is a
        complete line ending in another terminator than the one in use; that terminator is used
        from now on. None if it is not (a real timeout)."""
        if not isinstance(partial, bytes):
            return None
        for term, name in _TERMINATOR_NAMES.items():
            if term != self.terminator and partial.rstrip(b"\r\n") and partial.endswith(term):
                log.warning(
                    "%s on %s: replies end in %s, not %s as configured; following the unit (set "
                    "reply_terminator = %r in the profile)",
                    self.name,
                    self.port.url,
                    name,
                    self.reply_terminator,
                    name,
                )
                self.terminator = term
                lines = partial.strip(b"\r\n").splitlines()
                return lines[-1].decode("ascii", "replace").strip()
        return None

    async def quiet(self) -> None:
        """Wait out ``write_delay`` after the last set command (the laser is deaf before)."""
        wait = self._quiet_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def send(self, x: Exchange, command: str) -> None:
        """A silent set command, on the wire now and alone; the quiet period starts."""
        await self.quiet()
        await x.write(command)
        await x.flush()
        self._quiet_until = time.monotonic() + self.write_delay

    async def before_switch(self, x: Exchange, command: str) -> None:
        """``ON`` is refused here, before any byte of it, until the warm-up reads 100 %."""
        if command != "ON":
            return
        backend = wire_backend(self.warmup)
        pct = await backend.read_in(x)
        backend.store(pct)
        if pct < 100.0:
            raise InstrumentFault(
                f"MaiTai refuses ON while warming up: READ:PCTWARMEDUP? reads {pct:.2f}% and "
                "the laser ignores ON until it reaches 100%.",
                instrument=self.name,
                resource=self.port.url,
                fix="wait until the warm-up reads 100% (laser.warmup), then turn emission on "
                "again.",
            )

    async def errors_in(self, x: Exchange) -> list[tuple[int, str]]:
        """``SYSTEM:ERR?`` until ``0`` (at most the queue's depth): (code, text), oldest first."""
        errors: list[tuple[int, str]] = []
        for _ in range(_ERROR_QUEUE_DEPTH):
            reply = await x.query("SYSTEM:ERR?")
            m = _SYSTEM_ERROR.match(reply)
            if m is None:
                raise x.reply_error("SYSTEM:ERR?", reply, "an error code and text")
            code = int(m.group(1))
            if code == 0:
                break
            errors.append((code, m.group(2).strip()))
        return errors

    async def read_errors(self) -> list[tuple[int, str]]:
        """Empty the laser's ``SYSTEM:ERR?`` queue (one lease)."""
        async with self.transaction() as x:
            return await self.errors_in(x)

    # --- connection -----------------------------------------------------------------------------

    async def identify(self, x: Exchange) -> None:
        # The first query on the port: where a unit with another reply terminator shows.
        reply = await self._following(x).query("*IDN?")
        if _IDENTITY_MARK not in reply.lower().replace(" ", "").replace("-", ""):
            raise IdentityMismatch(
                f"expected a Spectra-Physics MaiTai, but *IDN? answered {reply!r}.",
                instrument=self.name,
                resource=self.port.url,
                fix="check the port in the profile: another instrument is connected there.",
            )
        self.identity = reply

    async def prepare(self, x: Exchange) -> None:
        """The unit's range, then every value v1 reads at connect; the answers are stored."""
        x = self._following(x)
        nm = _quantity("nm")
        low = await self._ask(x, "WAVELENGTH:MIN?", nm, "a wavelength in nm")
        high = await self._ask(x, "WAVELENGTH:MAX?", nm, "a wavelength in nm")
        plo, phi = self.wavelength_limits
        if not low < high:
            raise x.reply_error("WAVELENGTH:MAX?", f"{high:g}nm", f"above the minimum {low:g} nm")
        if max(low, plo) >= min(high, phi):
            raise ConfigError(
                f"the profile's wavelength_limits [{plo:g}, {phi:g}] nm lie outside this laser's "
                f"own tuning range {low:g}-{high:g} nm (WAVELENGTH:MIN?/MAX?).",
                key="wavelength_limits",
                instrument=self.name,
                fix=f"set wavelength_limits inside [{low:g}, {high:g}] in the profile, or check "
                "that the port is the right laser's.",
            )
        self.laser_wavelength_limits = (low, high)
        wavelength = self.wavelength
        order = [
            self.warmup,
            self.status_byte,
            self.pump_power,
            self.humidity,
            self.shutter,
            self.power,
            self.commanded,
            wavelength.readback,
        ]
        # Every answer first, then the stores: a garbled reply half-way must not leave a mix.
        values = [await wire_backend(s).read_in(x) for s in order]
        for signal, value in zip(order, values, strict=True):
            wire_backend(signal).store(value)
        wire_backend(self.emission).store(values[1] & _EMISSION_BIT)
        target = wavelength.setpoint._connector.backend
        target.limits = self.tuning_limits  # type: ignore[attr-defined]
        target.store(values[6])  # type: ignore[attr-defined] # mid-tune: where it is going

    async def _ask(
        self, x: Exchange, query: str, parse: Callable[[str], float], what: str
    ) -> float:
        reply = await x.query(query)
        try:
            return parse(reply)
        except ValueError:
            raise x.reply_error(query, reply, what) from None

    async def refresh_configuration(self) -> None:
        """Ask the settings and the shutter now, in one lease (the baseline's reading): the
        answers become the signals' latest readings. Queries only."""
        order = [self.warmup, self.status_byte, self.pump_power, self.humidity, self.shutter]
        async with self.transaction() as x:
            values = [await wire_backend(s).read_in(x) for s in order]
        for signal, value in zip(order, values, strict=True):
            wire_backend(signal).store(value)
        wire_backend(self.emission).store(values[1] & _EMISSION_BIT)

    async def diagnostics(self) -> MaiTaiDiagnostics:
        """The pump laser and modelocker state, as service asks for it (v1's queries, in its
        order, in one lease). Queries only: nothing is changed."""
        async with self.transaction() as x:

            async def ask(query: str, pattern: Any, what: str) -> Any:
                reply = await x.query(query)
                m = pattern(reply) if callable(pattern) else pattern.fullmatch(reply)
                if not m:
                    raise x.reply_error(query, reply, what)
                return m

            async def diode(n: int, what: str, unit: str) -> float:
                m = await ask(f"READ:PLASER:DIODE{n}:{what}?", _DIODE_READING, f"{unit}{n}")
                if m.group(2) != unit or int(m.group(3)) != n:
                    raise x.reply_error(f"READ:PLASER:DIODE{n}:{what}?", m.group(0), f"{unit}{n}")
                return float(m.group(1))

            async def number(query: str, unit: str) -> float:
                return await self._ask(x, query, _quantity(unit), f"a number in {unit or '1'}")

            mode = (await x.query("MODE?")).upper()
            if mode not in _PUMP_MODES:
                raise x.reply_error("MODE?", mode, "one of POW, PPOW, PCUR")
            setpoint = await number("PLASER:POWER?", "W")
            pump = await number("READ:PLASER:POWER?", "W")
            current = await number("READ:PLASER:PCURRENT?", "%")
            amps = (await diode(1, "CURRENT", "A"), await diode(2, "CURRENT", "A"))
            temps = (await diode(1, "TEMPERATURE", "C"), await diode(2, "TEMPERATURE", "C"))
            shg = await ask("READ:PLASER:SHGS?", _SHG_STATUS, "a status such as 0S")
            phase = await number("CONTROL:PHASE?", "%")
            ml = await ask("CONTROL:MLENABLE?", lambda r: r in ("0", "1") and r, "0 or 1")
            code = await ask("PLASER:ERRCODE?", _ERROR_CODE, "an error code")
            history = (await x.query("PLASER:HISTORY?")).split()
            if not history or not all(c.isdigit() and len(c) <= 3 for c in history):
                raise x.reply_error("PLASER:HISTORY?", " ".join(history), "status codes")
            watchdog = await number("TIMER:WATCHDOG?", "")
        return MaiTaiDiagnostics(
            mode=mode,
            pump_setpoint_w=setpoint,
            pump_power_w=pump,
            pump_current_pct=current,
            diode_current_a=amps,
            diode_temperature_c=temps,
            shg_status=int(shg.group(1)),
            rf_phase_pct=phase,
            modelocker_enabled=ml == "1",
            pump_error_code=int(code.group(1)),
            history=tuple(int(c) for c in history),
            watchdog_s=watchdog,
        )

    async def stop(self, success: bool = False) -> None:
        """Stop tuning and close the shutter, as v1's ``stop()``; a failed close is logged."""
        await self.wavelength.stop(success=success)
        try:
            await self.shutter.set(0)
        except Exception as exc:  # noqa: BLE001 - stop() must not raise
            log.error("%s: closing the shutter on stop failed: %s", self.name, exc)


class _Backoff:
    """Pauses between read-backs: v1's quick first polls, then ``poll_interval`` forever."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def __iter__(self) -> Iterator[float]:
        yield from (min(d, self.cap) for d in _POLL_BACKOFF)
        while True:
            yield self.cap


def build(port: LeasedPort, *, name: str, settings: MaiTaiSettings, timeout: float) -> MaiTaiLaser:
    """The laser of one profile entry, not connected (the runtime connects it on the
    RunEngine's loop); the entry's ``timeout`` is how long a reply may take."""
    return MaiTaiLaser(
        port,
        name=name,
        wavelength_limits=tuple(settings.wavelength_limits),
        reply_terminator=settings.reply_terminator,
        timeout=timeout,
    )


def twin_fields(settings: MaiTaiSettings, part: str | None) -> dict[str, TwinField]:
    """The legacy laser under this driver's names, kinds and precision."""
    return {
        "wavelength": TwinField(
            "wavelength",
            "hinted",
            precision=1,
            setpoint="wavelength_setpoint",
            describe_limits=False,
        ),
        "power": TwinField("power", "hinted", precision=3),
        "shutter": TwinField("shutter", "normal"),
        "emission": TwinField("emission", "config"),
        "warmup": TwinField("warmup", "config", precision=2),
        "status": TwinField("status_byte", "config"),
        "pump_power": TwinField("pump_power", "config", precision=2),
        "humidity": TwinField("humidity", "config", precision=2),
    }


register_driver(
    "maitai",
    settings=MaiTaiSettings,
    build=build,
    simulator="maitai",
    legacy_twin="maitai",
    twin_view=TwinView(
        fields=twin_fields,
        limits=lambda settings: {"wavelength": tuple(map(float, settings.wavelength_limits))},
        # The laser reports whole nm: the legacy adapter accepts a tune as this driver does
        # (without it bps.mv(laser.wavelength, 760.4) failed on the legacy stack only).
        tolerance={"wavelength": ARRIVAL_TOLERANCE_NM},
    ),
    entry=ProfileEntry(
        "Spectra-Physics MaiTai Ti:Sapphire laser.",
        table_description="Laser settings.",
        table_required=False,
        defaults={
            "flow_control": EntryDefault(
                "xonxoff", "Serial flow control (the MaiTai manual asks for XON/XOFF)."
            ),
            "timeout": EntryDefault(3.0, "Seconds to wait (replies take 2 s)."),
        },
        simulator_options=lambda settings: {"reply_terminator": settings.reply_terminator},
    ),
)
