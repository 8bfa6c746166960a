"""Wire-level simulator of a Spectra-Physics MaiTai Ti:Sapphire laser (INSTRUMENTS.md, "MaiTai").

The laser is a state machine driven by the simulator clock, not by the commands alone: the
warm-up percentage ramps after power-up, the wavelength slews towards its target over seconds and
the output power dips while it does. Drivers that assume "set, then it is so" break on the real
laser; against this simulator they break the same way, which is the point.

Model (device time; the engine's ``speed`` factor scales all of it):

* Warm-up: ``READ:PCTWARMEDUP?`` rises linearly from 0 % at construction ("power-up") to 100 %
  after ``warmup_s`` (default 60 s). ``warmed_up=True`` starts warm. ``ON`` before 100 % is
  ignored and latches status bit 6 (64).
* Tuning: the wavelength moves linearly at ``tuning_rate_nm_s`` (default 50 nm/s) from where it
  is to the last accepted target and then stops exactly there; queries report the current value
  rounded to 1 nm (``820nm``). A new target during a slew starts from the current value. Targets
  outside 690-1040 nm are ignored and latch status bit 5 (32).
* Power: ``peak_power_w`` (3.000 W) at 800 nm, falling off as an asymmetric Gaussian (width 90 nm
  towards the blue, 130 nm towards the red: about 1.4 W at 690 nm, 0.55 W at 1040 nm), times
  ``tuning_power_fraction`` (0.2) while tuning. What leaves the laser is 0 unless emission is on
  and the shutter open; ``READ:POWER?`` then says ``0.00000W`` as the real one does.
* ``*STB?`` (decimal): 1 emission on, 2 modelocked (on, warmed up, not tuning), 4 shutter open,
  8 warmed up, 16 tuning, 32 wavelength request refused (out of range), 64 ``ON`` refused
  (warming up). Bits 32 and 64 are latched and cleared by reading ``*STB?``.
* ``local_mode`` (front panel or interlock): shutter set commands are accepted and ignored.
* Unknown or malformed commands: silence and an entry in ``protocol_errors``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

from daqbridge.errors import ConfigError
from daqbridge.sim._core import Faults, SerialSimulator

IDN = "Spectra Physics,MaiTai,3227/51054/40856,0245-2.00.34 / CD00000019 / 214-00.004.057"
WAVELENGTH_MIN_NM = 690.0
WAVELENGTH_MAX_NM = 1040.0
PEAK_WAVELENGTH_NM = 800.0
PUMP_SETPOINT_W = 13.43
HUMIDITY_PCT = 7.26

STB_EMISSION = 1
STB_MODELOCKED = 2
STB_SHUTTER_OPEN = 4
STB_WARMED_UP = 8
STB_TUNING = 16
STB_WAVELENGTH_REFUSED = 32
STB_ON_REFUSED = 64

TERMINATORS = {"LF": b"\n", "CR": b"\r", "CRLF": b"\r\n"}

_INSTRUMENT = "MaiTai simulator"


def _keyword(spec: str) -> frozenset[str]:
    """SCPI keyword ``WAVelength`` -> {"WAV", "WAVELENGTH"}: the short form is its capitals."""
    short = "".join(c for c in spec if c.isupper() or c.isdigit() or c == "*")
    return frozenset({short, spec.upper()})


def _path(*specs: str) -> tuple[frozenset[str], ...]:
    return tuple(_keyword(s) for s in specs)


def _as_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(
        f"option {name}={value!r} is not a boolean",
        key=name,
        instrument=_INSTRUMENT,
        fix=f"use {name}=true or {name}=false",
    )


def _as_float(name: str, value: object, *, minimum: float = 0.0, inclusive: bool = True) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    ok = number >= minimum if inclusive else number > minimum
    if not ok:  # also catches NaN
        bound = ">=" if inclusive else ">"
        raise ConfigError(
            f"option {name}={value!r} is not a number {bound} {minimum:g}",
            key=name,
            instrument=_INSTRUMENT,
            fix=f"give {name} as a number {bound} {minimum:g}",
        )
    return number


def reply_terminator_bytes(value: str | bytes) -> bytes:
    """'LF' / 'CR' / 'CRLF' (or the raw bytes) -> the bytes ending every reply."""
    if isinstance(value, bytes) and value in TERMINATORS.values():
        return value
    if isinstance(value, str):
        key = value.strip().upper().replace(" ", "").replace("+", "")
        if key in TERMINATORS:
            return TERMINATORS[key]
        if value in ("\n", "\r", "\r\n"):
            return value.encode()
    raise ConfigError(
        f"option reply_terminator={value!r} is not a terminator the MaiTai uses",
        key="reply_terminator",
        instrument=_INSTRUMENT,
        fix="use reply_terminator=LF (default), CR or CRLF",
    )


class MaiTaiSimulator(SerialSimulator):
    """A MaiTai on a serial line. Public helpers let other simulators (a power meter) couple to it.

    Options: ``reply_terminator`` ('LF', 'CR', 'CRLF'), ``reply_latency`` (device seconds before
    each reply, default 5 ms; the real laser takes up to 2 s), ``warmup_s``, ``warmed_up``,
    ``local_mode``, ``wavelength_nm`` (start), ``tuning_rate_nm_s``, ``peak_power_w``,
    ``tuning_power_fraction``, plus the engine's ``speed``, ``faults``, ``byte_time``,
    ``baudrate``, ``clock``. String values (from a URL or the CLI) are accepted.
    """

    kind: ClassVar[str] = "maitai"
    default_baudrate: ClassVar[int] = 9600

    def __init__(
        self,
        *,
        reply_terminator: str | bytes = "LF",
        reply_latency: float | str = 0.005,
        warmup_s: float | str = 60.0,
        warmed_up: bool | str = False,
        local_mode: bool | str = False,
        emission_on: bool | str = False,
        shutter_open: bool | str = False,
        wavelength_nm: float | str = PEAK_WAVELENGTH_NM,
        tuning_rate_nm_s: float | str = 50.0,
        peak_power_w: float | str = 3.0,
        tuning_power_fraction: float | str = 0.2,
        speed: float = 1.0,
        faults: Faults | None = None,
        byte_time: bool = False,
        baudrate: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        kw = {} if clock is None else {"clock": clock}
        super().__init__(
            speed=_as_float("speed", speed, inclusive=False),
            faults=faults,
            byte_time=_as_bool("byte_time", byte_time),
            baudrate=int(_as_float("baudrate", baudrate, inclusive=False)) if baudrate else None,
            **kw,
        )
        self.reply_terminator = reply_terminator_bytes(reply_terminator)
        self.reply_latency = _as_float("reply_latency", reply_latency)
        self.warmup_s = _as_float("warmup_s", warmup_s)
        self.tuning_rate_nm_s = _as_float("tuning_rate_nm_s", tuning_rate_nm_s, inclusive=False)
        self.peak_power_w = _as_float("peak_power_w", peak_power_w)
        self.tuning_power_fraction = _as_float("tuning_power_fraction", tuning_power_fraction)
        start = _as_float("wavelength_nm", wavelength_nm)
        if not WAVELENGTH_MIN_NM <= start <= WAVELENGTH_MAX_NM:
            raise ConfigError(
                f"option wavelength_nm={wavelength_nm!r} is outside the tuning range",
                key="wavelength_nm",
                instrument=_INSTRUMENT,
                fix=f"give a start wavelength in {WAVELENGTH_MIN_NM:g}-{WAVELENGTH_MAX_NM:g} nm",
            )
        self.local_mode = _as_bool("local_mode", local_mode)
        self._powered_at = self.clock()
        self._warm_from_start = _as_bool("warmed_up", warmed_up) or self.warmup_s == 0
        # A lab left running overnight: emission on and shutter open at start (only once warm,
        # as the real laser refuses ON before warm-up completes).
        self.emission = _as_bool("emission_on", emission_on) and self._warm_from_start
        self.shutter_open = _as_bool("shutter_open", shutter_open)
        self._tune_from = start
        self._tune_target = start
        self._tune_started = self._powered_at
        self._latched = 0
        self.refusals: list[str] = []
        """Commands the laser accepted and ignored (ON while warming up, out-of-range targets)."""
        self._commands = self._command_table()

    # --- physics (all under the lock; callers from other threads use the public helpers) --------

    def warmup_percent(self) -> float:
        with self.lock:
            if self._warm_from_start:
                return 100.0
            elapsed = self.sim_elapsed(self._powered_at)
            return min(100.0, 100.0 * elapsed / self.warmup_s)

    def is_warmed_up(self) -> bool:
        return self.warmup_percent() >= 100.0

    def wavelength_nm(self) -> float:
        """The wavelength the laser emits now (on its way to the target while tuning)."""
        with self.lock:
            span = self._tune_target - self._tune_from
            travelled = self.tuning_rate_nm_s * self.sim_elapsed(self._tune_started)
            if travelled >= abs(span):
                return self._tune_target
            return self._tune_from + math.copysign(travelled, span)

    def target_wavelength_nm(self) -> float:
        with self.lock:
            return self._tune_target

    def is_tuning(self) -> bool:
        return self.wavelength_nm() != self.target_wavelength_nm()

    def gain(self, wavelength_nm: float) -> float:
        """Relative output vs wavelength: 1 at 800 nm, a smooth Ti:Sapphire-like curve."""
        width = 90.0 if wavelength_nm < PEAK_WAVELENGTH_NM else 130.0
        return math.exp(-0.5 * ((wavelength_nm - PEAK_WAVELENGTH_NM) / width) ** 2)

    def output_power_w(self) -> float:
        """Optical power leaving the laser, W: 0 with emission off or the shutter closed."""
        with self.lock:
            if not (self.emission and self.shutter_open):
                return 0.0
            return self._intracavity_power_w()

    def _intracavity_power_w(self) -> float:
        wavelength = self.wavelength_nm()
        power = self.peak_power_w * self.gain(wavelength)
        if wavelength != self._tune_target:
            power *= self.tuning_power_fraction
        return power

    def status_byte(self) -> int:
        """``*STB?`` value without clearing the latched refusal bits."""
        with self.lock:
            tuning = self.is_tuning()
            warm = self.is_warmed_up()
            stb = self._latched
            if self.emission:
                stb |= STB_EMISSION
                if warm and not tuning:
                    stb |= STB_MODELOCKED
            if self.shutter_open:
                stb |= STB_SHUTTER_OPEN
            if warm:
                stb |= STB_WARMED_UP
            if tuning:
                stb |= STB_TUNING
            return stb

    def power_cycle(self) -> None:
        """Mains off and on: emission off, shutter closed, warm-up starts again from 0 %."""
        with self.lock:
            self._powered_at = self.clock()
            self._warm_from_start = self.warmup_s == 0
            self.emission = False
            self.shutter_open = False
            self._latched = 0

    def set_local_mode(self, local: bool) -> None:
        """Front panel / interlock: while True, shutter commands are accepted and ignored."""
        with self.lock:
            self.local_mode = bool(local)

    # --- wire ---------------------------------------------------------------------------------

    def _answer(self, text: str) -> None:
        self.reply(text, delay=self.real_delay(self.reply_latency))

    def _command_table(self) -> list[tuple[tuple[frozenset[str], ...], str, Callable]]:
        """(keyword path, 'query' | 'set' | 'action', handler), in the manual's spelling."""
        return [
            (_path("*IDN"), "query", lambda: self._answer(IDN)),
            (_path("*STB"), "query", self._query_stb),
            (_path("WAVelength"), "query", self._query_wavelength),
            (_path("READ", "WAVelength"), "query", self._query_wavelength),
            (_path("WAVelength"), "set", self._set_wavelength),
            (_path("POWer"), "query", self._query_power),
            (_path("READ", "POWer"), "query", self._query_power),
            (_path("SHUTter"), "query", lambda: self._answer("1" if self.shutter_open else "0")),
            (_path("SHUTter"), "set", self._set_shutter),
            (_path("ON"), "action", self._emission_on),
            (_path("OFF"), "action", self._emission_off),
            (_path("READ", "PCTWarmedup"), "query", self._query_warmup),
            (_path("MODE"), "query", lambda: self._answer("POW")),
            (_path("PLASer", "POWer"), "query", lambda: self._answer(f"{PUMP_SETPOINT_W:.2f}W")),
            (_path("READ", "PLASer", "POWer"), "query", self._query_pump),
            (_path("READ", "HUMidity"), "query", lambda: self._answer(f"{HUMIDITY_PCT:.2f}%")),
        ]

    def handle_line(self, line: str) -> None:
        parts = line.split(None, 1)
        header = parts[0].upper().lstrip(":")
        argument = parts[1].strip() if len(parts) > 1 else ""
        is_query = header.endswith("?")
        nodes = header.rstrip("?").split(":")
        if is_query and argument:
            self.protocol_error(line, "a query takes no argument")
            return
        for path, form, handler in self._commands:
            if len(path) != len(nodes) or not all(n in k for n, k in zip(nodes, path, strict=True)):
                continue
            if form == "query" and is_query:
                handler()
                return
            if form == "set" and not is_query and argument:
                handler(line, argument)
                return
            if form == "action" and not is_query and not argument:
                handler()
                return
        self.protocol_error(line, "not a MaiTai command")

    # --- handlers -------------------------------------------------------------------------------

    def _query_stb(self) -> None:
        stb = self.status_byte()
        self._latched = 0
        self._answer(str(stb))

    def _query_wavelength(self) -> None:
        self._answer(f"{round(self.wavelength_nm()):d}nm")

    def _query_power(self) -> None:
        power = self.output_power_w()
        self._answer("0.00000W" if power <= 0 else f"{power:.3f}W")

    def _query_warmup(self) -> None:
        self._answer(f"{self.warmup_percent():.2f}%")

    def _query_pump(self) -> None:
        self._answer(f"{PUMP_SETPOINT_W if self.emission else 0.0:.2f}W")

    def _set_wavelength(self, line: str, argument: str) -> None:
        try:
            target = float(argument)
        except ValueError:
            self.protocol_error(line, "wavelength is not a number")
            return
        if not math.isfinite(target):
            self.protocol_error(line, "wavelength is not a number")
            return
        if not WAVELENGTH_MIN_NM <= target <= WAVELENGTH_MAX_NM:
            self._latched |= STB_WAVELENGTH_REFUSED
            self.refusals.append(f"{line}: outside {WAVELENGTH_MIN_NM:g}-{WAVELENGTH_MAX_NM:g} nm")
            return
        self._tune_from = self.wavelength_nm()
        self._tune_started = self.clock()
        self._tune_target = target

    def _set_shutter(self, line: str, argument: str) -> None:
        if argument not in ("0", "1"):
            self.protocol_error(line, "shutter takes 0 or 1")
            return
        if self.local_mode:
            self.refusals.append(f"{line}: local mode, shutter command ignored")
            return
        self.shutter_open = argument == "1"

    def _emission_on(self) -> None:
        if not self.is_warmed_up():
            self._latched |= STB_ON_REFUSED
            self.refusals.append(f"ON: warming up ({self.warmup_percent():.2f}%)")
            return
        self.emission = True

    def _emission_off(self) -> None:
        self.emission = False
