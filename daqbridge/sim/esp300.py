"""Newport ESP300 three-axis motion controller, as seen from its RS-232 port.

Pinned to INSTRUMENTS.md ("Newport ESP300") and tests/transcripts/esp300.yaml, never to the
daqbridge driver. What a driver must survive here because the real controller does it:

* set commands and moves are silent; errors are never answered on the failing command but queued,
  read with ``TE?`` (one code, ``0`` when empty) or ``TB?`` (``code, timestamp, text``);
* ``TP`` answers with or without ``?``; ``WS`` holds back every later command (queries included,
  and ``ST`` and ``AB`` too, the pessimistic reading of the manual) until the axis stops;
* several commands on one line, separated by ``;``, run in order; mnemonics in upper or lower
  case (manual 3.4: "Commands may be either upper or lower case characters");
* motion takes time: a trapezoidal profile from ``VA``/``AC``/``AG`` (a triangle when the move
  is too short to reach ``VA``), ``TP`` interpolated along it, ``MD?`` ``0`` until the end; ``ST``
  freezes the axis at once; ``OR`` travels to 0 at ``VA`` then spends ``home_search_time`` on the
  index search (tens of seconds on real stages).

The rest of the command set that drivers written for the real controller use, with where each
behaviour comes from. [M] is the ESP300 User's Manual, Section 3 (pages quoted as 3-n; read at
https://www.easymanua.ls/newport/esp300-series/manual?p=N with N = n + 40, and
https://manualshive.com/en/manual/newport/esp300-series/1679944?page=N). Public drivers:
[PM] pymeasure/pymeasure ``pymeasure/instruments/newport/esp300.py``; [IK]
instrumentkit/InstrumentKit ``src/instruments/newport/newportesp301.py``; [NE] the ``newportESP``
driver ("Driver for Newport's ESP (and compatible) motion controllers", PyPI ``newportESP``);
[EP] epics-modules/motor ``motorApp/NewportSrc/drvESP300.cc``; [MM] the MM4005 manual (same
command family), https://www.easymanua.ls/newport/mm4005/manual?p=108 and ?p=124.

* ``nID?`` stage model and serial number, ``model, serial`` ([M] 3-86, whose example is
  ``TS50DC.5, SN1263``). Options ``stage_models``/``stage_serials`` (one value for every axis,
  or one per axis) give other stages, e.g. ``Unknown`` for a stage without ESP data. Writing a
  custom ID (``nID<text>``, [M] 3-86 mentions it) is not modelled: it queues 7.
* ``nVU<v>``/``nVU?`` maximum velocity ([IK] max_velocity; [M] 5.2.12). VU may be lowered (not
  above the stage's ``max_velocity``: x10); a ``VA`` above it queues x10. Whether the real
  controller refuses a VU below the current VA or lowers VA is not in the sources: here VU is
  accepted and the next move with a faster VA is refused with x10, so a driver that forgets VA
  finds out at its first move.
* ``nDP?`` desired position ([M] 3-52). [M]'s text says "the instantaneous desired position,
  ... its real use is while a motion is in progress", while its example (and [MM] 3.41, "the
  destination") show the destination. The simulator follows the text: the trajectory position
  (equal to ``TP`` here, as no following error is modelled), so a driver that reads DP? as the
  target sees it change during a move.
* ``nMD``, ``nDP`` (and ``nTP``) are answered without their ``?`` too: [EP], written for real
  ESP300/301 controllers, polls ``01MD`` and ``01TP`` and treats anything but a reply as a
  communication error. (Axis numbers with a leading zero, ``01``, are accepted as [EP] sends.)
* ``nDH[nn]``/``nDH?`` define home: the current position becomes ``nn`` (0 when missing, as
  [PM]'s ``zero()`` sends ``DH``); ``DH?`` reads the preset ([IK] home). During a move it queues
  27 (command not allowed): the sources do not say; a driver must not redefine a moving axis.
* ``AB`` abort motion: every axis stops at once and its motor is turned off ([M] 3-7 lists ``AB``
  as a command with no axis; [NE] sends ``AB``). [IK] sends ``1AB``: the axis prefix is ignored
  and every axis is aborted, never only the one named, so a driver expecting a one-axis abort
  sees the others stop and its next move fail with x13. No error is queued (the sources name
  error 4 only for the emergency-stop input).
* ``nBA<nn>``/``nBA?`` backlash compensation, 0 to the distance of 10000 encoder counts, else 7
  ([M] 3-30, example ``1BA0.0012``, ``1BA?``; [NE] backlash). Stored and read back only: the
  compensation move itself is not modelled.
* ``nSU<r>``/``nSU?`` encoder resolution, units per count ([IK] encoder_resolution; [EP] reads it
  as the drive resolution); > 0, else 7.
* ``nMF?`` motor state, ``1`` on and ``0`` off, as ``nMO?`` (reported of real controllers in
  issue 14; [M]'s MF page was not available).
* ``nMT+``/``nMT-`` move to the hardware travel limit, ``nMT?`` ``0`` while moving, ``1`` when done
  ([IK] move_to_hardware_limit; [M]'s MT page, 3-100, was not available). [IK] sends ``1MT``
  and [NE] ``MT<float>``: a missing direction queues 38 and a number queues 7, as [M]'s
  defaults for a missing or bad parameter do, so those drivers fail here instead of moving
  somewhere unexpected. MT ignores the software limits (it exists to find the switch) and
  queues no error at the switch.
* ``nMV+``/``nMV-`` move indefinitely, ``nMV?`` ``0`` while moving ([M] 3-101, example ``3MV+``,
  ``3MV?`` -> ``0``, ``3ST``). The axis stops at the software limit (x06/x07 queued on arrival) or
  at the hardware limit if that comes first (x04/x05): the sources do not say what is queued;
  running into a limit is never silent here.
* ``nWP<nn>`` wait for position: like ``WS``, holds back every later command until the axis
  reaches ``nn`` ([IK] wait_for_position). If the current motion never gets there the hold never
  ends (as the SMAC LAC-25 manual says of its own WP, "command execution may be suspended
  indefinitely", https://manualshive.com/ru/manual/smac/lac-25/1294649?page=51): a driver
  that waits for a position the stage will not reach hangs here, as it would in the lab.
* ``RS`` reset ([IK] reset): every axis stops, the controller comes back as at power-up (zero
  positions, default parameters, motors per ``motors_on``, error queue empty) after
  ``reset_time`` device seconds, during which every command is lost. The boot time is not in the
  sources: 5 s is a guess chosen so that a driver which queries straight after RS fails.

Simplifications (documented in docs/simulators.md): ``SN`` changes the unit code only (no
rescaling); a new move during motion restarts the profile from the current position at rest;
hardware limits (``axes[n].left_hardware_limit``/``right_hardware_limit``, +-1000) are reached
only by ``MT``/``MV``; replies always carry five decimals (the manual's examples abbreviate).
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from daqbridge.sim._core import Faults, SerialSimulator

IDENTITY = "ESP300 Version 3.04 07/27/01"
STAGE_MODELS = ("TS50DC.5",)
STAGE_SERIALS = ("SN1263", "SN1264", "SN1265")
"""Axis 1 answers ``ID?`` with the manual's own example, ``TS50DC.5, SN1263``."""

