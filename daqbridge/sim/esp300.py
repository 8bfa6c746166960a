"""Newport ESP300 three-axis motion controller, as seen from its RS-232 port.

Pinned to INSTRUMENTS.md ("Newport ESP300"), never to the daqbridge driver. What a driver must
survive here because the real controller does it:

* set commands and moves are silent; errors are never answered on the failing command but queued,
  read with ``TE?`` (one code, ``0`` when empty) or ``TB?`` (``code, timestamp, text``);
* ``TP`` answers with or without ``?``; ``WS`` holds back every later command (queries included,
  and ``ST`` too, the pessimistic reading of the manual) until the axis stops;
* several commands on one line, separated by ``;``, run in order;
* motion takes time: a trapezoidal profile from ``VA``/``AC``/``AG`` (a triangle when the move
  is too short to reach ``VA``), ``TP`` interpolated along it, ``MD?`` ``0`` until the end; ``ST``
  freezes the axis at once; ``OR`` travels to 0 at ``VA`` then spends ``home_search_time`` on the
  index search (tens of seconds on real stages).

Simplifications (documented in docs/simulators.md): ``SN`` changes the unit code only (no
rescaling); a new move during motion restarts the profile from the current position at rest;
commands are upper case only.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ClassVar

from daqbridge.sim._core import Faults, SerialSimulator

IDENTITY = "ESP300 Version 3.04 07/27/01"

# General error codes (ESP300 manual, appendix "Error messages").
NO_ERROR = 0
COMMAND_DOES_NOT_EXIST = 6
PARAMETER_OUT_OF_RANGE = 7
AXIS_NUMBER_OUT_OF_RANGE = 9
AXIS_NUMBER_MISSING = 37
COMMAND_PARAMETER_MISSING = 38
# Axis error codes: reported as axis * 100 + code.
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

_COMMAND = re.compile(r"(\d*)\s*([A-Z]{2})\s*(.*)")


def _positive(value: float) -> int | None:
    return PARAMETER_OUT_OF_RANGE if value <= 0 else None


def error_text(code: int) -> str:
    """The text ``TB?`` gives for ``code`` (axis errors carry their axis number)."""
    if code >= 100:
        axis, sub = divmod(code, 100)
        return f"AXIS-{axis} {AXIS_ERRORS.get(sub, 'UNKNOWN ERROR')}"
    return GENERAL_ERRORS.get(code, "UNKNOWN ERROR")


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


class _Axis:
    def __init__(self, number: int, *, connected: bool, motor_on: bool) -> None:
        self.number = number
        self.connected = connected
        self.motor_on = motor_on
        self.position = 0.0  # where the axis rests (or where the current move began)
        self.target = 0.0
        self.velocity = 5.0
        self.acceleration = 20.0
        self.deceleration = 20.0
        self.left_limit = -1000.0
        self.right_limit = 1000.0
        self.units = 2  # mm
        self.motion: _Motion | None = None


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
        identity: str = IDENTITY,
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
        if not max_velocity > 0 or home_search_time < 0 or response_time < 0:
            raise ValueError("max_velocity must be > 0, home_search_time and response_time >= 0")
        self.axes = {
            n: _Axis(n, connected=n not in missing, motor_on=motors_on and n not in missing)
            for n in range(1, int(axes) + 1)
        }
        self.max_velocity = float(max_velocity)
        self.home_search_time = float(home_search_time)
        self.response_time = float(response_time)
        self.identity = identity
        self.error_queue: deque[tuple[int, int]] = deque(maxlen=ERROR_QUEUE_DEPTH)
        self.stops: list[int] = []
        """Axis of every ``ST`` received, in order (tests check that a driver really stopped)."""
        self._powered_at = self.clock()
        self._holding = False
        self._backlog: deque[str] = deque()

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
            ax = self.axes[n]
            ax.motion = None
            ax.position = ax.target = float(position)

    @property
    def holding(self) -> bool:
        """True while a ``WS`` holds back later commands."""
        return self._holding

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
        here = self._position(ax)
        ax.motion = None
        ax.position = ax.target = here

    def _start_move(self, ax: _Axis, target: float, *, homing: bool = False) -> None:
        if not ax.connected:
            self.queue_error(ax.number * 100 + MOTOR_NOT_CONNECTED)
            return
        if not ax.motor_on:
            self.queue_error(ax.number * 100 + MOTOR_NOT_ENABLED)
            return
        if not homing and target > ax.right_limit:
            self.queue_error(ax.number * 100 + POSITIVE_SOFTWARE_LIMIT)
            return
        if not homing and target < ax.left_limit:
            self.queue_error(ax.number * 100 + NEGATIVE_SOFTWARE_LIMIT)
            return
        here = self._position(ax)
        ax.motion = None
        ax.position = here
        ax.target = target
        motion = _Motion.plan(
            self.clock(),
            here,
            target,
            ax.velocity,
            ax.acceleration,
            ax.deceleration,
            dwell=self.home_search_time if homing else 0.0,
            homing=homing,
        )
        if motion.duration <= 0:
            ax.position = target
            return
        ax.motion = motion

    # --- command processing ---------------------------------------------------------------------

    def handle_line(self, line: str) -> None:
        for command in line.split(";"):
            command = command.strip()
            if not command:
                continue
            if self._holding:
                self._backlog.append(command)
            else:
                self._execute(command)

    def _answer(self, text: str) -> None:
        self.reply(text, delay=self.real_delay(self.response_time))

    def _release_hold(self) -> None:
        self._holding = False
        while self._backlog and not self._holding:
            self._execute(self._backlog.popleft())

    def _execute(self, command: str) -> None:
        if command in ("*IDN?", "VE?", "VE"):
            self._answer(self.identity)
            return
        m = _COMMAND.fullmatch(command)
        if m is None:
            self.protocol_error(command, "not <axis><mnemonic>[value|?]")
            self.queue_error(COMMAND_DOES_NOT_EXIST)
            return
        axis_text, mnemonic, arg = m.groups()
        handler = getattr(self, f"_cmd_{mnemonic}", None)
        if mnemonic in ("TE", "TB"):
            if arg != "?":
                self.queue_error(COMMAND_DOES_NOT_EXIST)
                return
            handler(arg)
            return
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

    @staticmethod
    def _fmt(value: float) -> str:
        text = f"{value:.5f}"
        return "0.00000" if text == "-0.00000" else text

    # general
    def _cmd_TE(self, arg: str) -> None:
        code = self.error_queue.popleft()[0] if self.error_queue else NO_ERROR
        self._answer(str(code))

    def _cmd_TB(self, arg: str) -> None:
        if self.error_queue:
            code, ms = self.error_queue.popleft()
        else:
            code, ms = NO_ERROR, int(max(0.0, self.clock() - self._powered_at) * 1000)
        self._answer(f"{code}, {ms}, {error_text(code)}")

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
        self._start_move(ax, 0.0, homing=True)

    def _cmd_TP(self, ax: _Axis, arg: str) -> None:
        if arg not in ("", "?"):  # drivers in the wild send both TP and TP?
            self.queue_error(PARAMETER_OUT_OF_RANGE)
            return
        self._answer(self._fmt(self._position(ax)))

    def _cmd_MD(self, ax: _Axis, arg: str) -> None:
        if arg != "?":
            self.queue_error(COMMAND_PARAMETER_MISSING if not arg else PARAMETER_OUT_OF_RANGE)
            return
        self._answer("0" if self._moving(ax) else "1")

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
        hold = max(self._remaining(a) for a in axes) + dwell
        if hold > 0:
            self._holding = True
            self.schedule(hold, self._release_hold)

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
            if v > self.max_velocity:
                return ax.number * 100 + MAXIMUM_VELOCITY_EXCEEDED
            return None

        self._parameter(ax, arg, "velocity", check)

    def _cmd_AC(self, ax: _Axis, arg: str) -> None:
        self._parameter(ax, arg, "acceleration", _positive)

    def _cmd_AG(self, ax: _Axis, arg: str) -> None:
        self._parameter(ax, arg, "deceleration", _positive)

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
        if not self._no_argument(arg):
            return
        if self._moving(ax):
            self._halt(ax)  # no torque: the stage stops where it is
        ax.motor_on = False
