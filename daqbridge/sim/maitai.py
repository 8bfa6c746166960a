"""Wire-level simulator of a Spectra-Physics MaiTai Ti:Sapphire laser (INSTRUMENTS.md, "MaiTai").

The laser is a state machine driven by the simulator clock, not by the commands alone: the
warm-up percentage ramps after power-up, the wavelength slews towards its target over seconds and
the output power dips while it does. Drivers that assume "set, then it is so" break on the real
laser; against this simulator they break the same way, which is the point.

Sources (where they disagree, the choice is named below):

* [M] Spectra-Physics, *Mai Tai Mode-Locked Ti:Sapphire Laser, User's Manual*, chapter 6
  "Operation": "The RS-232 Serial Port", "Command/Query/Response Format", "Commands and Queries
  Used by the Mai Tai" (quick reference and full description), Tables 6-1 and 6-2 (pp. 80-87),
  and the Info/Setup menus (pp. 75-76). The command set below is that quick reference, whole.
* [A] acq4/acq4, ``acq4/drivers/MaiTai/maitai.py``: reads ``WAVelength:MIN?``/``MAX?`` before
  every tune and refuses to tune without them; ``READ:WAVelength?`` for the actual wavelength;
  modes ``PCUR``, ``PPOW``, ``POW``; ``PLASer:POWer`` set and ``PLASer:POWer?`` read back.
* [MM] Micro-Manager ``TwoPhoton`` device adapter, class ``MaiTai`` (Nenad Amodaj, 100X Imaging):
  ``WAVELENGTH:MIN?``/``MAX?`` at initialisation (it fails to initialise without them),
  ``READ:WAVELENGTH?`` as the wavelength property.
* [BT] SWC-Advanced-Microscopy/BakingTray, ``code/components/laser/maitai.m``: tuning is
  ``WAVELENGTH?`` (commanded) against ``READ:WAVELENGTH??`` (actual; note the doubled ``?``,
  which the real laser accepts); ``TIMER:WATCHDOG n`` then ``TIMER:WATCHDOG?`` read back after
  ``ON`` "otherwise it will turn off again"; ``PLAS:AHIS?``, ``PLAS:ERRC?``.
* [B] MATLAB class ``MaiTai`` by K. Neuhaus (Biozentrum Basel), "tested with Mai Tai BB":
  ``READ:PLASer:DIODe1:CURRent?`` parsed up to ``A1`` (``A2`` for diode 2), temperatures up to
  ``C1``/``C2``, ``CONTrol:PHAse?`` up to ``%``, ``READ:PLASer:SHGS?`` ``0S``..``3S``, ``MODE``
  taking ``PCURrent``/``PPOWer``/``POWer``, ``SAVe``.
* [S] ``maiTaiController.m`` (MATLAB GUI, 2004): lists the same command set, sends
  ``TIMER:WATCHDOG 0`` at start-up, parses ``PLASER:ERRCODE?`` as Table 6-1 bits.
* [C] C# ``TC1K_LaserMonitor`` ``laser_MaiTai``: ``PLASER:ERRCODE?`` answers ``0`` on a Mai Tai
  BB; ``MODE PPOW`` then ``PLASER:POWER x`` to set the pump, ``MODE POW`` to go back; searches the
  ``PLAS:AHIS?`` reply for the codes 116 and 120.

What the simulator does (device time; the engine's ``speed`` factor scales all of it):

* Warm-up: ``READ:PCTWARMEDUP?`` rises linearly from 0 % at construction ("power-up") to 100 %
  after ``warmup_s`` (default 60 s). ``warmed_up=True`` starts warm. ``ON`` before 100 % is
  ignored, latches status bit 6 (64) and queues an execution error ([M]: "an execution error").
* Tuning: the wavelength moves linearly at ``tuning_rate_nm_s`` (default 50 nm/s) from where it
  is to the last accepted target and then stops exactly there. ``WAVELENGTH?`` answers the last
  commanded value at once, ``READ:WAVELENGTH?`` the actual one, both rounded to 1 nm (``820nm``)
  ([M], [A], [BT]). A new target during a slew starts from the current value. Targets outside
  ``wavelength_min_nm``-``wavelength_max_nm`` (690-1040 nm, what ``WAVELENGTH:MIN?``/``MAX?``
  answer) are ignored, latch status bit 5 (32) and queue an execution error. [M] gives
  750-850 or 780-920 nm for early units and [C] 710-990 nm for a Mai Tai HP: the limits are
  options, so a driver that hard-codes 690-1040 instead of asking fails against them. An accepted
  ``WAVELENGTH`` also resets the RF phase and the pump setpoint to their factory values ([M]).
* Power: ``peak_power_w`` (3.000 W) at 800 nm, falling off as an asymmetric Gaussian (width 90 nm
  towards the blue, 130 nm towards the red: about 1.4 W at 690 nm, 0.55 W at 1040 nm), times
  ``tuning_power_fraction`` (0.2) while tuning. In ``MODE POW`` (IR power regulation, the lab
  unit's ``MODE?`` answer) that is the output; in ``PPOW`` and ``PCUR`` it scales with the pump
  (``PLASER:POWER`` W, or ``PLASER:PCURRENT`` % of current) relative to the factory 13.43 W.
  What leaves the laser is 0 unless emission is on and the shutter open; ``READ:POWER?`` then says
  ``0.00000W`` as the real one does.
* ``*STB?`` (decimal): 1 emission on, 2 modelocked (on, modelocker enabled, warmed up, not
  tuning), 4 shutter open, 8 warmed up, 16 tuning, 32 wavelength request refused (out of range),
  64 ``ON`` refused (warming up). [M] defines only bits 1 and 2; the others are this simulator's.
  Bits 32 and 64 are latched and cleared by reading ``*STB?``.
* Pump and diagnostics ([M] unless noted): ``MODE PPOW|PCUR|POW`` (``MODE?`` answers the short
  form; default ``POW``: [M] says the J40-era unit starts in ``PPOW``, the lab's unit and [A]/[C]
  know ``POW``); ``PLASER:POWER w`` (0-20 W: [M]'s 0-5 W is the J40 pump, the lab's reads 13.43 W)
  and ``PLASER:POWER?`` (last commanded, ``13.43W``); ``PLASER:PCURRENT p`` / ``?`` (0-100 %,
  ``75.0%``); ``READ:PLASER:POWER?`` and ``READ:PLASER:PCURRENT?`` (actual; 0 with emission off);
  ``READ:PLASER:DIODE1:CURRENT?`` -> ``21.0A1`` (``A2`` for diode 2; 0.0 with emission off) and
  ``READ:PLASER:DIODE1:TEMPERATURE?`` -> ``26.0C1`` (diode 2: ``27.0C2``). [M] describes the
  current as "75.1%" and the temperature as "20.5"; [B] (a BB unit) reads the ``A1``/``C1``
  suffixes, which [S] and [C] also strip: the suffixed form is the one here, so a driver that
  expects a bare number fails loudly instead of misreading. ``READ:PLASER:SHGS?``: ``1S`` (oven
  heating) while warming up, ``0S`` (settled) after ([B] also knows ``3S`` settling).
  ``CONTROL:PHASE n`` / ``?`` (``50.00%``, 0-100); ``CONTROL:MLENABLE 0|1`` / ``?`` (``ON``
  enables the modelocker, ``OFF`` disables it, the command overrides). ``PLASER:ERRCODE?`` ->
  ``0`` ([C]; [S] parses hex bits, and an older HP firmware is said to append ``e``).
  ``PLASER:HISTORY?`` -> 16 three-digit codes, most recent first (``001 000 000 ...``, [M] Info
  menu); this simulator writes 001 when ``ON`` succeeds in power mode, 002 in current mode (the
  meanings [A]'s forks list) and 000 at ``OFF`` or a watchdog trip (its own choice).
  ``PLASER:AHISTORY?`` answers the same codes ([M] only says "an ASCII version"; [C] looks for
  code numbers in it).
* Errors: ``SYSTEM:ERR?`` pops one entry of a 16-deep queue: ``0, No error`` when empty, else the
  Table 6-2 code and the Table 6-1 name, ``129, CMD_ERR`` (command or argument not understood) or
  ``130, EXE_ERR`` (understood but not executable: out of range, ``ON`` while warming up). [M]
  gives no verbatim reply; the numbers are its tables'.
* ``TIMER:WATCHDOG n`` (seconds, 0 disables; ``TIMER:WATCHDOG?`` reads it back as ``3.00``, [BT]):
  when no valid command or query arrives for ``n`` device seconds, the pump laser turns off.
  ``watchdog_s`` (default 0) sets the power-up value ([BT] and the Setup menu's "3.00" show units
  that start with it on).
* ``SAVE``: the mode, pump settings and wavelength come back after ``power_cycle()``; without a
  ``SAVE`` the power-up values of the options do. ``SYSTEM:COMMUNICATIONS:SERIAL:BAUD n`` (300,
  600, 1200, 4800, 9600, 19200, 38400, 57600) changes the simulated baud rate (byte timing only:
  a pty has no baud rate to mismatch).
* ``local_mode`` (front panel or interlock): shutter set commands are accepted and ignored.
* Set commands never reply ([M]: "will not generate any signals ... unless a query command is
  received"). Unknown or malformed commands: silence, an entry in ``protocol_errors`` and a
  ``CMD_ERR`` in the ``SYSTEM:ERR?`` queue.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import ClassVar

from daqbridge.errors import ConfigError
from daqbridge.sim._core import Faults, SerialSimulator

IDN = "Spectra Physics,MaiTai,3227/51054/40856,0245-2.00.34 / CD00000019 / 214-00.004.057"
WAVELENGTH_MIN_NM = 690.0
WAVELENGTH_MAX_NM = 1040.0
PEAK_WAVELENGTH_NM = 800.0
PUMP_SETPOINT_W = 13.43
PUMP_MAX_W = 20.0
PUMP_CURRENT_FACTORY_PCT = 75.0
DIODE_CURRENT_A = (21.0, 22.0)
"""Diode currents at the factory pump setpoint ([M] Info menu)."""
DIODE_TEMPERATURE_C = (26.0, 27.0)
RF_PHASE_FACTORY_PCT = 50.0
HUMIDITY_PCT = 7.26
MODES = {"POW": "POW", "POWER": "POW", "PPOW": "PPOW", "PPOWER": "PPOW"}
MODES |= {"PCUR": "PCUR", "PCURRENT": "PCUR"}
BAUD_RATES = frozenset({300, 600, 1200, 4800, 9600, 19200, 38400, 57600})
HISTORY_DEPTH = 16
ERROR_QUEUE_DEPTH = 16

STB_EMISSION = 1
STB_MODELOCKED = 2
STB_SHUTTER_OPEN = 4
STB_WARMED_UP = 8
STB_TUNING = 16
STB_WAVELENGTH_REFUSED = 32
STB_ON_REFUSED = 64

CMD_ERR = 129
"""Table 6-2: CE + AE, a command (or its argument) not understood."""
EXE_ERR = 130
"""Table 6-2: EE + AE, understood but could not be executed."""
ERROR_NAMES = {CMD_ERR: "CMD_ERR", EXE_ERR: "EXE_ERR"}

HISTORY_ON_POWER_MODE = 1
HISTORY_ON_CURRENT_MODE = 2
HISTORY_OFF = 0

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


def _number(argument: str) -> float | None:
    try:
        value = float(argument)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


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
    ``local_mode``, ``wavelength_nm`` (start), ``wavelength_min_nm`` / ``wavelength_max_nm`` (the
    unit's tuning range), ``tuning_rate_nm_s``, ``peak_power_w``, ``tuning_power_fraction``,
    ``watchdog_s`` (at power-up), plus the engine's ``speed``, ``faults``, ``byte_time``,
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
        wavelength_min_nm: float | str = WAVELENGTH_MIN_NM,
        wavelength_max_nm: float | str = WAVELENGTH_MAX_NM,
        tuning_rate_nm_s: float | str = 50.0,
        peak_power_w: float | str = 3.0,
        tuning_power_fraction: float | str = 0.2,
        watchdog_s: float | str = 0.0,
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
        self.wavelength_min_nm = _as_float("wavelength_min_nm", wavelength_min_nm)
        self.wavelength_max_nm = _as_float("wavelength_max_nm", wavelength_max_nm)
        if not self.wavelength_min_nm < self.wavelength_max_nm:
            raise ConfigError(
                f"options wavelength_min_nm={wavelength_min_nm!r} and wavelength_max_nm="
                f"{wavelength_max_nm!r} are not an increasing pair",
                key="wavelength_min_nm",
                instrument=_INSTRUMENT,
                fix="give wavelength_min_nm < wavelength_max_nm (the unit's tuning range, nm)",
            )
        start = _as_float("wavelength_nm", wavelength_nm)
        if not self.wavelength_min_nm <= start <= self.wavelength_max_nm:
            raise ConfigError(
                f"option wavelength_nm={wavelength_nm!r} is outside the tuning range",
                key="wavelength_nm",
                instrument=_INSTRUMENT,
                fix=f"give a start wavelength in {self.wavelength_min_nm:g}-"
                f"{self.wavelength_max_nm:g} nm",
            )
        self._power_up_watchdog_s = _as_float("watchdog_s", watchdog_s)
        self.watchdog_s = self._power_up_watchdog_s
        self.local_mode = _as_bool("local_mode", local_mode)
        self._powered_at = self.clock()
        self._last_command_at = self._powered_at
        self._warm_from_start = _as_bool("warmed_up", warmed_up) or self.warmup_s == 0
        # A lab left running overnight: emission on and shutter open at start (only once warm,
        # as the real laser refuses ON before warm-up completes).
        self.emission = _as_bool("emission_on", emission_on) and self._warm_from_start
        self.modelocker_enabled = self.emission
        self.shutter_open = _as_bool("shutter_open", shutter_open)
        self._tune_from = start
        self._tune_target = start
        self._tune_started = self._powered_at
        self._latched = 0
        self.mode = "POW"
        self.pump_setpoint_w = PUMP_SETPOINT_W
        self.pump_current_pct = PUMP_CURRENT_FACTORY_PCT
        self.rf_phase_pct = RF_PHASE_FACTORY_PCT
        self.pump_error_code = 0
        """What ``PLASER:ERRCODE?`` answers; a test may set a pump fault code here."""
        self._history: deque[int] = deque([HISTORY_OFF] * HISTORY_DEPTH, maxlen=HISTORY_DEPTH)
        if self.emission:
            self._history.appendleft(HISTORY_ON_POWER_MODE)
        self._errors: deque[tuple[int, str]] = deque()
        self._saved = self._settings()
        self.watchdog_trips = 0
        """How often the watchdog turned the pump laser off."""
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

    def pump_power_w(self) -> float:
        """What the pump laser emits, W (``READ:PLASER:POWER?``): 0 with emission off."""
        with self.lock:
            self._check_watchdog()
            if not self.emission:
                return 0.0
            if self.mode == "PCUR":
                return PUMP_SETPOINT_W * self.pump_current_pct / PUMP_CURRENT_FACTORY_PCT
            return self.pump_setpoint_w

    def pump_current_percent(self) -> float:
        """Pump diode current, % of full (``READ:PLASER:PCURRENT?``): 0 with emission off."""
        with self.lock:
            return PUMP_CURRENT_FACTORY_PCT * self.pump_power_w() / PUMP_SETPOINT_W

    def output_power_w(self) -> float:
        """Optical power leaving the laser, W: 0 with emission off or the shutter closed."""
        with self.lock:
            self._check_watchdog()
            if not (self.emission and self.shutter_open):
                return 0.0
            return self._intracavity_power_w()

    def _intracavity_power_w(self) -> float:
        wavelength = self.wavelength_nm()
        power = self.peak_power_w * self.gain(wavelength)
        if self.mode != "POW":  # no IR power regulation: the output follows the pump
            power *= self.pump_power_w() / PUMP_SETPOINT_W
        if wavelength != self._tune_target:
            power *= self.tuning_power_fraction
        return power

    def status_byte(self) -> int:
        """``*STB?`` value without clearing the latched refusal bits."""
        with self.lock:
            self._check_watchdog()
            tuning = self.is_tuning()
            warm = self.is_warmed_up()
            stb = self._latched
            if self.emission:
                stb |= STB_EMISSION
                if warm and not tuning and self.modelocker_enabled:
                    stb |= STB_MODELOCKED
            if self.shutter_open:
                stb |= STB_SHUTTER_OPEN
            if warm:
                stb |= STB_WARMED_UP
            if tuning:
                stb |= STB_TUNING
            return stb

    def history(self) -> list[int]:
        """The pump power supply's status codes, most recent first (``PLASER:HISTORY?``)."""
        with self.lock:
            self._check_watchdog()
            return list(self._history)

    def errors(self) -> list[tuple[int, str]]:
        """The ``SYSTEM:ERR?`` queue, oldest first, without emptying it."""
        with self.lock:
            return list(self._errors)

    def queue_error(self, code: int) -> None:
        """Put a Table 6-2 code (``CMD_ERR`` 129, ``EXE_ERR`` 130, ...) in the error queue."""
        with self.lock:
            # A full queue keeps its oldest entries: the first error is the one that explains.
            if len(self._errors) < ERROR_QUEUE_DEPTH:
                self._errors.append((code, ERROR_NAMES.get(code, "ERROR")))

    def power_cycle(self) -> None:
        """Mains off and on: emission off, shutter closed, warm-up starts again from 0 %, and
        what the last ``SAVE`` stored (or the power-up options) comes back."""
        with self.lock:
            self._powered_at = self.clock()
            self._last_command_at = self._powered_at
            self._warm_from_start = self.warmup_s == 0
            self.emission = False
            self.modelocker_enabled = False
            self.shutter_open = False
            self._latched = 0
            self._errors.clear()
            self.watchdog_s = self._power_up_watchdog_s
            self.rf_phase_pct = RF_PHASE_FACTORY_PCT
            self.mode = self._saved["mode"]
            self.pump_setpoint_w = self._saved["pump_setpoint_w"]
            self.pump_current_pct = self._saved["pump_current_pct"]
            self._tune_from = self._tune_target = self._saved["wavelength_nm"]
            self._tune_started = self._powered_at

    def set_local_mode(self, local: bool) -> None:
        """Front panel / interlock: while True, shutter commands are accepted and ignored."""
        with self.lock:
            self.local_mode = bool(local)

    def _settings(self) -> dict:
        return {
            "mode": self.mode,
            "pump_setpoint_w": self.pump_setpoint_w,
            "pump_current_pct": self.pump_current_pct,
            "wavelength_nm": self._tune_target,
        }

    def _check_watchdog(self) -> None:
        # Evaluated lazily, whenever anyone looks: the trip is a fact of device time, so it does
        # not matter that nothing ran at the moment it happened.
        if self.watchdog_s > 0 and self.emission:
            if self.sim_elapsed(self._last_command_at) > self.watchdog_s:
                self.watchdog_trips += 1
                self._pump_off()

    def _pump_off(self) -> None:
        self.emission = False
        self.modelocker_enabled = False
        self._history.appendleft(HISTORY_OFF)

    # --- wire ---------------------------------------------------------------------------------

    def _answer(self, text: str) -> None:
        self.reply(text, delay=self.real_delay(self.reply_latency))

    def _command_table(self) -> list[tuple[tuple[frozenset[str], ...], str, Callable]]:
        """(keyword path, 'query' | 'set' | 'action', handler), in the manual's spelling."""
        answer = self._answer
        table: list[tuple[tuple[frozenset[str], ...], str, Callable]] = [
            (_path("*IDN"), "query", lambda: answer(IDN)),
            (_path("*STB"), "query", self._query_stb),
            (_path("WAVelength"), "query", self._query_commanded_wavelength),
            (_path("READ", "WAVelength"), "query", self._query_wavelength),
            (_path("WAVelength"), "set", self._set_wavelength),
            (
                _path("WAVelength", "MIN"),
                "query",
                lambda: answer(f"{self.wavelength_min_nm:.0f}nm"),
            ),
            (
                _path("WAVelength", "MAX"),
                "query",
                lambda: answer(f"{self.wavelength_max_nm:.0f}nm"),
            ),
            (_path("POWer"), "query", self._query_power),
            (_path("READ", "POWer"), "query", self._query_power),
            (_path("SHUTter"), "query", lambda: answer("1" if self.shutter_open else "0")),
            (_path("SHUTter"), "set", self._set_shutter),
            (_path("ON"), "action", self._emission_on),
            (_path("OFF"), "action", self._emission_off),
            (_path("READ", "PCTWarmedup"), "query", self._query_warmup),
            (_path("READ", "HUMidity"), "query", lambda: answer(f"{HUMIDITY_PCT:.2f}%")),
            (_path("MODE"), "query", lambda: answer(self.mode)),
            (_path("MODE"), "set", self._set_mode),
            (_path("PLASer", "POWer"), "query", lambda: answer(f"{self.pump_setpoint_w:.2f}W")),
            (_path("PLASer", "POWer"), "set", self._set_pump_power),
            (_path("PLASer", "PCURrent"), "query", lambda: answer(f"{self.pump_current_pct:.1f}%")),
            (_path("PLASer", "PCURrent"), "set", self._set_pump_current),
            (
                _path("READ", "PLASer", "POWer"),
                "query",
                lambda: answer(f"{self.pump_power_w():.2f}W"),
            ),
            (
                _path("READ", "PLASer", "PCURrent"),
                "query",
                lambda: answer(f"{self.pump_current_percent():.1f}%"),
            ),
            (_path("READ", "PLASer", "SHGS"), "query", self._query_shg_status),
            (_path("PLASer", "ERRCode"), "query", lambda: answer(str(self.pump_error_code))),
            (_path("PLASer", "HISTory"), "query", self._query_history),
            (_path("PLASer", "AHISTory"), "query", self._query_history),
            (_path("CONTrol", "PHAse"), "query", lambda: answer(f"{self.rf_phase_pct:.2f}%")),
            (_path("CONTrol", "PHAse"), "set", self._set_phase),
            (
                _path("CONTrol", "MLENable"),
                "query",
                lambda: answer("1" if self.modelocker_enabled else "0"),
            ),
            (_path("CONTrol", "MLENable"), "set", self._set_modelocker),
            (_path("SYSTem", "ERR"), "query", self._query_error),
            (_path("SYSTem", "COMMunications", "SERial", "BAUD"), "set", self._set_baud),
            (_path("TIMer", "WATChdog"), "query", lambda: answer(f"{self.watchdog_s:.2f}")),
            (_path("TIMer", "WATChdog"), "set", self._set_watchdog),
            (_path("SAVe"), "action", self._save),
        ]
        for n in (1, 2):
            diode = f"DIODe{n}"
            table.append(
                (_path("READ", "PLASer", diode, "CURRent"), "query", self._diode_current(n))
            )
            table.append(
                (
                    _path("READ", "PLASer", diode, "TEMPerature"),
                    "query",
                    lambda n=n: answer(f"{DIODE_TEMPERATURE_C[n - 1]:.1f}C{n}"),
                )
            )
        return table

    def handle_line(self, line: str) -> None:
        self._check_watchdog()  # before this command counts: it may come too late
        parts = line.split(None, 1)
        header = parts[0].upper().lstrip(":")
        argument = parts[1].strip() if len(parts) > 1 else ""
        is_query = header.endswith("?")
        nodes = header.rstrip("?").split(":")
        if is_query and argument:
            self._command_error(line, "a query takes no argument")
            return
        for path, form, handler in self._commands:
            if len(path) != len(nodes) or not all(n in k for n, k in zip(nodes, path, strict=True)):
                continue
            if form == "query" and is_query:
                self._last_command_at = self.clock()
                handler()
                return
            if form == "set" and not is_query and argument:
                self._last_command_at = self.clock()
                handler(line, argument)
                return
            if form == "action" and not is_query and not argument:
                self._last_command_at = self.clock()
                handler()
                return
        self._command_error(line, "not a MaiTai command")

    def _command_error(self, line: str, why: str) -> None:
        self.protocol_error(line, why)
        self.queue_error(CMD_ERR)

    def _execution_error(self, line: str, why: str) -> None:
        self.refusals.append(f"{line}: {why}")
        self.queue_error(EXE_ERR)

    # --- handlers -------------------------------------------------------------------------------

    def _query_stb(self) -> None:
        stb = self.status_byte()
        self._latched = 0
        self._answer(str(stb))

    def _query_wavelength(self) -> None:
        self._answer(f"{round(self.wavelength_nm()):d}nm")

    def _query_commanded_wavelength(self) -> None:
        self._answer(f"{round(self._tune_target):d}nm")

    def _query_power(self) -> None:
        power = self.output_power_w()
        self._answer("0.00000W" if power <= 0 else f"{power:.3f}W")

    def _query_warmup(self) -> None:
        self._answer(f"{self.warmup_percent():.2f}%")

    def _query_shg_status(self) -> None:
        self._answer("0S" if self.is_warmed_up() else "1S")

    def _query_history(self) -> None:
        self._answer(" ".join(f"{code:03d}" for code in self.history()))

    def _query_error(self) -> None:
        if not self._errors:
            self._answer("0, No error")
            return
        code, name = self._errors.popleft()
        self._answer(f"{code}, {name}")

    def _diode_current(self, n: int) -> Callable[[], None]:
        def query() -> None:
            amps = DIODE_CURRENT_A[n - 1] * self.pump_current_percent() / PUMP_CURRENT_FACTORY_PCT
            self._answer(f"{amps:.1f}A{n}")

        return query

    def _set_wavelength(self, line: str, argument: str) -> None:
        target = _number(argument)
        if target is None:
            self._command_error(line, "wavelength is not a number")
            return
        if not self.wavelength_min_nm <= target <= self.wavelength_max_nm:
            self._latched |= STB_WAVELENGTH_REFUSED
            self._execution_error(
                line, f"outside {self.wavelength_min_nm:g}-{self.wavelength_max_nm:g} nm"
            )
            return
        self._tune_from = self.wavelength_nm()
        self._tune_started = self.clock()
        self._tune_target = target
        self.pump_setpoint_w = PUMP_SETPOINT_W
        self.rf_phase_pct = RF_PHASE_FACTORY_PCT

    def _set_shutter(self, line: str, argument: str) -> None:
        if argument not in ("0", "1"):
            self._command_error(line, "shutter takes 0 or 1")
            return
        if self.local_mode:
            self.refusals.append(f"{line}: local mode, shutter command ignored")
            return
        self.shutter_open = argument == "1"

    def _emission_on(self) -> None:
        if not self.is_warmed_up():
            self._latched |= STB_ON_REFUSED
            self._execution_error("ON", f"warming up ({self.warmup_percent():.2f}%)")
            return
        if not self.emission:
            code = HISTORY_ON_CURRENT_MODE if self.mode == "PCUR" else HISTORY_ON_POWER_MODE
            self._history.appendleft(code)
        self.emission = True
        self.modelocker_enabled = True

    def _emission_off(self) -> None:
        if self.emission:
            self._pump_off()
        self.modelocker_enabled = False

    def _set_mode(self, line: str, argument: str) -> None:
        mode = MODES.get(argument.upper())
        if mode is None:
            self._command_error(line, "mode is PPOW, PCUR or POW")
            return
        self.mode = mode

    def _set_bounded(
        self, line: str, argument: str, what: str, low: float, high: float
    ) -> float | None:
        value = _number(argument)
        if value is None:
            self._command_error(line, f"{what} is not a number")
            return None
        if not low <= value <= high:
            self._execution_error(line, f"{what} outside {low:g}-{high:g}")
            return None
        return value

    def _set_pump_power(self, line: str, argument: str) -> None:
        value = self._set_bounded(line, argument, "pump power (W)", 0.0, PUMP_MAX_W)
        if value is not None:
            self.pump_setpoint_w = value

    def _set_pump_current(self, line: str, argument: str) -> None:
        value = self._set_bounded(line, argument, "pump current (%)", 0.0, 100.0)
        if value is not None:
            self.pump_current_pct = value

    def _set_phase(self, line: str, argument: str) -> None:
        value = self._set_bounded(line, argument, "RF phase (%)", 0.0, 100.0)
        if value is not None:
            self.rf_phase_pct = value

    def _set_modelocker(self, line: str, argument: str) -> None:
        if argument not in ("0", "1"):
            self._command_error(line, "the modelocker takes 0 or 1")
            return
        self.modelocker_enabled = argument == "1"

    def _set_watchdog(self, line: str, argument: str) -> None:
        value = self._set_bounded(line, argument, "watchdog (s)", 0.0, math.inf)
        if value is not None:
            self.watchdog_s = value

    def _set_baud(self, line: str, argument: str) -> None:
        value = _number(argument)
        if value is None or value != int(value):
            self._command_error(line, "baud rate is not a whole number")
            return
        if int(value) not in BAUD_RATES:
            self._execution_error(line, f"baud rate not one of {sorted(BAUD_RATES)}")
            return
        self.baudrate = int(value)

    def _save(self) -> None:
        self._saved = self._settings()


SIMULATOR = "serial:MaiTaiSimulator"
"""How ``daqbridge.sim`` finds this simulator (its kind is this module's name)."""