# General error codes (ESP300 manual, appendix "Error messages").
NO_ERROR = 0
COMMAND_DOES_NOT_EXIST = 6
PARAMETER_OUT_OF_RANGE = 7
AXIS_NUMBER_OUT_OF_RANGE = 9
COMMAND_NOT_ALLOWED = 27
AXIS_NUMBER_MISSING = 37
COMMAND_PARAMETER_MISSING = 38
# Axis error codes: reported as axis * 100 + code.
POSITIVE_HARDWARE_LIMIT = 4
NEGATIVE_HARDWARE_LIMIT = 5
POSITIVE_SOFTWARE_LIMIT = 6
NEGATIVE_SOFTWARE_LIMIT = 7
MOTOR_NOT_CONNECTED = 8
MAXIMUM_VELOCITY_EXCEEDED = 10
MOTOR_NOT_ENABLED = 13

GENERAL_ERRORS = {
    0: "NO ERROR DETECTED",
    1: "PCI COMMUNICATION TIME-OUT",
    4: "EMERGENCY STOP ACTIVATED",
    6: "COMMAND DOES NOT EXIST",
    7: "PARAMETER OUT OF RANGE",
    8: "CABLE INTERLOCK ERROR",
    9: "AXIS NUMBER OUT OF RANGE",
    27: "COMMAND NOT ALLOWED",
    37: "AXIS NUMBER MISSING",
    38: "COMMAND PARAMETER MISSING",
}
AXIS_ERRORS = {
    0: "MOTOR TYPE NOT DEFINED",
    1: "PARAMETER OUT OF LIMITS",
    2: "AMPLIFIER FAULT DETECTED",
    3: "FOLLOWING ERROR THRESHOLD EXCEEDED",
    4: "POSITIVE HARDWARE LIMIT DETECTED",
    5: "NEGATIVE HARDWARE LIMIT DETECTED",
    6: "POSITIVE SOFTWARE LIMIT DETECTED",
    7: "NEGATIVE SOFTWARE LIMIT DETECTED",
    8: "MOTOR / STAGE NOT CONNECTED",
    9: "FEEDBACK SIGNAL FAULT DETECTED",
    10: "MAXIMUM VELOCITY EXCEEDED",
    11: "MAXIMUM ACCELERATION EXCEEDED",
    13: "MOTOR NOT ENABLED",
    20: "HOMING ABORTED",
}
ERROR_QUEUE_DEPTH = 10
HISTORY_DEPTH = 10000
"""Trajectory entries kept per axis (moves and rests): a 21 x 21 raster is under 2000."""
BACKLASH_MAX_COUNTS = 10000
"""BA accepts up to the distance of this many encoder counts (manual 3-30)."""

