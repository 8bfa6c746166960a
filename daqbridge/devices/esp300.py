"""Newport ESP300 motion controller: one controller on one RS-232 port, up to three axes.

Why it is built this way (wire facts from INSTRUMENTS.md, "Newport ESP300"):

* Moves are silent (``nPA<x>`` has no reply) and errors are never answered on the failing
  command: they are queued and popped with ``TE?``. So a move is ``PA``, then ``MD?`` polls until
  ``1``, then ``TE?`` until ``0``; a queued error fails the move's status with the axis, the code
  and its meaning. Waiting for a reply to ``PA`` would hang until the timeout.
* One :class:`InstrumentWorker` per controller does every transaction, and the axes share it.
  A move must not occupy that thread until it ends, or axis 2 could not start while axis 1
  moves. So the worker runs short tasks only: a move task sends ``PA`` and polls ``MD?`` once at
  once (zero-latency moves finish right there, no sleep in the hot path); unfinished moves are
  polled by a *poll round* that queries every moving axis, then waits with a growing back-off
  (0, 1, 2, 5, 10, 20 ms) that any new task cuts short, and re-queues itself *behind* that task.
  Stop requests therefore reach the wire within one poll, not after the move.
* Soft limits are checked in ``set()`` before any task is queued: a refused position never
  reaches the controller.
* ``stop()`` is called by the RunEngine on abort, pause and Ctrl-C; it queues ``nST`` for the
  worker (no I/O on the RunEngine's loop) and fails the move's status once the axis is at rest.
* Every transaction drains stale input first (a late reply after a dropped or garbled one must
  not be read as the next answer), and re-verifies the controller after the port was reopened
  (an unplugged USB adapter comes back as a fresh port; the controller may have been power
  cycled).
* The stage on each axis is identified with ``nID?`` (``TS50DC.5, SN1263``: model, serial) at
  connect and again at every re-verification: a different stage on the connector after a replug
  is an :class:`IdentityMismatch`, never a silent change of what "x" means. A stage without ESP
  data may answer anything (``Unknown``), and a controller without ``ID?`` stays silent and
  queues error 6: both leave the stage unknown (empty model and serial), not the controller
  refused.
* ``nVU?`` (the axis maximum velocity) is read at connect, so a velocity above it is refused in
  ``set()`` before the wire, instead of as a queued error x10 after it.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter
from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, Kind, PositionerBase
from ophyd.status import MoveStatus, Status
from ophyd.status import wait as status_wait
from ophyd.utils import WaitTimeoutError

from daqbridge.devices._base import InstrumentSignal, InstrumentWorker, check_number
from daqbridge.errors import (
    ConfigError,
    DaqbridgeError,
    IdentityMismatch,
    InstrumentError,
    InstrumentFault,
    InstrumentTimeout,
    PortUnavailable,
    ReplyError,
    ValueRejected,
)
from daqbridge.transport import SerialLease, SerialPortPool, SharedSerialPort, default_pool

__all__ = ["ESP300Axis", "ESP300Controller", "ESP300_UNITS", "esp300_error_meaning"]

log = logging.getLogger(__name__)

ESP300_UNITS: dict[str, int] = {
    "counts": 0,
    "steps": 1,
    "mm": 2,
    "um": 3,
    "in": 4,
    "mil": 5,
    "uin": 6,
    "deg": 7,
    "grad": 8,
    "rad": 9,
    "mrad": 10,
    "urad": 11,
}
"""Unit names and their ``SN`` codes."""

# Meanings from the ESP300 manual's error appendix. Codes above 100 are axis errors:
# axis * 100 + code.
_GENERAL_ERRORS = {
    1: "PCI communication time-out",
    4: "emergency stop activated",
    6: "command does not exist",
    7: "parameter out of range",
    8: "cable interlock error",
    9: "axis number out of range",
    37: "axis number missing",
    38: "command parameter missing",
}
_AXIS_ERRORS = {
    0: "motor type not defined",
    1: "parameter out of range",
    2: "amplifier fault detected",
    3: "following error threshold exceeded",
    4: "positive hardware limit detected",
    5: "negative hardware limit detected",
    6: "positive software limit detected",
    7: "negative software limit detected",
    8: "motor not connected",
    9: "feedback signal fault detected",
    10: "maximum velocity exceeded",
    11: "maximum acceleration exceeded",
    13: "motor not enabled",
    20: "homing aborted",
}
_AXIS_FIXES = {
    2: "check the driver card and motor cable, then power-cycle the controller.",
    3: "lower velocity/acceleration or check the stage for mechanical blockage.",
    4: "the stage hit its hardware limit switch: move back the other way.",
    5: "the stage hit its hardware limit switch: move back the other way.",
    6: "the controller's own software limit (SR) refuses it: change the target or SR.",
    7: "the controller's own software limit (SL) refuses it: change the target or SL.",
    8: "connect the stage cable to this axis and power-cycle the controller.",
    10: "lower the velocity (VA) below the stage's maximum.",
    11: "lower the acceleration (AC/AG).",
    13: "turn the motor on (front panel, or send nMO; motor_on=True does it at connect).",
}

_BACKOFF_S = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02)
"""Pauses between MD? polls of one move: the first poll is immediate (zero-latency stages and
short moves finish without sleeping), later ones back off to 20 ms (50 readback updates/s)."""

_MAX_QUEUED_ERRORS = 12
"""TE? pops at most this many codes per check (the controller's queue is about this deep), so
a device answering garbage forever cannot trap the worker."""

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def esp300_error_meaning(code: int) -> str:
    """Text for a ``TE?`` code: general codes below 100, axis codes as axis*100 + code."""
    if code >= 100:
        return _AXIS_ERRORS.get(code % 100, "axis error (see the ESP300 manual, appendix A)")
    return _GENERAL_ERRORS.get(code, "error (see the ESP300 manual, appendix A)")


def _format_value(value: float) -> str:
    # Fixed point: the controller takes integers or decimals; exponent notation is not in the
    # command grammar.
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


class _Move:
    """One requested move, from ``set()`` until its status is done."""

    __slots__ = (
        "axis",
        "target",
        "status",
        "deadline",
        "poll",
        "next_poll",
        "started",
        "stop_requested",
        "stop_success",
        "stop_sent",
        "finished",
        "errors",
    )

    def __init__(self, axis: ESP300Axis, target: float, status: MoveStatus, timeout: float):
        self.axis = axis
        self.target = target
        self.status = status
        self.deadline = perf_counter() + timeout
        self.poll = 0
        self.next_poll = 0.0
        self.started = False
        self.stop_requested = False
        self.stop_success = False
        self.stop_sent = False
        self.finished = False
        self.errors: list[int] = []


class _AxisReadback(InstrumentSignal):
    """Position read from the controller (``nTP?``); only the controller updates it."""

    def put(self, value: Any, *, force: bool = False, **kwargs: Any) -> None:
        if not force:
            raise ValueRejected(
                f"{self.name} is the measured position and cannot be written.",
                instrument=self.parent.name if self.parent else None,
                value=value,
                fix="move the axis with set()/bps.mv instead.",
            )
        super().put(value, force=True, **kwargs)

    def set(self, value: Any, **kwargs: Any) -> Status:
        self.put(value)  # raises: only the controller writes the readback
        return Status(done=True, success=True)  # pragma: no cover


class _AxisSetting(InstrumentSignal):
    """Velocity / acceleration: written with ``n<CMD><v>``, read back with ``n<CMD>?``."""

    writable = True

    def __init__(self, *, command: str, what: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.command = command
        self.what = what

    def set(self, value: Any, **kwargs: Any) -> Status:
        axis: ESP300Axis = self.parent
        v = check_number(value, instrument=axis.name, what=self.what, low=0.0)
        if v <= 0:
            raise ValueRejected(
                f"{self.what} must be > 0, got {value!r}.",
                instrument=axis.name,
                value=value,
                fix="give a positive value in the axis units per second (squared).",
            )
        if self.command == "VA":
            axis._check_velocity(v)
        return axis._controller._submit_status(
            lambda: axis._controller._write_setting(axis, self, v), obj=self
        )

    def put(self, value: Any, *, force: bool = False, **kwargs: Any) -> None:
        if force:
            super().put(value, force=True, **kwargs)
            return
        status_wait(self.set(value), timeout=self.parent._controller.timeout * 4 + 5)


class ESP300Axis(Device, PositionerBase):
    """One axis of an ESP300: a bluesky Movable/Stoppable positioner with soft limits.

    Built by :meth:`ESP300Controller.axis`; shares the controller's port and worker thread.
    ``readback`` carries the axis name as its data key (like ``ophyd.sim`` motors).
    """

    readback = Cpt(_AxisReadback, value=math.nan, precision=5, kind=Kind.hinted)
    setpoint = Cpt(InstrumentSignal, value=math.nan, precision=5, kind=Kind.normal)
    velocity = Cpt(_AxisSetting, command="VA", what="velocity", value=math.nan, kind=Kind.config)
    acceleration = Cpt(
        _AxisSetting, command="AC", what="acceleration", value=math.nan, kind=Kind.config
    )
    max_velocity = Cpt(InstrumentSignal, value=math.nan, kind=Kind.config)
    stage_model = Cpt(InstrumentSignal, value="", kind=Kind.config)
    stage_serial = Cpt(InstrumentSignal, value="", kind=Kind.config)

    def __init__(
        self,
        controller: ESP300Controller,
        number: int,
        *,
        name: str,
        units: str | None = None,
        low_limit: float | None = None,
        high_limit: float | None = None,
        velocity: float | None = None,
        acceleration: float | None = None,
        deceleration: float | None = None,
        motor_on: bool | None = None,
        move_timeout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__("", name=name, **kwargs)
        self._controller = controller
        self.number = number
        self.units = units
        self._soft_limits = (low_limit, high_limit)
        self.initial = {
            "velocity": velocity,
            "acceleration": acceleration,
            "deceleration": (deceleration),
        }
        self.motor_on_at_connect = motor_on
        self.motor_enabled: bool | None = None
        """Motor state read at connect (``nMO?``); None before connect."""
        self.move_timeout = move_timeout
        """Seconds a move may take before it is stopped and failed; None: estimated per move."""
        self.stage_identity: tuple[str, str] | None = None
        """(model, serial) the stage answered to ``nID?`` at connect; None before connect."""
        self.readback.name = name
        self.setpoint.name = f"{name}_setpoint"
        egu = units or ""
        where = f"ESP300 {controller.port.url} axis {number}"
        for sig, cmd, u in (
            (self.readback, "TP?", egu),
            (self.setpoint, "PA", egu),
            (self.velocity, "VA", f"{egu}/s" if egu else ""),
            (self.acceleration, "AC", f"{egu}/s^2" if egu else ""),
            (self.max_velocity, "VU?", f"{egu}/s" if egu else ""),
            (self.stage_model, "ID?", ""),
            (self.stage_serial, "ID?", ""),
        ):
            sig._units = u or None
            sig._source = f"{where} {number}{cmd}"
        if low_limit is not None and high_limit is not None:
            self.setpoint._limits = (low_limit, high_limit)
        self.readback.subscribe(self._readback_changed, run=False)

    # --- PositionerBase contract ----------------------------------------------------------------

    def _readback_changed(self, value: Any = None, timestamp: float | None = None, **_: Any):
        # MoveStatus watches SUB_READBACK on the positioner (progress bars).
        if timestamp is None:
            self._set_position(value)
        else:
            self._set_position(value, timestamp=timestamp)

    @property
    def position(self) -> float:
        return self.readback.get()

    @property
    def egu(self) -> str:
        return self.units or ""

    @property
    def limits(self) -> tuple[float, float]:
        low, high = self._soft_limits
        if low is None and high is None:
            return (0, 0)  # ophyd's convention for "no soft limits"
        return (-math.inf if low is None else low, math.inf if high is None else high)

    @property
    def moving(self) -> bool:
        return self._controller._moves.get(self.number) is not None

    @property
    def controller(self) -> ESP300Controller:
        return self._controller

    def check_value(self, value: Any) -> float:
        """Soft limits and type, before anything is queued: ValueRejected names axis and limit."""
        low, high = self._soft_limits
        return check_number(
            value,
            instrument=self.name,
            what=f"target position of axis {self.number}",
            low=low,
            high=high,
        )

    def set(
        self,
        new_position: Any,
        *,
        timeout: float | None = None,
        moved_cb: Any = None,
        wait: bool = False,
    ) -> MoveStatus:
        return self.move(new_position, wait=wait, moved_cb=moved_cb, timeout=timeout)

    def move(
        self,
        position: Any,
        wait: bool = False,
        moved_cb: Any = None,
        timeout: float | None = None,
    ) -> MoveStatus:
        """Start a move; the status finishes at rest and fails on a queued controller error."""
        target = self.check_value(position)
        if timeout is not None:
            timeout = check_number(timeout, instrument=self.name, what="move timeout", low=0.0)
        # Our own stop logic: ophyd's default stop-on-failure would also stop the NEXT move
        # when a superseded move's status fails.
        status = MoveStatus(self, target, call_stop_on_failure=False)
        if moved_cb is not None:
            status.add_callback(lambda st: moved_cb(st, obj=self))
        self._controller._start_move(self, target, status, timeout)
        if wait:
            status_wait(status)
        return status

    def stop(self, *, success: bool = False) -> None:
        """Send ``nST`` (via the worker); a running move's status fails unless ``success``."""
        self._controller._request_stop(self.number, success)

    def refresh_configuration(self, timeout: float | None = None) -> None:
        """Ask the controller for this axis's settings now, in one lease: ``nVU?``, ``nVA?``,
        ``nAC?`` and, for a stage that said what it is at connect, ``nID?``.

        The front panel or another program may have changed them since connect or the last
        set, and a recorded setting must be one the controller reported. Queries only: nothing
        is changed. A different stage on the connector is refused (IdentityMismatch), as after
        a replug. Blocking (the baseline reads it from its own thread; interactive use), never
        inside a plan.
        """
        self._controller._refresh_axis(self, timeout)

    def _check_velocity(self, velocity: float, *, where: str = "") -> None:
        """Refuse a velocity above the axis maximum the controller reported (``nVU?``)."""
        high = self.max_velocity.get()
        if math.isfinite(high) and velocity > high:
            raise ValueRejected(
                f"velocity {velocity:g}{where} is above the maximum of axis {self.number} "
                f"({self.name}), {high:g} (the controller's {self.number}VU).",
                instrument=self.name,
                resource=self._controller.port.url,
                value=velocity,
                limit=(0.0, high),
                fix=f"give a velocity up to {high:g}, or raise {self.number}VU on the "
                "controller if the stage allows it.",
            )


class ESP300Controller(Device):
    """The controller on one port: identity, error queue, motor checks, and its axes' moves.

    ``port`` comes from :meth:`SerialPortPool.open` (19200 baud). ``timeout`` is the reply
    timeout of one query, ``lease_timeout`` how long a transaction may wait for the port.
    ``motor_on=True`` turns off motors on at connect; otherwise a motor-off axis is reported
    (logged, ``axis.motor_enabled`` False) and its moves fail without sending ``PA``.
    """

    identity = Cpt(InstrumentSignal, value="", kind=Kind.config)

    def __init__(
        self,
        port: SharedSerialPort,
        *,
        name: str,
        timeout: float = 1.0,
        lease_timeout: float = 5.0,
        motor_on: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__("", name=name, **kwargs)
        if not isinstance(port, SharedSerialPort):
            raise ConfigError(
                f"ESP300 {name!r} needs a SharedSerialPort, got {type(port).__name__}.",
                key="port",
                fix="open it with SerialPortPool.open(url, baudrate=19200), or use "
                "ESP300Controller.from_url(url, name=...).",
            )
        self.port = port
        self.timeout = check_number(timeout, instrument=name, what="reply timeout (s)", low=0.001)
        self.lease_timeout = float(
            check_number(lease_timeout, instrument=name, what="lease timeout (s)", low=0.0)
        )
        self.motor_on = bool(motor_on)
        self.identity._source = f"ESP300 {port.url} VE?"
        self._worker = InstrumentWorker(name)
        self._axes: dict[int, ESP300Axis] = {}
        self._moves: dict[int, _Move] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._poll_queued = False
        self._generation: int | None = None
        self._connected = False
        self._closed = False
        self.stale_errors: list[int] = []
        """Error codes found in the queue at connect (left by an earlier session)."""

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        name: str,
        pool: SerialPortPool | None = None,
        baudrate: int = 19200,
        connect: bool = True,
        **kwargs: Any,
    ) -> ESP300Controller:
        """Interactive use: open ``url`` in ``pool`` (the process pool by default) and connect."""
        port = (pool or default_pool()).open(url, baudrate=baudrate)
        controller = cls(port, name=name, **kwargs)
        if connect:
            controller.connect()
        return controller

    # --- axes -----------------------------------------------------------------------------------

    def axis(
        self,
        number: int,
        *,
        name: str | None = None,
        units: str | None = None,
        low_limit: float | None = None,
        high_limit: float | None = None,
        velocity: float | None = None,
        acceleration: float | None = None,
        deceleration: float | None = None,
        motor_on: bool | None = None,
        move_timeout: float | None = None,
    ) -> ESP300Axis:
        """The positioner of axis ``number`` (1-3), created once; configured at connect.

        Creating an axis after :meth:`connect` configures it at once (blocking, not in a plan).
        """
        if isinstance(number, bool) or number not in (1, 2, 3):
            raise ConfigError(
                f"ESP300 {self.name!r}: axis number must be 1, 2 or 3, got {number!r}.",
                key="number",
                fix="use the axis connector number on the controller's back panel.",
            )
        if number in self._axes:
            raise ConfigError(
                f"ESP300 {self.name!r}: axis {number} already exists as "
                f"{self._axes[number].name!r}.",
                key="number",
                fix="use controller.axes[number] to get it again.",
            )
        if units is not None and units not in ESP300_UNITS:
            raise ConfigError(
                f"ESP300 {self.name!r} axis {number}: unknown units {units!r}.",
                key="units",
                fix=f"use one of {', '.join(ESP300_UNITS)}.",
            )
        label = name or f"{self.name}_axis{number}"
        for what, v in (
            ("low_limit", low_limit),
            ("high_limit", high_limit),
        ):
            if v is not None:
                check_number(v, instrument=label, what=what)
        if low_limit is not None and high_limit is not None and not low_limit < high_limit:
            raise ConfigError(
                f"axis {label!r}: low_limit {low_limit} is not below high_limit {high_limit}.",
                key="high_limit",
                fix="swap the limits or correct one of them.",
            )
        for what, v in (
            ("velocity", velocity),
            ("acceleration", acceleration),
            ("deceleration", deceleration),
            ("move_timeout", move_timeout),
        ):
            if v is not None and check_number(v, instrument=label, what=what) <= 0:
                raise ConfigError(
                    f"axis {label!r}: {what} must be > 0, got {v!r}.",
                    key=what,
                    fix="give a positive number or leave it unset.",
                )
        axis = ESP300Axis(
            self,
            number,
            name=label,
            units=units,
            low_limit=low_limit,
            high_limit=high_limit,
            velocity=velocity,
            acceleration=acceleration,
            deceleration=deceleration,
            motor_on=motor_on,
            move_timeout=move_timeout,
        )
        self._axes[number] = axis
        if self._connected:
            self._worker.call(self._connect_axis, axis, timeout=self._call_timeout())
        return axis

    @property
    def axes(self) -> dict[int, ESP300Axis]:
        return dict(self._axes)

    # --- connection -----------------------------------------------------------------------------

    def _call_timeout(self) -> float:
        return self.lease_timeout + 20 * self.timeout + 5.0

    def connect(self, timeout: float | None = None) -> str:
        """Check identity, clear stale errors, check motors and apply axis settings.

        Returns the identity string. Raises IdentityMismatch when no ESP300 answers.
        """
        self._worker.call(self._connect, timeout=timeout or self._call_timeout())
        self._connected = True
        return self.identity.get()

    @property
    def connected(self) -> bool:
        return self._connected

    def wait_for_connection(self, all_signals: bool = False, timeout: float = 10.0) -> None:
        if not self._connected:
            self.connect(timeout)

    def _connect(self) -> None:
        with self._transaction(verify=False) as lease:
            self._verify(lease)
            for axis in self._axes.values():
                self._connect_axis_in(lease, axis)
            self._raise_queued(lease, None, "while configuring the axes at connect")

    def _connect_axis(self, axis: ESP300Axis) -> None:
        with self._transaction() as lease:
            self._check_stage(lease, axis)
            self._connect_axis_in(lease, axis)
            self._raise_queued(lease, axis, "while configuring the axis")

    def _verify(self, lease: SerialLease) -> None:
        """Identity, stale errors and motor states: at connect and after the port was reopened."""
        ident = self._identity(lease)
        self.identity.update(ident)
        stale = self._pop_errors(lease)
        if stale:
            self.stale_errors = stale
            log.warning(
                "ESP300 %s on %s: cleared %d stale error(s) from the queue: %s",
                self.name,
                self.port.url,
                len(stale),
                ", ".join(f"{c} ({esp300_error_meaning(c)})" for c in stale),
            )
        for axis in self._axes.values():
            self._check_motor(lease, axis)
            self._check_stage(lease, axis)
        self._generation = self.port.generation

    def _identity(self, lease: SerialLease) -> str:
        answers = []
        for cmd in ("VE?", "*IDN?"):
            try:
                reply = self._query(lease, cmd)
            except InstrumentTimeout:
                answers.append(f"{cmd} -> nothing")
                lease.drain()
                continue
            if "ESP300" in reply.upper():
                return reply
            answers.append(f"{cmd} -> {reply!r}")
        raise IdentityMismatch(
            f"no ESP300 answered on this port ({'; '.join(answers)}); expected a reply "
            "containing 'ESP300' (e.g. 'ESP300 Version 3.04 07/27/01').",
            instrument=self.name,
            resource=self.port.url,
            fix="check the port path in the profile, the cable, that the controller is on, and "
            "the baud rate (19200 on the ESP300).",
        )

    def _check_motor(self, lease: SerialLease, axis: ESP300Axis) -> bool:
        n = axis.number
        on = self._query_bool(lease, f"{n}MO?")
        want_on = (
            axis.motor_on_at_connect if axis.motor_on_at_connect is not None else (self.motor_on)
        )
        if not on and want_on:
            lease.write(f"{n}MO\r\n".encode())
            on = self._query_bool(lease, f"{n}MO?")
            if not on:
                codes = self._pop_errors(lease)
                raise InstrumentFault(
                    f"axis {n} ({axis.name}): the motor did not turn on after {n}MO"
                    + (f" (queued errors: {self._describe_codes(codes)})" if codes else "")
                    + ".",
                    code=codes[0] if codes else None,
                    instrument=self.name,
                    resource=self.port.url,
                    fix="check the motor cable and the controller's front panel; a stage that "
                    "is not connected cannot be enabled.",
                )
        if not on and axis.motor_enabled is not False:
            log.warning(
                "ESP300 %s on %s: the motor of axis %d (%s) is OFF; moves of this axis will "
                "fail until it is turned on (front panel, %dMO, or motor_on=True).",
                self.name,
                self.port.url,
                n,
                axis.name,
                n,
            )
        axis.motor_enabled = on
        return on

    def _read_stage(self, lease: SerialLease, axis: ESP300Axis) -> tuple[str, str]:
        """``nID?`` as (model, serial); ("", "") when the controller does not answer it."""
        n = axis.number
        try:
            reply = self._query(lease, f"{n}ID?")
        except InstrumentTimeout:
            lease.drain()
            codes = [c for c in self._pop_errors(lease) if c != 6]  # 6: no ID? on this one
            if codes:
                raise self._fault(
                    axis, codes, f"after asking the stage identity ({n}ID?)"
                ) from None
            log.warning(
                "ESP300 %s on %s: axis %d (%s) did not answer %dID?; its stage is unknown.",
                self.name,
                self.port.url,
                n,
                axis.name,
                n,
            )
            return "", ""
        model, _, serial = reply.partition(",")
        return model.strip(), serial.strip()

    def _check_stage(self, lease: SerialLease, axis: ESP300Axis) -> None:
        """Read the stage identity; after a reopen, refuse a stage that is not the one before."""
        stage = self._read_stage(lease, axis)
        known = axis.stage_identity
        if known is not None and any(known) and any(stage) and stage != known:
            # One garbled reply must not pass for a swapped stage: ask again, and believe the
            # change only if the second answer does not give the known stage back.
            again = self._read_stage(lease, axis)
            if again != known:
                raise IdentityMismatch(
                    f"axis {axis.number} ({axis.name}): the stage is now {' '.join(again)!r}, "
                    f"not the {' '.join(known)!r} that was there at connect.",
                    instrument=self.name,
                    resource=self.port.url,
                    fix="another stage was plugged into this connector: check the cables; to use "
                    "the new stage, reconnect (restart the runtime) so its limits and settings "
                    "are checked again.",
                )
            log.info(
                "ESP300 %s: a garbled %dID? reply (%r) was read again: still %r",
                self.name,
                axis.number,
                " ".join(stage),
                " ".join(known),
            )
            stage = known
        axis.stage_identity = stage
        axis.stage_model.update(stage[0])
        axis.stage_serial.update(stage[1])

    def _connect_axis_in(self, lease: SerialLease, axis: ESP300Axis) -> None:
        n = axis.number
        self._check_motor(lease, axis)
        if axis.units is not None:
            lease.write(f"{n}SN{ESP300_UNITS[axis.units]}\r\n".encode())
        axis.max_velocity.update(self._query_number(lease, f"{n}VU?"))
        if axis.initial["velocity"] is not None:
            axis._check_velocity(axis.initial["velocity"], where=" (from the profile)")
        for key, cmd in (("velocity", "VA"), ("acceleration", "AC"), ("deceleration", "AG")):
            value = axis.initial[key]
            if value is not None:
                lease.write(f"{n}{cmd}{_format_value(value)}\r\n".encode())
        axis.velocity.update(self._query_number(lease, f"{n}VA?"))
        axis.acceleration.update(self._query_number(lease, f"{n}AC?"))
        position = self._query_number(lease, f"{n}TP?")
        axis.readback.update(position)
        axis.setpoint.update(position)

    # --- transactions ---------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, *, verify: bool = True) -> Iterator[SerialLease]:
        with self.port.lease(self.name, self.lease_timeout) as lease:
            try:
                lease.drain()
                if verify and self._connected and self._generation != self.port.generation:
                    log.info(
                        "ESP300 %s: port %s was reopened; re-verifying", self.name, self.port.url
                    )
                    self._verify(lease)
                yield lease
            except PortUnavailable as exc:
                raise PortUnavailable(
                    self.port.url, exc.reason, pid=exc.pid, fix=exc.fix, instrument=self.name
                ) from None

    def _query(self, lease: SerialLease, cmd: str) -> str:
        try:
            raw = lease.query(cmd.encode("ascii") + b"\r\n", b"\n", self.timeout)
        except InstrumentTimeout as exc:
            raise InstrumentTimeout(
                f"no reply to {cmd!r} within {self.timeout:.3f} s",
                reply=exc.reply,
                instrument=self.name,
                resource=self.port.url,
                fix="check that the controller is on and connected (19200 baud); a reply lost "
                "on the line is retried by the next operation.",
            ) from None
        return raw.decode("ascii", "replace").strip()

    def _query_number(self, lease: SerialLease, cmd: str) -> float:
        reply = self._query(lease, cmd)
        if _NUMBER.fullmatch(reply):
            return float(reply)
        raise ReplyError(
            f"reply to {cmd!r} is not a number",
            reply=reply,
            instrument=self.name,
            resource=self.port.url,
            fix="line noise or another program on the port; the next operation drains the "
            "line and retries.",
        )

    def _query_bool(self, lease: SerialLease, cmd: str) -> bool:
        reply = self._query(lease, cmd)
        if reply == "1":
            return True
        if reply == "0":
            return False
        raise ReplyError(
            f"reply to {cmd!r} is not 0 or 1",
            reply=reply,
            instrument=self.name,
            resource=self.port.url,
            fix="line noise or another program on the port; the next operation drains the "
            "line and retries.",
        )

    def _pop_errors(self, lease: SerialLease) -> list[int]:
        codes = []
        for _ in range(_MAX_QUEUED_ERRORS):
            reply = self._query(lease, "TE?")
            try:
                code = int(reply)
            except ValueError:
                raise ReplyError(
                    "reply to 'TE?' is not an error code",
                    reply=reply,
                    instrument=self.name,
                    resource=self.port.url,
                    fix="line noise or another program on the port; retry the operation.",
                ) from None
            if code == 0:
                break
            codes.append(code)
        return codes

    @staticmethod
    def _describe_codes(codes: list[int]) -> str:
        return ", ".join(f"{c} ({esp300_error_meaning(c)})" for c in codes)

    def _fault(self, axis: ESP300Axis | None, codes: list[int], context: str) -> InstrumentFault:
        code = codes[0]
        sub = code % 100 if code >= 100 else None
        who = f"axis {axis.number} ({axis.name})" if axis is not None else "the controller"
        if code >= 100 and (axis is None or code // 100 != axis.number):
            who = f"axis {code // 100}"
        more = f"; also queued: {self._describe_codes(codes[1:])}" if len(codes) > 1 else ""
        if sub is not None:
            fix = _AXIS_FIXES.get(sub, "see the ESP300 manual (error appendix).")
            if sub == 13:
                fix = fix.replace("nMO", f"{code // 100}MO")
        elif code == 7:
            fix = (
                "a value is outside what the controller accepts (velocity above the stage "
                "maximum, position beyond travel): correct it."
            )
        else:
            fix = "see the ESP300 manual (error appendix)."
        return InstrumentFault(
            f"{who} reported error {code}: {esp300_error_meaning(code)} {context}{more}.",
            code=code,
            instrument=self.name,
            resource=self.port.url,
            fix=fix,
        )

    def _raise_queued(self, lease: SerialLease, axis: ESP300Axis | None, context: str) -> None:
        codes = self._pop_errors(lease)
        if codes:
            raise self._fault(axis, codes, context)

    # --- worker plumbing ------------------------------------------------------------------------

    def _submit(self, fn: Any, *args: Any) -> None:
        self._worker.submit(fn, *args)
        self._wake.set()  # cut a poll round's back-off short: this task runs next

    def _submit_status(self, fn: Any, *, obj: Any = None) -> Status:
        status = self._worker.status(fn, obj=obj)
        self._wake.set()
        return status

    def _refresh_axis(self, axis: ESP300Axis, timeout: float | None) -> None:
        if not self._connected:
            raise InstrumentError(
                f"cannot read the settings of axis {axis.number} ({axis.name}): the controller "
                "is not connected.",
                instrument=self.name,
                resource=self.port.url,
                fix="call connect() first (the runtime does it at start-up).",
            )
        timeout = timeout or self._call_timeout()
        # Through _submit_status: it cuts a poll round's back-off short, so the queries do not
        # wait behind another axis's move.
        status = self._submit_status(lambda: self._read_axis_settings(axis))
        try:
            status_wait(status, timeout=timeout)
        except WaitTimeoutError:
            raise InstrumentTimeout(
                f"the settings of axis {axis.number} ({axis.name}) were not read within "
                f"{timeout:g} s.",
                instrument=self.name,
                resource=self.port.url,
                fix="check that the controller is on and connected (19200 baud); the request may "
                "still be queued behind a long operation.",
            ) from None

    def _read_axis_settings(self, axis: ESP300Axis) -> None:
        n = axis.number
        with self._transaction() as lease:
            # A controller that did not answer nID? at connect would cost a reply timeout on
            # every refresh for nothing: only a stage that said what it is is asked again, and
            # its silence now is an error, not a stage become unknown.
            known = axis.stage_identity
            if known is not None and any(known):
                model, _, serial = self._query(lease, f"{n}ID?").partition(",")
                if (model.strip(), serial.strip()) != known:
                    self._check_stage(lease, axis)  # garbled: asked again; another stage: refused
            top, velocity, acceleration = (
                self._query_number(lease, f"{n}{cmd}?") for cmd in ("VU", "VA", "AC")
            )
        axis.max_velocity.update(top)
        axis.velocity.update(velocity)
        axis.acceleration.update(acceleration)

    def _write_setting(self, axis: ESP300Axis, sig: _AxisSetting, value: float) -> None:
        n = axis.number
        with self._transaction() as lease:
            lease.write(f"{n}{sig.command}{_format_value(value)}\r\n".encode())
            readback = self._query_number(lease, f"{n}{sig.command}?")
            self._raise_queued(lease, axis, f"after setting {sig.what} to {value:g}")
        sig.update(readback)

    # --- moves ----------------------------------------------------------------------------------

    def _move_timeout(self, axis: ESP300Axis, target: float, timeout: float | None) -> float:
        if timeout is not None:
            return timeout
        if axis.move_timeout is not None:
            return axis.move_timeout
        v, a = axis.velocity.get(), axis.acceleration.get()
        start = axis.readback.get()
        if v > 0 and a > 0 and math.isfinite(start):
            # Trapezoid estimate, doubled, plus margin for slow links and settling.
            return 2.0 * (abs(target - start) / v + 2.0 * v / a) + 10.0
        return 300.0

    def _start_move(
        self, axis: ESP300Axis, target: float, status: MoveStatus, timeout: float | None
    ) -> None:
        if self._closed:
            raise InstrumentError(
                "the controller is closed.",
                instrument=self.name,
                resource=self.port.url,
                fix="build the device again (restart the runtime).",
            )
        move = _Move(axis, target, status, self._move_timeout(axis, target, timeout))
        with self._lock:
            old = self._moves.get(axis.number)
            self._moves[axis.number] = move
        if old is not None:
            self._finish(
                old,
                InstrumentError(
                    f"move of axis {axis.number} ({axis.name}) to {old.target:g} was superseded "
                    f"by a new move to {target:g}.",
                    instrument=self.name,
                    resource=self.port.url,
                ),
            )
        axis.setpoint.update(target)
        self._submit(self._begin_move, move)

    def _finish(self, move: _Move, exc: BaseException | None = None) -> None:
        with self._lock:
            if move.finished:
                return
            move.finished = True
            n = move.axis.number
            if self._moves.get(n) is move:
                del self._moves[n]
        if exc is None:
            move.status.set_finished()
        else:
            move.status.set_exception(exc)

    def _begin_move(self, move: _Move) -> None:
        if move.finished:
            return
        axis = move.axis
        n = axis.number
        try:
            if move.stop_requested:
                raise self._stopped_error(move, None)
            with self._transaction() as lease:
                if axis.motor_enabled is False and not self._check_motor(lease, axis):
                    raise InstrumentFault(
                        f"axis {n} ({axis.name}): the motor is off; the move to "
                        f"{move.target:g} was not sent.",
                        code=n * 100 + 13,
                        instrument=self.name,
                        resource=self.port.url,
                        fix=f"turn the motor on (front panel or {n}MO), or set motor_on=True "
                        "in the profile so connect() does it.",
                    )
                lease.write(f"{n}PA{_format_value(move.target)}\r\n".encode())
                move.started = True
                move.poll = 1
                if self._poll_once(lease, move):
                    return
        except BaseException as exc:  # noqa: BLE001 - every failure must reach the status
            if move.started and not isinstance(exc, PortUnavailable):
                self._send_stop(n)  # PA went out but we lost track: do not leave it moving
            self._finish(move, _with_context(exc, move))
            return
        move.next_poll = perf_counter() + _BACKOFF_S[1]
        self._queue_poll()

    def _poll_once(self, lease: SerialLease, move: _Move) -> bool:
        """Poll one move; True when it is over (its status is then finished)."""
        axis = move.axis
        n = axis.number
        done = self._query_bool(lease, f"{n}MD?")
        position = self._query_number(lease, f"{n}TP?")
        axis.readback.update(position)
        if not done:
            if perf_counter() > move.deadline and not move.stop_sent:
                lease.write(f"{n}ST\r\n".encode())
                move.stop_sent = True
                self._finish(
                    move,
                    InstrumentTimeout(
                        f"axis {n} ({axis.name}) did not reach {move.target:g} in time (now at "
                        f"{position:g}); it was stopped (ST).",
                        instrument=self.name,
                        resource=self.port.url,
                        fix="increase move_timeout (or the velocity), or check the stage for "
                        "blockage.",
                    ),
                )
                return True
            return False
        codes = move.errors + self._pop_errors(lease)
        mine, others = [], []
        for code in codes:
            (others if code >= 100 and code // 100 != n else mine).append(code)
        for code in others:
            other = self._moves.get(code // 100)
            if other is not None:
                other.errors.append(code)
            else:
                log.warning(
                    "ESP300 %s: error %d (%s) for idle axis %d",
                    self.name,
                    code,
                    esp300_error_meaning(code),
                    code // 100,
                )
        if mine:
            self._finish(move, self._fault(axis, mine, f"during the move to {move.target:g}"))
        elif move.stop_requested and not move.stop_success:
            self._finish(move, self._stopped_error(move, position))
        else:
            self._finish(move)
        return True

    def _stopped_error(self, move: _Move, position: float | None) -> InstrumentError:
        at = f" at {position:g}" if position is not None else " before it started"
        return InstrumentError(
            f"move of axis {move.axis.number} ({move.axis.name}) to {move.target:g} was "
            f"stopped{at}.",
            instrument=self.name,
            resource=self.port.url,
        )

    def _queue_poll(self) -> None:
        with self._lock:
            if self._poll_queued or self._closed:
                return
            self._poll_queued = True
        self._worker.submit(self._poll_round)

    def _poll_round(self) -> None:
        with self._lock:
            self._poll_queued = False
        self._wake.clear()
        moves = [m for m in list(self._moves.values()) if m.started and not m.finished]
        now = perf_counter()
        due = [m for m in moves if m.next_poll <= now]
        if due:
            try:
                with self._transaction() as lease:
                    for move in due:
                        if self._poll_once(lease, move):
                            continue
                        move.poll += 1
                        move.next_poll = (
                            perf_counter() + _BACKOFF_S[min(move.poll, len(_BACKOFF_S) - 1)]
                        )
            except BaseException as exc:  # noqa: BLE001 - a failed poll fails its moves
                # The axes may still be moving while we lost track of them: stop them (best
                # effort; a lost port refuses, and the next transaction reopens it).
                for move in due:
                    if not isinstance(exc, PortUnavailable):
                        self._send_stop(move.axis.number)
                    self._finish(move, _with_context(exc, move))
        pending = [m for m in list(self._moves.values()) if m.started and not m.finished]
        if not pending or self._closed:
            return
        delay = min(m.next_poll for m in pending) - perf_counter()
        if delay > 0:
            self._wake.wait(delay)
        self._queue_poll()

    # --- stop -----------------------------------------------------------------------------------

    def _request_stop(self, number: int, success: bool) -> None:
        move = self._moves.get(number)
        if move is not None:
            move.stop_requested = True
            move.stop_success = success
        if self._closed:
            return
        self._submit(self._send_stop, number, move)

    def _send_stop(self, number: int, move: _Move | None = None) -> None:
        """ST for ``number``; ``move`` is the move that was current when the stop was asked
        (a move started after the request must not be affected)."""
        try:
            with self._transaction(verify=False) as lease:
                lease.write(f"{number}ST\r\n".encode())
        except DaqbridgeError as exc:
            log.error("ESP300 %s: could not send %dST: %s", self.name, number, exc)
            return
        if move is not None and not move.finished:
            move.stop_sent = True
            move.next_poll = 0.0
            if not move.started:
                self._finish(move, self._stopped_error(move, None))

    def _send_stops(self, numbers: list[int]) -> None:
        for number in numbers:
            self._send_stop(number, self._moves.get(number))

    def stop(self, *, success: bool = False) -> None:
        """Stop every axis of the controller."""
        for number in self._axes:
            self._request_stop(number, success)

    # --- shutdown -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop moving axes, fail pending moves, stop the worker. The port stays with its pool."""
        if self._closed:
            return
        moving = list(self._moves)
        if moving:
            for number in moving:
                move = self._moves.get(number)
                if move is not None:
                    move.stop_requested = True
            try:
                future = self._worker.submit(self._send_stops, moving)
                self._wake.set()
                future.result(timeout=self._call_timeout())
            except Exception as exc:  # noqa: BLE001 - closing goes on; report why
                log.error("ESP300 %s: stopping axes %s at close failed: %s", self.name, moving, exc)
        self._closed = True
        self._wake.set()
        self._worker.shutdown(wait=True)
        for move in list(self._moves.values()):
            self._finish(
                move,
                InstrumentError(
                    f"controller closed during the move of axis {move.axis.number}.",
                    instrument=self.name,
                    resource=self.port.url,
                ),
            )
        self._connected = False

    def destroy(self) -> None:
        self.close()
        super().destroy()


def _with_context(exc: BaseException, move: _Move) -> BaseException:
    if isinstance(exc, DaqbridgeError):
        return exc
    err = InstrumentError(
        f"{type(exc).__name__} while polling axis {move.axis.number}: {exc}",
        instrument=move.axis._controller.name,
        resource=move.axis._controller.port.url,
    )
    err.__cause__ = exc
    return err
