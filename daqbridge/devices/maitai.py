"""Spectra-Physics MaiTai Ti:Sapphire laser as a native ophyd device.

What the real laser does that shapes this driver (INSTRUMENTS.md, "MaiTai"):

* Set commands are silent, replies take up to 2 s, and the unit wants a short pause after a
  write before it listens again. So queries drain stale bytes first, set commands are followed by
  a quiet period (``write_delay``) that only delays a command that comes sooner, and nothing ever
  waits for a reply to a set command.
* Tuning takes seconds and ``WAVELENGTH`` only sets a target: the move is complete when the
  read-back wavelength has reached the target and stays there, so the driver polls it (updating
  the readback, so progress bars move) instead of trusting the command. The laser answers
  ``WAVELENGTH?`` with the last commanded value and ``READ:WAVELENGTH?`` (``READ:WAV?``) with
  where it is: the readback is always the latter; the former only confirms, right after the
  command, that the laser took it (a target it refused fails the move at once, with what
  ``SYSTEM:ERR?`` says, instead of after ``tune_timeout``).
* Units differ in tuning range (:data:`TUNING_RANGE_NM`, 710-990 nm, older 750-850 nm): its own
  ``WAVELENGTH:MIN?``/``MAX?`` are read at connect and the move limits are their intersection
  with the profile's ``wavelength_limits``.
* The shutter can silently ignore ``SHUTTER 1`` (front-panel/local mode, open interlock): every
  shutter change is verified with ``SHUTTER?`` and a refusal is a clear InstrumentFault.
* ``ON`` is ignored until the warm-up reaches 100 %: emission is refused up front with the
  percentage, instead of leaving the scientist wondering why there is no light.
* Reply terminators vary by unit and firmware: the configured one is used to frame replies and
  a unit that ends its replies differently is detected once and followed, with a warning.

The laser's tuning range and reply terminators are written once, below; :class:`MaiTaiSettings`
(the profile's ``[instruments.maitai]`` table) is declared from them, the constructor validates
through it, and the module registers it (:func:`daqbridge.devices.register_driver`), so
``config check`` and start-up cannot disagree.

Threads: every exchange runs on the laser's :class:`InstrumentWorker`. A wavelength move runs its
polling loop on a second thread that hands each poll to the worker, so the worker stays free
between polls: a trigger (power reading) or a shutter command during a long tune is not queued
behind the whole tune.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

from ophyd import Component as Cpt
from ophyd import Device, Kind
from ophyd.positioner import PositionerBase
from ophyd.status import MoveStatus, StatusBase
from pydantic import Field, field_validator

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
from daqbridge.devices._registry import (
    DriverSettings,
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
    ReplyError,
    ValueRejected,
)
from daqbridge.transport import SerialPortPool, SharedSerialPort, default_pool

__all__ = [
    "MaiTaiDiagnostics",
    "MaiTaiLaser",
    "MaiTaiSettings",
    "MaiTaiWavelength",
    "TUNING_RANGE_NM",
    "REPLY_TERMINATORS",
    "build",
]

log = logging.getLogger(__name__)

TUNING_RANGE_NM = (690.0, 1040.0)
"""What the laser itself accepts; profiles may only narrow it."""

REPLY_TERMINATORS = {"LF": b"\n", "CR": b"\r", "CRLF": b"\r\n"}
"""The terminators units end their replies with (varies by firmware), by profile name."""

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


def _parse_quantity(text: str, unit: str, *, what: str, instrument: str, resource: str) -> float:
    """``820nm`` / ``3.000W`` / ``100.00%`` -> float.

    The unit is required: the laser always sends it, and a reply without it is a garbled one
    (line noise can turn the ``W`` into a CR and leave a plausible number behind).
    """
    m = _QUANTITY.match(text.strip())
    if m is None or m.group(2).lower() != unit.lower():
        raise ReplyError(
            f"the {what} reply is not a number in {unit}",
            reply=text,
            instrument=instrument,
            resource=resource,
            fix="check the cable and baud rate (noise garbles replies); the next query resends.",
        )
    value = float(m.group(1))
    if not math.isfinite(value):
        raise ReplyError(
            f"the {what} reply is not finite", reply=text, instrument=instrument, resource=resource
        )
    return value


def _format_nm(nm: float) -> str:
    # Whole numbers go out as the manual writes them ("WAVELENGTH 820"); a tenth is kept otherwise.
    return str(int(round(nm))) if abs(nm - round(nm)) < 1e-9 else f"{nm:.1f}"


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


class MaiTaiWavelength(Device, PositionerBase):
    """The laser's wavelength as a positioner (nm); part of :class:`MaiTaiLaser`.

    ``set(nm)`` sends ``WAVELENGTH`` and finishes when the read-back has settled at the target
    (within ``tolerance_nm``, the same value ``settle_reads`` times in a row).
    """

    readback = Cpt(InstrumentSignal, units="nm", precision=1, kind=Kind.hinted, value=0.0)
    setpoint = Cpt(InstrumentSignal, units="nm", precision=1, kind=Kind.normal, value=0.0)

    def __init__(self, prefix: str = "", *, name: str, parent: Any = None, **kwargs: Any) -> None:
        super().__init__(prefix=prefix, name=name, parent=parent, **kwargs)
        self.readback.name = self.name  # the data key is the device name, as for EpicsMotor
        self._move_gen = 0
        self._halt = threading.Event()
        self._status: MoveStatus | None = None

    @property
    def laser(self) -> MaiTaiLaser:
        return self.parent

    @property
    def egu(self) -> str:
        return "nm"

    @property
    def limits(self) -> tuple[float, float]:
        return self.laser.tuning_limits

    @property
    def precision(self) -> int:
        return 1

    def locate(self) -> dict[str, float]:
        return {"setpoint": self.setpoint.get(), "readback": self.readback.get()}

    def check_value(self, value: Any, **kwargs: Any) -> None:
        laser = self.laser
        nm = check_number(value, instrument=laser.name, what="wavelength (nm)")
        low, high = self.limits
        if low <= nm <= high:
            return
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

    def move(
        self,
        position: Any,
        wait: bool = False,
        moved_cb: Any = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> MoveStatus:
        laser = self.laser
        laser._require_connected("tune the wavelength")
        self.check_value(position)  # before any byte is sent: ValueRejected names the limit
        target = float(position)
        old = self._status
        if old is not None and not old.done:
            fail_status(
                old,
                InstrumentError(
                    f"tuning replaced by a new move to {target:g} nm before it settled.",
                    instrument=laser.name,
                    resource=laser.port.url,
                ),
            )
        self._reset_sub(self._SUB_REQ_DONE)
        self._move_gen += 1
        gen = self._move_gen
        self._halt.clear()
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
        self.setpoint.update(target)
        self._moving = True
        self._run_subs(sub_type=self.SUB_START, timestamp=time.time())
        laser._tuner.submit(self._tune, target, status, gen)
        if wait:
            status.wait()
        return status

    def stop(self, *, success: bool = False) -> None:
        """Abandon the tune: the laser is told to stay where it is; the move's status ends."""
        self._halt.set()
        status = self._status
        if status is not None and not status.done and self._moving:
            self._moving = False
            self._reset_sub(self._SUB_REQ_DONE)
            if success:
                finish_status(status)
            else:
                fail_status(
                    status,
                    InstrumentError(
                        "wavelength tuning was stopped before it settled.",
                        instrument=self.laser.name,
                        resource=self.laser.port.url,
                    ),
                )

    def _stop_move(self, status: StatusBase) -> None:
        if status is self._status:
            self.stop()

    # --- worker side -------------------------------------------------------------------------

    def _store(self, nm: float) -> None:
        self.readback.update(nm)
        self._set_position(nm)

    def _tune(self, target: float, status: MoveStatus, gen: int) -> None:
        laser = self.laser
        try:
            if gen != self._move_gen or status.done or self._halt.is_set():
                return  # stopped or replaced before it started: send nothing
            laser._io(laser._command, f"WAVELENGTH {_format_nm(target)}")
            laser._io(laser._confirm_target, target)
            deadline = time.monotonic() + laser.tune_timeout
            readings: list[float] = []
            for delay in _delays(laser.poll_interval):
                if gen != self._move_gen:
                    return  # replaced by a newer move (its status already failed)
                if self._halt.wait(delay):  # stop(): tell the laser to stay where it is
                    self._halt_tuning(readings)
                    return
                if status.done:  # the caller's timeout expired (its stop() halts, above)
                    self._moving = False
                    return
                nm = laser._io(laser._read_wavelength)
                readings.append(nm)
                last = readings[-laser.settle_reads :]
                if (
                    len(last) == laser.settle_reads
                    and all(abs(r - target) <= laser.tolerance_nm + 1e-9 for r in last)
                    and max(last) - min(last) <= 1e-9
                ):
                    break
                if time.monotonic() > deadline:
                    raise InstrumentTimeout(
                        f"the wavelength did not settle at {target:g} nm within "
                        f"{laser.tune_timeout:g} s; last readings {readings[-5:]} nm.",
                        instrument=laser.name,
                        resource=laser.port.url,
                        fix="check that the laser is on and tuning (front panel); raise "
                        "tune_timeout for long tunes or tolerance_nm if it settles nearby.",
                    )
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the status
            if gen == self._move_gen:
                self._moving = False
                self._reset_sub(self._SUB_REQ_DONE)
            fail_status(status, as_instrument_error(exc, laser.name, laser.port.url))
            return
        if gen == self._move_gen and not status.done:
            self._moving = False
            self._done_moving(success=True, value=self._position)

    def _halt_tuning(self, readings: list[float]) -> None:
        # Stop slewing: ask for where the laser is now (it moves on towards the old target
        # otherwise). Best effort: the stop itself must not raise.
        laser = self.laser
        try:
            here = readings[-1] if readings else laser._io(laser._read_wavelength)
            laser._io(laser._command, f"WAVELENGTH {_format_nm(here)}")
            self.setpoint.update(here)
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: could not halt tuning after stop: %s", laser.name, exc)