_COMMAND = re.compile(r"(\d*)\s*([A-Za-z]{2})\s*(.*)")
_CONTROLLER_COMMANDS = frozenset({"TE", "TB", "AB", "RS"})
"""Mnemonics that act on the whole controller: an axis prefix is not needed and is ignored."""
_DIRECTIONS = {"+": 1.0, "-": -1.0}


def _positive(value: float) -> int | None:
    return PARAMETER_OUT_OF_RANGE if value <= 0 else None


def error_text(code: int) -> str:
    """The text ``TB?`` gives for ``code`` (axis errors carry their axis number)."""
    if code >= 100:
        axis, sub = divmod(code, 100)
        return f"AXIS-{axis} {AXIS_ERRORS.get(sub, 'UNKNOWN ERROR')}"
    return GENERAL_ERRORS.get(code, "UNKNOWN ERROR")


def _per_axis(values: Sequence[str], what: str, axes: int) -> list[str]:
    values = [str(v) for v in values]
    if len(values) == 1:
        return values * axes
    if len(values) < axes:
        raise ValueError(f"{what} needs one value, or one per axis (1..{axes}), got {values!r}")
    return values[:axes]


@dataclass
class _Motion:
    """One move: a trapezoidal (or triangular) velocity profile, then an optional dwell."""

    start: float  # real clock time the move began
    p0: float
    p1: float
    t_acc: float  # simulated seconds
    t_flat: float
    t_dec: float
    v_peak: float
    acc: float
    dec: float
    dwell: float = 0.0  # home index search after reaching 0
    homing: bool = False
    arrival_error: int | None = None  # axis code queued when the move ends at a limit

    @classmethod
    def plan(
        cls, start: float, p0: float, p1: float, v: float, a: float, d: float, **kw
    ) -> _Motion:
        dist = abs(p1 - p0)
        d_acc, d_dec = v * v / (2 * a), v * v / (2 * d)
        if d_acc + d_dec <= dist:
            v_peak = v
            t_flat = (dist - d_acc - d_dec) / v
        else:  # too short to reach cruise speed: triangular profile
            v_peak = math.sqrt(2 * dist * a * d / (a + d))
            t_flat = 0.0
        return cls(start, p0, p1, v_peak / a, t_flat, v_peak / d, v_peak, a, d, **kw)

    @property
    def travel_time(self) -> float:
        return self.t_acc + self.t_flat + self.t_dec

    @property
    def duration(self) -> float:
        return self.travel_time + self.dwell

    @property
    def direction(self) -> float:
        return math.copysign(1.0, self.p1 - self.p0)

    def position_at(self, t: float) -> float:
        if t >= self.travel_time:
            return self.p1
        t = max(t, 0.0)
        if t < self.t_acc:
            s = 0.5 * self.acc * t * t
        elif t < self.t_acc + self.t_flat:
            s = 0.5 * self.acc * self.t_acc**2 + self.v_peak * (t - self.t_acc)
        else:
            u = t - self.t_acc - self.t_flat
            s = (
                0.5 * self.acc * self.t_acc**2
                + self.v_peak * self.t_flat
                + self.v_peak * u
                - 0.5 * self.dec * u * u
            )
        return self.p0 + math.copysign(s, self.p1 - self.p0)

    def time_to_reach(self, position: float) -> float:
        """Simulated seconds from the start until the profile passes ``position``."""
        lo, hi = 0.0, self.travel_time
        for _ in range(100):  # the profile is monotonic: bisection converges to ~1e-30 s
            mid = 0.5 * (lo + hi)
            if self.direction * (self.position_at(mid) - position) >= 0:
                hi = mid
            else:
                lo = mid
        return hi


class _Axis:
    def __init__(
        self,
        number: int,
        *,
        connected: bool,
        motor_on: bool,
        max_velocity: float,
        stage_model: str,
        stage_serial: str,
    ) -> None:
        self.number = number
        self.connected = connected
        self.motor_on = motor_on
        self.position = 0.0  # where the axis rests (or where the current move began)
        self.target = 0.0
        self.home = 0.0  # the value the last DH preset
        self.velocity = 5.0
        self.acceleration = 20.0
        self.deceleration = 20.0
        self.max_velocity = max_velocity
        self.backlash = 0.0
        self.resolution = 0.0001  # SU: units per encoder count
        self.left_limit = -1000.0
        self.right_limit = 1000.0
        self.left_hardware_limit = -1000.0
        self.right_hardware_limit = 1000.0
        self.units = 2  # mm
        self.stage_model = stage_model
        self.stage_serial = stage_serial
        self.motion: _Motion | None = None
        self.history: deque[tuple[float, _Motion | float]] = deque(maxlen=HISTORY_DEPTH)
        """(real clock time, the move begun then or the position the axis rests at from then),
        oldest first: the trajectory, for tests that check what a driver recorded against it."""
        self.history.append((-math.inf, self.position))  # at rest since power-up

    def rest(self, at: float, position: float) -> None:
        self.motion = None
        self.position = self.target = position
        self.history.append((at, position))