def _delays(cap: float):
    yield from (min(d, cap) for d in _POLL_BACKOFF)
    while True:
        yield cap


class MaiTaiLaser(Device):
    """A MaiTai laser on one serial port.

    Parameters mirror the lab profile (``[instruments.maitai]``, checked by
    :class:`MaiTaiSettings`): ``wavelength_limits`` narrow the tuning range
    (:data:`TUNING_RANGE_NM`), ``reply_terminator`` is the unit's ("LF", "CR" or "CRLF"),
    ``reply_timeout`` the longest a reply may take (the laser can take 2 s).
    """

    wavelength = Cpt(MaiTaiWavelength, kind=Kind.hinted)
    power = Cpt(InstrumentSignal, units="W", precision=3, kind=Kind.hinted, value=0.0)
    shutter = Cpt(SettingSignal, owner="root", apply="_set_shutter", kind=Kind.normal, value=0)
    emission = Cpt(SettingSignal, owner="root", apply="_set_emission", kind=Kind.config, value=0)
    warmup = Cpt(InstrumentSignal, units="%", precision=2, kind=Kind.config, value=0.0)
    status_byte = Cpt(InstrumentSignal, kind=Kind.config, value=0)
    pump_power = Cpt(InstrumentSignal, units="W", precision=2, kind=Kind.config, value=0.0)
    humidity = Cpt(InstrumentSignal, units="%", precision=2, kind=Kind.config, value=0.0)

    _SOURCES = {
        "power": "READ:POWER?",
        "shutter": "SHUTTER?",
        "emission": "*STB? bit 0 (set with ON/OFF)",
        "warmup": "READ:PCTWARMEDUP?",
        "status_byte": "*STB?",
        "pump_power": "PLASER:POWER?",
        "humidity": "READ:HUM?",
    }

    def __init__(
        self,
        port: SharedSerialPort,
        *,
        name: str = "maitai",
        wavelength_limits: tuple[float, float] | list[float] = TUNING_RANGE_NM,
        reply_terminator: str = "LF",
        reply_timeout: float = 3.0,
        write_delay: float = 0.05,
        tolerance_nm: float = 0.5,
        settle_reads: int = 2,
        tune_timeout: float = 60.0,
        poll_interval: float = 0.05,
        shutter_timeout: float = 2.0,
        lease_timeout: float = 5.0,
        **kwargs: Any,
    ) -> None:
        if not isinstance(port, SharedSerialPort):
            raise ConfigError(
                f"MaiTaiLaser needs an open SharedSerialPort, got {type(port).__name__}.",
                key="port",
                fix="open it with SerialPortPool.open(url) or use MaiTaiLaser.from_url(url).",
            )
        self.port = port
        settings = validate_settings(
            MaiTaiSettings,
            {
                # A pair in any sequence from Python; the profile's TOML array is a list.
                "wavelength_limits": list(wavelength_limits)
                if isinstance(wavelength_limits, tuple)
                else wavelength_limits,
                "reply_terminator": reply_terminator,
            },
            instrument=name,
        )
        low, high = settings.wavelength_limits
        self.wavelength_limits = (low, high)
        """What the profile lets plans request (the lab's optics)."""
        self._laser_limits: tuple[float, float] | None = None
        self.reply_terminator = settings.reply_terminator
        self._write_term = REPLY_TERMINATORS[self.reply_terminator]
        self._read_term = self._write_term[-1:]
        self.reply_timeout = _positive(reply_timeout, "reply_timeout", name)
        self.write_delay = _positive(write_delay, "write_delay", name, zero=True)
        self.tolerance_nm = _positive(tolerance_nm, "tolerance_nm", name, zero=True)
        if isinstance(settle_reads, bool) or not isinstance(settle_reads, int) or settle_reads < 1:
            raise ConfigError(
                f"settle_reads must be an integer >= 1, got {settle_reads!r}.",
                key="settle_reads",
                instrument=name,
            )
        self.settle_reads = settle_reads
        self.tune_timeout = _positive(tune_timeout, "tune_timeout", name)
        self.poll_interval = _positive(poll_interval, "poll_interval", name)
        self.shutter_timeout = _positive(shutter_timeout, "shutter_timeout", name, zero=True)
        self.lease_timeout = _positive(lease_timeout, "lease_timeout", name)
        self._quiet_until = 0.0
        self._generation: int | None = None
        self._identity: str | None = None
        self._connected = False
        self._config_stale = True
        self._held: Any = None
        """The lease a group of queries shares (worker thread only); None between groups."""
        self._worker = InstrumentWorker(name)
        self._tuner = InstrumentWorker(f"{name}-tuning")
        super().__init__(prefix="", name=name, **kwargs)
        for attr, command in self._SOURCES.items():
            getattr(self, attr)._source = f"{name} (MaiTai) on {port.url}: {command}"
        self.wavelength.readback._source = f"{name} (MaiTai) on {port.url}: READ:WAV?"
        self.wavelength.setpoint._source = f"{name} (MaiTai) on {port.url}: WAVELENGTH"
        self._publish_limits()

    # --- construction helpers ----------------------------------------------------------------

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        pool: SerialPortPool | None = None,
        name: str = "maitai",
        baudrate: int = 9600,
        flow_control: str = "xonxoff",
        connect: bool = True,
        connect_timeout: float = 15.0,
        **kwargs: Any,
    ) -> MaiTaiLaser:
        """Open ``url`` (device path or pyserial URL) from ``pool`` and build a connected laser.

        The manual asks for XON/XOFF; pass ``flow_control="none"`` where the cable lacks it.
        """
        if flow_control not in ("none", "xonxoff", "rtscts"):
            raise ConfigError(
                f"flow_control {flow_control!r} is not one of none, xonxoff, rtscts.",
                key="flow_control",
                instrument=name,
            )
        port = (pool or default_pool()).open(
            url,
            baudrate=baudrate,
            xonxoff=flow_control == "xonxoff",
            rtscts=flow_control == "rtscts",
        )
        laser = cls(port, name=name, **kwargs)
        if connect:
            laser.connect(timeout=connect_timeout)
        return laser

    # --- lifecycle ---------------------------------------------------------------------------

    def connect(self, timeout: float = 15.0) -> None:
        """Check the identity (``*IDN?`` must name a MaiTai) and read the laser's state."""
        self._worker.call(self._connect_io, timeout=timeout, resource=self.port.url)

    @property
    def identity(self) -> str | None:
        return self._identity

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def laser_wavelength_limits(self) -> tuple[float, float] | None:
        """The unit's own tuning range (``WAVELENGTH:MIN?``/``MAX?``), read at connect."""
        return self._laser_limits

    @property
    def tuning_limits(self) -> tuple[float, float]:
        """What a move may request: the profile's limits inside the laser's own range."""
        if self._laser_limits is None:
            return self.wavelength_limits
        return (
            max(self.wavelength_limits[0], self._laser_limits[0]),
            min(self.wavelength_limits[1], self._laser_limits[1]),
        )

    def diagnostics(self, timeout: float | None = None) -> MaiTaiDiagnostics:
        """Read the pump laser and modelocker state (queries only: nothing is changed)."""
        self._require_connected("read the diagnostics")
        return self._worker.call(
            self._diagnostics_io,
            timeout=timeout or 20 * (self.reply_timeout + self.write_delay) + self.lease_timeout,
            resource=self.port.url,
        )

    def refresh_configuration(self, timeout: float | None = None) -> None:
        """Ask the laser for its settings now, in one lease: warm-up, ``*STB?`` (emission is its
        bit 0), pump power, humidity and the shutter.

        Outside a staged run these are otherwise the answers of connect, and the front panel or
        another program may have changed them since; a recorded setting must be one the laser
        reported. Queries only: nothing is changed. Blocking (the baseline reads it from its own
        thread; interactive use), never inside a plan.
        """
        self._require_connected("read its settings")
        self._worker.call(
            self._refresh_settings,
            timeout=timeout or 5 * (self.reply_timeout + self.write_delay) + self.lease_timeout,
            resource=self.port.url,
        )

    def read_errors(self, timeout: float | None = None) -> list[tuple[int, str]]:
        """Empty the laser's ``SYSTEM:ERR?`` queue: (code, text) pairs, oldest first."""
        self._require_connected("read the error queue")
        return self._worker.call(
            self._drain_errors,
            timeout=timeout
            or _ERROR_QUEUE_DEPTH * (self.reply_timeout + self.write_delay) + self.lease_timeout,
            resource=self.port.url,
        )

    def close(self) -> None:
        """Stop the worker threads (the port belongs to the pool and stays open)."""
        self.wavelength._halt.set()
        self._connected = False
        self._tuner.shutdown(wait=False)
        self._worker.shutdown(wait=True)

    def stop(self, *, success: bool = False) -> None:
        """Stop tuning and close the shutter (without waiting: this runs on the RunEngine loop)."""
        self.wavelength.stop(success=success)
        if self._connected:
            try:
                self._worker.submit(self._close_shutter_quietly)
            except InstrumentError:
                pass

    def stage(self) -> list[object]:
        self._config_stale = True
        return super().stage()

    def trigger(self) -> StatusBase:
        """Read power and wavelength (and, first in a run, the configuration) on the worker."""
        self._require_connected("read the laser")
        # No obj: ophyd would call stop() (close the shutter) when a reading fails.
        return self._worker.status(self._refresh)

    # --- emission ----------------------------------------------------------------------------

    def turn_on(self, timeout: float | None = None) -> None:
        """Emission on; refused with the warm-up percentage until the laser is warmed up."""
        self.emission.set(1).wait(timeout=timeout or self.reply_timeout * 3)

    def turn_off(self, timeout: float | None = None) -> None:
        self.emission.set(0).wait(timeout=timeout or self.reply_timeout * 3)

    def open_shutter(self, timeout: float | None = None) -> None:
        self.shutter.set(1).wait(timeout=timeout)

    def close_shutter(self, timeout: float | None = None) -> None:
        self.shutter.set(0).wait(timeout=timeout)

    # --- setting handlers (called by SettingSignal.set on the RunEngine loop: no I/O here) --

    def _set_shutter(self, value: Any) -> StatusBase:
        state = _shutter_state(value, self.name)
        self._require_connected("move the shutter")
        return self._worker.status(lambda: self._shutter_io(state), obj=self.shutter)

    def _set_emission(self, value: Any) -> StatusBase:
        state = _on_off(value, self.name)
        self._require_connected("switch emission")
        return self._worker.status(lambda: self._emission_io(state), obj=self.emission)

    def _require_connected(self, what: str) -> None:
        if not self._connected:
            raise InstrumentError(
                f"cannot {what}: the laser is not connected.",
                instrument=self.name,
                resource=self.port.url,
                fix="call connect() first (the runtime does it at start-up).",
            )

    # --- worker side -------------------------------------------------------------------------

    def _io(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` on the worker from another thread (the tuning loop) and wait for it."""
        return self._worker.call(
            fn,
            *args,
            timeout=self.reply_timeout + self.lease_timeout + self.write_delay + 1.0,
            resource=self.port.url,
        )

    def _connect_io(self) -> None:
        self._connected = False
        with self.port.lease(self.name, self.lease_timeout) as lease:
            self._identify(lease)
        self._read_laser_limits()
        self._read_config()
        self.shutter.update(self._read_shutter())
        self.power.update(self._read_power())
        # Connecting mid-tune: the setpoint is where the laser is going, the readback where it is.
        self.wavelength.setpoint.update(self._quantity("WAVELENGTH?", "nm", "commanded wavelength"))
        self._read_wavelength()
        self._config_stale = False
        self._connected = True

    def _read_laser_limits(self) -> None:
        low = self._quantity("WAVELENGTH:MIN?", "nm", "shortest wavelength")
        high = self._quantity("WAVELENGTH:MAX?", "nm", "longest wavelength")
        if not low < high:
            raise ReplyError(
                f"the laser's tuning range {low:g}-{high:g} nm (WAVELENGTH:MIN?/MAX?) is empty",
                instrument=self.name,
                resource=self.port.url,
                fix="check the cable and baud rate; connect again.",
            )
        plo, phi = self.wavelength_limits
        if high < plo or low > phi or max(low, plo) >= min(high, phi):
            raise ConfigError(
                f"the profile's wavelength_limits [{plo:g}, {phi:g}] nm lie outside this laser's "
                f"own tuning range {low:g}-{high:g} nm (WAVELENGTH:MIN?/MAX?).",
                key="wavelength_limits",
                instrument=self.name,
                fix=f"set wavelength_limits inside [{low:g}, {high:g}] in the profile, or check "
                "that the port is the right laser's.",
            )
        self._laser_limits = (low, high)
        self._publish_limits()

    def _publish_limits(self) -> None:
        # describe() reports these, and plans (wavelength scans) take their bounds from them.
        self.wavelength.setpoint._limits = self.tuning_limits
        self.wavelength.readback._limits = self.tuning_limits

    def _confirm_target(self, target: float) -> None:
        # The laser answers WAVELENGTH? with the last target it accepted: a refused or lost
        # command shows here at once, where polling READ:WAV? would only time out.
        commanded = self._quantity("WAVELENGTH?", "nm", "commanded wavelength")
        if abs(commanded - target) <= 0.5 + 1e-9:  # it answers in whole nanometres
            return
        errors = self._drain_errors()
        said = "; ".join(f"{code}, {text}" for code, text in errors) or "nothing"
        raise InstrumentFault(
            f"MaiTai did not take WAVELENGTH {_format_nm(target)}: WAVELENGTH? still answers "
            f"{commanded:g} nm (SYSTEM:ERR? reports {said}).",
            instrument=self.name,
            resource=self.port.url,
            code=errors[0][0] if errors else None,
            fix="check that the laser is in remote control and warmed up, and that the target is "
            "inside its tuning range; then move again.",
        )

    def _drain_errors(self) -> list[tuple[int, str]]:
        errors: list[tuple[int, str]] = []
        for _ in range(_ERROR_QUEUE_DEPTH):
            reply = self._query("SYSTEM:ERR?")
            m = _SYSTEM_ERROR.match(reply)
            if m is None:
                raise ReplyError(
                    "the SYSTEM:ERR? reply is not an error code and text",
                    reply=reply,
                    instrument=self.name,
                    resource=self.port.url,
                    fix="check the cable and baud rate; the next query resends.",
                )
            code = int(m.group(1))
            if code == 0:
                break
            errors.append((code, m.group(2).strip()))
        return errors

    def _diagnostics_io(self) -> MaiTaiDiagnostics:
        mode = self._query("MODE?").upper()
        if mode not in _PUMP_MODES:
            raise self._bad_reply("MODE?", mode, "one of POW, PPOW, PCUR")
        return MaiTaiDiagnostics(
            mode=mode,
            pump_setpoint_w=self._quantity("PLASER:POWER?", "W", "pump setpoint"),
            pump_power_w=self._quantity("READ:PLASER:POWER?", "W", "pump power"),
            pump_current_pct=self._quantity("READ:PLASER:PCURRENT?", "%", "pump current"),
            diode_current_a=(
                self._diode_reading(1, "CURRENT", "A"),
                self._diode_reading(2, "CURRENT", "A"),
            ),
            diode_temperature_c=(
                self._diode_reading(1, "TEMPERATURE", "C"),
                self._diode_reading(2, "TEMPERATURE", "C"),
            ),
            shg_status=self._shg_status(),
            rf_phase_pct=self._quantity("CONTROL:PHASE?", "%", "RF phase"),
            modelocker_enabled=self._flag("CONTROL:MLENABLE?"),
            pump_error_code=self._pump_error_code(),
            history=self._history(),
            watchdog_s=self._quantity("TIMER:WATCHDOG?", "", "watchdog"),
        )

    def _bad_reply(self, query: str, reply: str, expected: str) -> ReplyError:
        return ReplyError(
            f"the {query} reply is not {expected}",
            reply=reply,
            instrument=self.name,
            resource=self.port.url,
            fix="check the cable and baud rate; the next query resends.",
        )

    def _diode_reading(self, diode: int, what: str, unit: str) -> float:
        query = f"READ:PLASER:DIODE{diode}:{what}?"
        reply = self._query(query)
        m = _DIODE_READING.match(reply)
        if m is None or m.group(2) != unit or int(m.group(3)) != diode:
            raise self._bad_reply(query, reply, f"a number ending in {unit}{diode}")
        return float(m.group(1))

    def _shg_status(self) -> int:
        reply = self._query("READ:PLASER:SHGS?")
        m = _SHG_STATUS.match(reply)
        if m is None:
            raise self._bad_reply("READ:PLASER:SHGS?", reply, "a status such as 0S")
        return int(m.group(1))

    def _flag(self, query: str) -> bool:
        reply = self._query(query)
        if reply not in ("0", "1"):
            raise self._bad_reply(query, reply, "0 or 1")
        return reply == "1"

    def _pump_error_code(self) -> int:
        reply = self._query("PLASER:ERRCODE?")
        m = _ERROR_CODE.match(reply)
        if m is None:
            raise self._bad_reply("PLASER:ERRCODE?", reply, "an error code")
        return int(m.group(1))

    def _history(self) -> tuple[int, ...]:
        reply = self._query("PLASER:HISTORY?")
        codes = reply.split()
        if not codes or not all(c.isdigit() and len(c) <= 3 for c in codes):
            raise self._bad_reply("PLASER:HISTORY?", reply, "a list of status codes")
        return tuple(int(c) for c in codes)

    def _identify(self, lease: Any) -> None:
        reply = self._exchange_in(lease, "*IDN?")
        if _IDENTITY_MARK not in reply.lower().replace(" ", "").replace("-", ""):
            raise IdentityMismatch(
                f"expected a Spectra-Physics MaiTai, but *IDN? answered {reply!r}.",
                instrument=self.name,
                resource=self.port.url,
                fix="check the port in the profile: another instrument is connected there.",
            )
        self._identity = reply
        self._generation = self.port.generation

    def _refresh(self) -> None:
        if self._config_stale:
            self._read_config()
            self.shutter.update(self._read_shutter())
            self._config_stale = False
        self.power.update(self._read_power())
        self._read_wavelength()

    def _read_config(self) -> None:
        self._store_config(self._ask_config())

    def _ask_config(self) -> tuple[float, int, float, float]:
        # Every answer first, then the signals (_store_config): a garbled reply half-way must
        # not leave a mix of fresh and stale settings for the next reading to record.
        return (
            self._read_warmup(),
            self._read_status_byte(),
            self._quantity("PLASER:POWER?", "W", "pump power"),
            self._quantity("READ:HUM?", "%", "humidity"),
        )

    def _store_config(self, answers: tuple[float, int, float, float]) -> None:
        warmup, status, pump, humidity = answers
        self.warmup.update(warmup)
        self.status_byte.update(status)
        self.pump_power.update(pump)
        self.humidity.update(humidity)
        # [M] *STB? bit 0: emission on. The laser's word, not the last ON/OFF this driver sent
        # (the front panel, its key or the watchdog turn it off too).
        self.emission.update(status & 1)

    def _refresh_settings(self) -> None:
        with self.port.lease(self.name, self.lease_timeout) as lease:
            self._check_generation(lease)
            self._held = lease  # the queries below share it: one transaction group
            try:
                answers = self._ask_config()
                shutter = self._read_shutter()
            finally:
                self._held = None
        self._store_config(answers)
        self.shutter.update(shutter)

    def _read_wavelength(self) -> float:
        nm = self._quantity("READ:WAV?", "nm", "wavelength")
        self.wavelength._store(nm)
        return nm

    def _read_power(self) -> float:
        return self._quantity("READ:POWER?", "W", "power")

    def _read_warmup(self) -> float:
        return self._quantity("READ:PCTWARMEDUP?", "%", "warm-up")

    def _read_status_byte(self) -> int:
        reply = self._query("*STB?")
        if not _INTEGER.match(reply) or int(reply) > 255:
            raise ReplyError(
                "the *STB? reply is not a status byte (0-255)",
                reply=reply,
                instrument=self.name,
                resource=self.port.url,
            )
        return int(reply)

    def _read_shutter(self) -> int:
        reply = self._query("SHUTTER?")
        if reply not in ("0", "1"):
            raise ReplyError(
                "the SHUTTER? reply is not 0 or 1",
                reply=reply,
                instrument=self.name,
                resource=self.port.url,
                fix="check the cable and baud rate; the next query resends.",
            )
        return int(reply)

    def _quantity(self, query: str, unit: str, what: str) -> float:
        return _parse_quantity(
            self._query(query), unit, what=what, instrument=self.name, resource=self.port.url
        )

    def _shutter_io(self, state: int) -> None:
        self._command(f"SHUTTER {state}")
        deadline = time.monotonic() + self.shutter_timeout
        for delay in _delays(self.poll_interval):
            seen = self._read_shutter()
            self.shutter.update(seen)
            if seen == state:
                return
            if time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
        raise InstrumentFault(
            f"MaiTai ignored SHUTTER {state}: the laser may be in local/front-panel mode or an "
            f"interlock is open (SHUTTER? still reads {seen} after {self.shutter_timeout:g} s).",
            instrument=self.name,
            resource=self.port.url,
            fix="switch the laser to remote control and check the interlocks, then try again.",
        )

    def _close_shutter_quietly(self) -> None:
        try:
            self._shutter_io(0)
        except Exception as exc:  # noqa: BLE001 - stop() must not raise; the failure is logged
            log.error("%s: closing the shutter on stop failed: %s", self.name, exc)

    def _emission_io(self, state: int) -> None:
        if state:
            pct = self._read_warmup()
            self.warmup.update(pct)
            if pct < 100.0:
                raise InstrumentFault(
                    f"MaiTai refuses ON while warming up: READ:PCTWARMEDUP? reads {pct:.2f}% "
                    "and the laser ignores ON until it reaches 100%.",
                    instrument=self.name,
                    resource=self.port.url,
                    fix="wait until the warm-up reads 100% (laser.warmup), then turn emission "
                    "on again.",
                )
            self._command("ON")
        else:
            self._command("OFF")
        self.emission.update(state)

    # --- the wire ----------------------------------------------------------------------------

    def _command(self, command: str) -> None:
        """A silent set command; the laser then gets ``write_delay`` before the next command."""
        with self.port.lease(self.name, self.lease_timeout) as lease:
            self._check_generation(lease)
            self._wait_quiet()
            lease.write(command.encode("ascii") + self._write_term)
            self._quiet_until = time.monotonic() + self.write_delay

    def _query(self, query: str) -> str:
        if self._held is not None:
            return self._exchange_in(self._held, query)
        with self.port.lease(self.name, self.lease_timeout) as lease:
            self._check_generation(lease)
            return self._exchange_in(lease, query)

    def _wait_quiet(self) -> None:
        wait = self._quiet_until - time.monotonic()
        if wait > 0:
            time.sleep(wait)

    def _check_generation(self, lease: Any) -> None:
        # The port was reopened (USB unplug): the laser behind it may have been power-cycled or
        # swapped, so it proves its identity again before anything else is sent.
        if self._generation is not None and self.port.generation != self._generation:
            log.warning(
                "%s: port %s was reopened; checking identity again", self.name, self.port.url
            )
            self._identify(lease)

    def _exchange_in(self, lease: Any, query: str) -> str:
        self._wait_quiet()
        stale = lease.drain()
        if stale.strip(b"\r\n"):
            log.debug("%s: discarded stale bytes %r before %s", self.name, stale, query)
        lease.write(query.encode("ascii") + self._write_term)
        try:
            raw = lease.read_until(self._read_term, self.reply_timeout)
        except InstrumentTimeout:
            partial = lease.drain()
            raw = self._other_terminator(partial)
            if raw is None:
                raise InstrumentTimeout(
                    f"no reply to {query!r} within {self.reply_timeout:g} s",
                    reply=partial,
                    instrument=self.name,
                    resource=self.port.url,
                    fix="check that the laser is on and the cable and baud rate are right; "
                    "raise reply_timeout if the unit is slow. The next query resends.",
                ) from None
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ReplyError(
                f"the reply to {query!r} is not ASCII (line noise or wrong baud rate)",
                reply=raw,
                instrument=self.name,
                resource=self.port.url,
                fix="check the baud rate and the cable; the next query resends.",
            ) from None
        return text.strip("\r\n\t ")

    def _other_terminator(self, partial: bytes) -> bytes | None:
        # A unit configured one way but replying with another terminator: accept a complete line
        # that ends in CR or LF, and read with that terminator from now on.
        for term in (b"\r", b"\n"):
            if term != self._read_term and partial.rstrip(b"\r\n") and partial.endswith(term):
                name = {b"\r": "CR", b"\n": "LF"}[term]
                log.warning(
                    "%s: replies end in %s, not %s as configured; following the unit (set "
                    "reply_terminator = %r in the profile)",
                    self.name,
                    name,
                    self.reply_terminator,
                    name,
                )
                self._read_term = term
                return partial.strip(b"\r\n").splitlines()[-1]
        return None


def _positive(value: Any, key: str, name: str, *, zero: bool = False) -> float:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and (value >= 0 if zero else value > 0)
    )
    if not ok:
        raise ConfigError(
            f"{key} must be a finite number of seconds/units {'>= 0' if zero else '> 0'}, "
            f"got {value!r}.",
            key=key,
            instrument=name,
        )
    return float(value)


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


def build(
    port: SharedSerialPort, *, name: str, settings: MaiTaiSettings, timeout: float
) -> MaiTaiLaser:
    """The laser of one profile entry, not connected (the runtime connects it); the entry's
    ``timeout`` is how long a reply may take."""
    return MaiTaiLaser(
        port,
        name=name,
        wavelength_limits=tuple(settings.wavelength_limits),
        reply_terminator=settings.reply_terminator,
        reply_timeout=timeout,
    )


register_driver(
    "maitai", settings=MaiTaiSettings, build=build, simulator="maitai", legacy_twin="maitai"
)