class ESP300Simulator(SerialSimulator):
    """Newport ESP300 controller with ``axes`` axes (see module docstring for the behaviour)."""

    kind: ClassVar[str] = "esp300"
    default_baudrate: ClassVar[int] = 19200
    reply_terminator = b"\r\n"

    def __init__(
        self,
        *,
        axes: int = 3,
        motors_on: bool = True,
        disconnected_axes: Iterable[int] = (),
        max_velocity: float = 200.0,
        home_search_time: float = 5.0,
        response_time: float = 0.0,
        reset_time: float = 5.0,
        identity: str = IDENTITY,
        stage_models: Sequence[str] = STAGE_MODELS,
        stage_serials: Sequence[str] = STAGE_SERIALS,
        speed: float = 1.0,
        faults: Faults | None = None,
        byte_time: bool = False,
        baudrate: int | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        kw = {"clock": clock} if clock is not None else {}
        super().__init__(speed=speed, faults=faults, byte_time=byte_time, baudrate=baudrate, **kw)
        if not 1 <= int(axes) <= 3:
            raise ValueError(f"the ESP300 has 1 to 3 axes, got axes={axes!r}")
        missing = {int(a) for a in disconnected_axes}
        if not missing <= set(range(1, int(axes) + 1)):
            raise ValueError(f"disconnected_axes {sorted(missing)} are not axes 1..{axes}")
        if not max_velocity > 0 or home_search_time < 0 or response_time < 0 or reset_time < 0:
            raise ValueError(
                "max_velocity must be > 0; home_search_time, response_time and reset_time >= 0"
            )
        self.axis_count = int(axes)
        self.disconnected = missing
        self.motors_on_at_power_up = bool(motors_on)
        self.stage_models = _per_axis(stage_models, "stage_models", self.axis_count)
        self.stage_serials = _per_axis(stage_serials, "stage_serials", self.axis_count)
        self.max_velocity = float(max_velocity)
        self.home_search_time = float(home_search_time)
        self.response_time = float(response_time)
        self.reset_time = float(reset_time)
        self.identity = identity
        self.error_queue: deque[tuple[int, int]] = deque(maxlen=ERROR_QUEUE_DEPTH)
        self.stops: list[int] = []
        """Axis of every ``ST`` received, in order (tests check that a driver really stopped)."""
        self.aborts = 0
        """How many ``AB`` were executed."""
        self.resets = 0
        """How many ``RS`` were executed."""
        self.axes: dict[int, _Axis] = {}
        self._holding = False
        self._backlog: deque[str] = deque()
        self._booting_until = -math.inf
        self._power_up()

    def _power_up(self) -> None:
        """The state after power-on, and after ``RS``."""
        self.axes = {
            n: _Axis(
                n,
                connected=n not in self.disconnected,
                motor_on=self.motors_on_at_power_up and n not in self.disconnected,
                max_velocity=self.max_velocity,
                stage_model=self.stage_models[n - 1],
                stage_serial=self.stage_serials[n - 1],
            )
            for n in range(1, self.axis_count + 1)
        }
        self.error_queue.clear()
        self._powered_at = self.clock()

    # --- inspection for tests -------------------------------------------------------------------

    @property
    def stop_count(self) -> int:
        return len(self.stops)

    def axis_position(self, n: int) -> float:
        with self.lock:
            return self._position(self.axes[n])

    def is_moving(self, n: int) -> bool:
        with self.lock:
            return self._moving(self.axes[n])

    def motor_on(self, n: int) -> bool:
        return self.axes[n].motor_on

    def set_position(self, n: int, position: float) -> None:
        """Put an axis somewhere without a move (a stage left there by a previous session)."""
        with self.lock:
            self.axes[n].rest(self.clock(), float(position))

    def true_position(self, n: int, at: float) -> float:
        """Where axis ``n`` was at real clock time ``at`` (``clock()`` time, ``time.monotonic``
        by default), from its trajectory: the truth a test compares a recorded position with.
        Raises LookupError for a time before the oldest entry kept."""
        with self.lock:
            history = list(self.axes[n].history)
        before = [(t, what) for t, what in history if t <= at]
        if not before:
            raise LookupError(f"axis {n}: no trajectory kept at clock time {at!r}")
        t, what = before[-1]
        if isinstance(what, _Motion):
            return what.position_at(0.0 if math.isinf(self.speed) else (at - t) * self.speed)
        return what

    @property
    def holding(self) -> bool:
        """True while a ``WS`` or ``WP`` holds back later commands."""
        return self._holding

    @property
    def booting(self) -> bool:
        """True while the controller restarts after ``RS`` (commands are lost)."""
        return self.clock() < self._booting_until

    def queue_error(self, code: int) -> None:
        if not isinstance(code, int) or code < 0:
            raise ValueError(f"ESP300 error codes are integers >= 0, got {code!r}")
        with self.lock:
            ms = int(max(0.0, self.clock() - self._powered_at) * 1000)
            self.error_queue.append((code, ms))

    # --- motion ---------------------------------------------------------------------------------

    def _position(self, ax: _Axis) -> float:
        m = ax.motion
        if m is None:
            return ax.position
        t = self.sim_elapsed(m.start)
        if t >= m.duration:
            ax.position, ax.motion = m.p1, None
            if m.arrival_error is not None:
                self.queue_error(m.arrival_error)
            return ax.position
        return m.position_at(t)

    def _moving(self, ax: _Axis) -> bool:
        self._position(ax)
        return ax.motion is not None

    def _remaining(self, ax: _Axis) -> float:
        m = ax.motion
        if m is None or not self._moving(ax):
            return 0.0
        return max(0.0, m.duration - self.sim_elapsed(m.start))

    def _halt(self, ax: _Axis) -> None:
        ax.rest(self.clock(), self._position(ax))

    def _start_move(
        self,
        ax: _Axis,
        target: float,
        *,
        homing: bool = False,
        soft_limits: bool = True,
        arrival_error: int | None = None,
    ) -> None:
        if not ax.connected:
            self.queue_error(ax.number * 100 + MOTOR_NOT_CONNECTED)
            return
        if not ax.motor_on:
            self.queue_error(ax.number * 100 + MOTOR_NOT_ENABLED)
            return
        if ax.velocity > ax.max_velocity:  # VU lowered below VA since VA was set
            self.queue_error(ax.number * 100 + MAXIMUM_VELOCITY_EXCEEDED)
            return
        if soft_limits and target > ax.right_limit:
            self.queue_error(ax.number * 100 + POSITIVE_SOFTWARE_LIMIT)
            return
        if soft_limits and target < ax.left_limit:
            self.queue_error(ax.number * 100 + NEGATIVE_SOFTWARE_LIMIT)
            return
        here = self._position(ax)
        ax.motion = None
        ax.position = here
        ax.target = target
        now = self.clock()
        motion = _Motion.plan(
            now,
            here,
            target,
            ax.velocity,
            ax.acceleration,
            ax.deceleration,
            dwell=self.home_search_time if homing else 0.0,
            homing=homing,
            arrival_error=arrival_error,
        )
        if motion.duration <= 0:
            ax.rest(now, target)
            if arrival_error is not None:
                self.queue_error(arrival_error)
            return
        ax.motion = motion
        ax.history.append((now, motion))

    # --- command processing ---------------------------------------------------------------------

    def handle_line(self, line: str) -> None:
        for command in line.split(";"):
            command = command.strip()
            if not command:
                continue
            if self.booting:
                continue  # lost: the controller is restarting after RS
            if self._holding:
                self._backlog.append(command)
            else:
                self._execute(command)

    def _answer(self, text: str) -> None:
        self.reply(text, delay=self.real_delay(self.response_time))

    def _hold(self, sim_seconds: float | None) -> None:
        """Hold back later commands for ``sim_seconds`` (None: until the controller restarts)."""
        if sim_seconds is not None and sim_seconds <= 0:
            return
        self._holding = True
        if sim_seconds is not None:
            self.schedule(sim_seconds, self._release_hold)

    def _release_hold(self) -> None:
        self._holding = False
        while self._backlog and not self._holding and not self.booting:
            self._execute(self._backlog.popleft())
        if self.booting:
            self._backlog.clear()

    def _execute(self, command: str) -> None:
        for ax in self.axes.values():
            self._position(ax)  # moves that ended queue their limit errors before this command
        if command.upper() in ("*IDN?", "VE?", "VE"):
            self._answer(self.identity)
            return
        m = _COMMAND.fullmatch(command)
        if m is None:
            self.protocol_error(command, "not <axis><mnemonic>[value|?]")
            self.queue_error(COMMAND_DOES_NOT_EXIST)
            return
        axis_text, mnemonic, arg = m.groups()
        mnemonic = mnemonic.upper()
        if mnemonic in _CONTROLLER_COMMANDS:
            getattr(self, f"_cmd_{mnemonic}")(arg)
            return
        handler = getattr(self, f"_cmd_{mnemonic}", None)
        if handler is None:
            self.protocol_error(command, f"unknown mnemonic {mnemonic}")
            self.queue_error(COMMAND_DOES_NOT_EXIST)
            return
        if mnemonic == "WS" and not axis_text:
            self._cmd_WS(None, arg)
            return
        if not axis_text:
            self.queue_error(AXIS_NUMBER_MISSING)
            return
        ax = self.axes.get(int(axis_text))
        if ax is None:
            self.queue_error(AXIS_NUMBER_OUT_OF_RANGE)
            return
        handler(ax, arg)

    def _number(self, arg: str) -> float | None:
        """The command's value, or None after queueing the error the controller would."""
        if arg == "" or arg == "?":
            self.queue_error(COMMAND_PARAMETER_MISSING)
            return None
        try:
            value = float(arg)
        except ValueError:
            self.queue_error(PARAMETER_OUT_OF_RANGE)
            return None
        if not math.isfinite(value):
            self.queue_error(PARAMETER_OUT_OF_RANGE)
            return None
        return value

    def _no_argument(self, arg: str) -> bool:
        if arg:
            self.queue_error(PARAMETER_OUT_OF_RANGE)
            return False
        return True

    def _query_only(self, arg: str) -> bool:
        """For queries that need their ``?`` (``ID?``): True when it is there."""
        if arg != "?":
            self.queue_error(COMMAND_PARAMETER_MISSING if not arg else PARAMETER_OUT_OF_RANGE)
            return False
        return True

    def _report(self, arg: str) -> bool:
        """For read-only reports (``TP``, ``MD``, ``DP``), answered with or without ``?``."""
        if arg not in ("", "?"):
            self.queue_error(PARAMETER_OUT_OF_RANGE)
            return False
        return True

    @staticmethod
    def _fmt(value: float) -> str:
        text = f"{value:.5f}"
        return "0.00000" if text == "-0.00000" else text

    # controller
    def _cmd_TE(self, arg: str) -> None:
        if arg != "?":
            self.queue_error(COMMAND_DOES_NOT_EXIST)
            return
        code = self.error_queue.popleft()[0] if self.error_queue else NO_ERROR
        self._answer(str(code))

    def _cmd_TB(self, arg: str) -> None:
        if arg != "?":
            self.queue_error(COMMAND_DOES_NOT_EXIST)
            return
        if self.error_queue:
            code, ms = self.error_queue.popleft()
        else:
            code, ms = NO_ERROR, int(max(0.0, self.clock() - self._powered_at) * 1000)
        self._answer(f"{code}, {ms}, {error_text(code)}")

    def _cmd_AB(self, arg: str) -> None:
        if not self._no_argument(arg):
            return
        self.aborts += 1
        for ax in self.axes.values():
            self._halt(ax)
            ax.motor_on = False

    def _cmd_RS(self, arg: str) -> None:
        if not self._no_argument(arg):
            return
        self.resets += 1
        self._power_up()
        self._booting_until = self.clock() + self.real_delay(self.reset_time)

    # motion
    def _cmd_PA(self, ax: _Axis, arg: str) -> None:
        if arg == "?":
            self._answer(self._fmt(ax.target))
            return
        value = self._number(arg)
        if value is not None:
            self._start_move(ax, value)

    def _cmd_PR(self, ax: _Axis, arg: str) -> None:
        value = self._number(arg)
        if value is not None:
            # Relative to the commanded destination, which is where the axis rests when stopped.
            base = ax.target if self._moving(ax) else self._position(ax)
            self._start_move(ax, base + value)

    def _cmd_ST(self, ax: _Axis, arg: str) -> None:
        if self._no_argument(arg):
            self.stops.append(ax.number)
            self._halt(ax)

    def _cmd_OR(self, ax: _Axis, arg: str) -> None:
        if arg not in ("", "0", "1", "2", "3", "4", "5", "6"):
            self.queue_error(PARAMETER_OUT_OF_RANGE)
            return
        self._start_move(ax, 0.0, homing=True, soft_limits=False)

    def _direction(self, arg: str) -> float | None:
        """``+`` or ``-`` of MT/MV, or None after queueing the error."""
        if not arg:
            self.queue_error(COMMAND_PARAMETER_MISSING)
            return None
        direction = _DIRECTIONS.get(arg)
        if direction is None:
            self.queue_error(PARAMETER_OUT_OF_RANGE)
        return direction

    def _cmd_MT(self, ax: _Axis, arg: str) -> None:
        if arg == "?":
            self._answer("0" if self._moving(ax) else "1")
            return
        direction = self._direction(arg)
        if direction is not None:
            limit = ax.right_hardware_limit if direction > 0 else ax.left_hardware_limit
            self._start_move(ax, limit, soft_limits=False)

    def _cmd_MV(self, ax: _Axis, arg: str) -> None:
        if arg == "?":
            self._answer("0" if self._moving(ax) else "1")
            return
        direction = self._direction(arg)
        if direction is None:
            return
        n = ax.number * 100
        if direction > 0:
            soft, hard = ax.right_limit, ax.right_hardware_limit
            end, code = (
                (soft, n + POSITIVE_SOFTWARE_LIMIT)
                if soft <= hard
                else (hard, n + POSITIVE_HARDWARE_LIMIT)
            )
        else:
            soft, hard = ax.left_limit, ax.left_hardware_limit
            end, code = (
                (soft, n + NEGATIVE_SOFTWARE_LIMIT)
                if soft >= hard
                else (hard, n + NEGATIVE_HARDWARE_LIMIT)
            )
        self._start_move(ax, end, soft_limits=False, arrival_error=code)

    def _cmd_TP(self, ax: _Axis, arg: str) -> None:
        if self._report(arg):  # drivers in the wild send both TP and TP?
            self._answer(self._fmt(self._position(ax)))

    def _cmd_DP(self, ax: _Axis, arg: str) -> None:
        if self._report(arg):
            self._answer(self._fmt(self._position(ax)))

    def _cmd_MD(self, ax: _Axis, arg: str) -> None:
        if self._report(arg):
            self._answer("0" if self._moving(ax) else "1")

    def _cmd_DH(self, ax: _Axis, arg: str) -> None:
        if arg == "?":
            self._answer(self._fmt(ax.home))
            return
        value = 0.0 if arg == "" else self._number(arg)
        if value is None:
            return
        if self._moving(ax):
            self.queue_error(COMMAND_NOT_ALLOWED)
            return
        ax.home = value
        ax.rest(self.clock(), value)

    def _cmd_ID(self, ax: _Axis, arg: str) -> None:
        if self._query_only(arg):
            self._answer(f"{ax.stage_model}, {ax.stage_serial}")

    def _cmd_WS(self, ax: _Axis | None, arg: str) -> None:
        dwell = 0.0
        if arg:
            value = self._number(arg)
            if value is None:
                return
            if value < 0:
                self.queue_error(PARAMETER_OUT_OF_RANGE)
                return
            dwell = value / 1000.0
        axes = [ax] if ax is not None else list(self.axes.values())
        self._hold(max(self._remaining(a) for a in axes) + dwell)

    def _cmd_WP(self, ax: _Axis, arg: str) -> None:
        position = self._number(arg)
        if position is None:
            return
        here = self._position(ax)
        m = ax.motion
        if m is None:
            self._hold(None if abs(here - position) > 1e-9 else 0.0)
        elif m.direction * (here - position) >= 0:
            return  # already there or past it
        elif m.direction * (m.p1 - position) < 0:
            self._hold(None)  # this move never gets there
        else:
            self._hold(m.time_to_reach(position) - self.sim_elapsed(m.start))

    # parameters
    def _parameter(
        self, ax: _Axis, arg: str, attr: str, check: Callable[[float], int | None]
    ) -> None:
        """Query (``?``) or set ``attr``; ``check`` returns the error code to queue, or None."""
        if arg == "?":
            self._answer(self._fmt(getattr(ax, attr)))
            return
        value = self._number(arg)
        if value is None:
            return
        code = check(value)
        if code is not None:
            self.queue_error(code)
            return
        setattr(ax, attr, value)

    def _cmd_VA(self, ax: _Axis, arg: str) -> None:
        def check(v: float) -> int | None:
            if v <= 0:
                return PARAMETER_OUT_OF_RANGE
            if v > ax.max_velocity:
                return ax.number * 100 + MAXIMUM_VELOCITY_EXCEEDED
            return None

        self._parameter(ax, arg, "velocity", check)

    def _cmd_VU(self, ax: _Axis, arg: str) -> None:
        def check(v: float) -> int | None:
            if v <= 0:
                return PARAMETER_OUT_OF_RANGE
            if v > self.max_velocity:  # the stage's own maximum
                return ax.number * 100 + MAXIMUM_VELOCITY_EXCEEDED
            return None

        self._parameter(ax, arg, "max_velocity", check)

    def _cmd_AC(self, ax: _Axis, arg: str) -> None:
        self._parameter(ax, arg, "acceleration", _positive)

    def _cmd_AG(self, ax: _Axis, arg: str) -> None:
        self._parameter(ax, arg, "deceleration", _positive)

    def _cmd_BA(self, ax: _Axis, arg: str) -> None:
        def check(v: float) -> int | None:
            if not 0 <= v <= BACKLASH_MAX_COUNTS * ax.resolution:
                return PARAMETER_OUT_OF_RANGE
            return None

        self._parameter(ax, arg, "backlash", check)

    def _cmd_SU(self, ax: _Axis, arg: str) -> None:
        self._parameter(ax, arg, "resolution", _positive)

    def _cmd_SL(self, ax: _Axis, arg: str) -> None:
        self._parameter(
            ax, arg, "left_limit", lambda v: PARAMETER_OUT_OF_RANGE if v >= ax.right_limit else None
        )

    def _cmd_SR(self, ax: _Axis, arg: str) -> None:
        self._parameter(
            ax, arg, "right_limit", lambda v: PARAMETER_OUT_OF_RANGE if v <= ax.left_limit else None
        )

    def _cmd_SN(self, ax: _Axis, arg: str) -> None:
        if arg == "?":
            self._answer(str(ax.units))
            return
        value = self._number(arg)
        if value is None:
            return
        if value != int(value) or not 0 <= value <= 11:
            self.queue_error(PARAMETER_OUT_OF_RANGE)
            return
        ax.units = int(value)

    def _cmd_MO(self, ax: _Axis, arg: str) -> None:
        if arg == "?":
            self._answer("1" if ax.motor_on else "0")
            return
        if not self._no_argument(arg):
            return
        if not ax.connected:
            self.queue_error(ax.number * 100 + MOTOR_NOT_CONNECTED)
            return
        ax.motor_on = True

    def _cmd_MF(self, ax: _Axis, arg: str) -> None:
        if arg == "?":
            self._answer("1" if ax.motor_on else "0")
            return
        if not self._no_argument(arg):
            return
        if self._moving(ax):
            self._halt(ax)  # no torque: the stage stops where it is
        ax.motor_on = False


SIMULATOR = "serial:ESP300Simulator"
"""How ``daqbridge.sim`` finds this simulator (its kind is this module's name)."""
