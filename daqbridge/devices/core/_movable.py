"""Positioners on the wire core: a move is a coroutine, and the lease is the only scheduler.

Why this shape (ophyd-async ADR 0017, ``StandardMovable`` + ``MovableLogic``): status, watchers,
progress and stop semantics belong to the framework, not to each driver; a serial positioner adds
only what its wire needs:

* **A move never holds the port while the stage travels.** The move command goes out in one
  lease; then the motion-done query and the position are asked in short leases, one poll each,
  with a growing pause in between (the first poll is immediate: a short move ends without a
  sleep). Other devices on the port, and the other axes of the same controller, get their turn
  between two polls, which is how two axes on one RS-232 line move at once without a thread.
* **Soft limits are checked before any byte**, synchronously in ``set()`` (so a refused target
  raises in the plan, never as a failed status after a position query) and again in
  ``check_move`` (bluesky's ``Checkable``).
* **The readback is what the controller reports**: every poll stores the position the
  controller answered; the setpoint is the target the last move command sent, and is named by
  that command in the descriptor (``1PA``), never passed off as a measurement.
* **A move the driver lost track of is stopped**: any failure after the move command went out
  (a garbled reply, a timeout, a cancelled status) sends the stop command before it propagates;
  a move superseded by a newer one on the same axis fails without stopping the newer one.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from bluesky.protocols import Reading
from event_model import DataKey
from ophyd_async.core import (
    CALCULATE_TIMEOUT,
    AsyncStatus,
    CalculatableTimeout,
    MovableLogic,
    SignalBackend,
    SignalR,
    SignalRW,
    StandardMovable,
    TimeoutCalculator,
    WatchableAsyncStatus,
    WatcherUpdate,
    observe_value,
)

# Not exported by ophyd-async, but what StandardMovable.stop() and its set() share; _move_to
# is that set() with another starting position (ophyd-async pinned to 0.21.x in pyproject).
from ophyd_async.core._movable import MoveTimeout, StopState

from daqbridge.devices._base import check_number
from daqbridge.devices.core._exchange import Exchange
from daqbridge.devices.core._signal import WireSignalBackend
from daqbridge.errors import InstrumentError, InstrumentTimeout, ValueRejected

POLL_BACKOFF_S = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02)
"""Pauses between two motion-done polls of one move: immediate first, then up to 20 ms (50
readback updates a second). The port is free during every pause."""


END_MARGIN_S = 0.001
"""How long after the profile's expected end of a move the poll for it is sent: the controller
must have finished its last step, and a clock read 1 ms late costs less than a poll too early."""


class WireAxis(Protocol):
    """What the logic needs of the device an axis talks through (its own, or its controller's)."""

    name: str

    def transaction(self) -> AbstractAsyncContextManager[Exchange]:
        """One lease on the port, the instrument re-verified first if the port was reopened."""

    def source_for(self, command: str) -> str:
        """The descriptor ``source`` of a value read or set with ``command``."""


@dataclass(frozen=True)
class WireMotion:
    """How a positioner moves on the wire, as the manual gives it.

    ``move`` is a ``str.format`` pattern of the target formatted by ``format_target``
    (``"1PA{}"``); ``done`` is the motion-done query (``"1MD?"``) and ``is_done`` turns its reply
    into True/False (ValueError for anything else); ``stop`` stops the axis (``"1ST"``).
    """

    move: str
    done: str
    is_done: Callable[[str], bool]
    stop: str
    format_target: Callable[[float], str] = repr
    backoff: tuple[float, ...] = POLL_BACKOFF_S


class _Superseded(InstrumentError):
    """A newer move of the same axis took over: fail this one, but leave the axis moving."""


@dataclass
class WireMovableLogic(MovableLogic[float]):
    """``MovableLogic`` for a positioner whose controller answers a motion-done query.

    ``readback`` must be a wire signal (its backend reads the position inside a poll's lease);
    ``setpoint`` is normally :func:`wire_target_signal`, whose put sends the move command.
    ``velocity``/``acceleration`` (optional signals) give the move timeout
    (:meth:`calculate_timeout`); ``limits`` are soft limits, None for an open side.
    Subclasses add the instrument's own rules in :meth:`before_move` and :meth:`after_move`.
    """

    axis: WireAxis
    motion: WireMotion
    limits: tuple[float | None, float | None] = (None, None)
    velocity: SignalR[float] | None = None
    acceleration: SignalR[float] | None = None
    move_timeout: float | None = None
    """Seconds a move may take; None: estimated from distance and velocity."""
    what: str = "target position"
    _ids: Any = field(default_factory=lambda: itertools.count(1), init=False, repr=False)
    _current: int = field(default=0, init=False)
    """Number of the move in progress (0: none); a newer move supersedes an older one."""
    _stopped: int = field(default=0, init=False)
    """Number of the last move a stop was sent for (so a cancelled move does not send another)."""
    _arrived: int = field(default=0, init=False)
    """Number of the last move the controller reported done (nothing left to stop)."""

    # --- hooks for an instrument's rules --------------------------------------------------------

    async def before_move(self, x: Exchange, target: float) -> None:
        """In the move's lease, before the move command (a motor-off check, for instance)."""

    async def after_move(self, x: Exchange, target: float) -> None:
        """In the lease of the poll that found the motion done (queued controller errors)."""

    # --- checks ---------------------------------------------------------------------------------

    def check_target(self, value: Any) -> float:
        """A finite number within the soft limits, or ValueRejected naming axis and limits."""
        low, high = self.limits
        return check_number(value, instrument=self.axis.name, what=self.what, low=low, high=high)

    async def check_move(self, new_position: float) -> None:
        self.check_target(new_position)

    async def calculate_timeout(self, old_position: float, new_position: float) -> float | None:
        """Twice the trapezoid's travel time plus 10 s (slow links, settling); None if unknown.

        A velocity or acceleration the controller reports as zero or cannot be read leaves the
        move without a deadline rather than with a wrong one.
        """
        if self.move_timeout is not None:
            return self.move_timeout
        travel = await self.travel_time(old_position, new_position)
        return None if travel is None else 2.0 * travel + 10.0

    async def travel_time(self, old_position: float, new_position: float) -> float | None:
        """:meth:`expected_travel`, with the controller asked now for a velocity or acceleration
        it never reported (none yet, or a mock signal). What it did report (at connect, after
        every set of them) is used as is: asking before every move would cost two exchanges per
        point on a slow line, for a figure that only bounds the move."""
        if self.velocity is None:
            return None
        velocity, acceleration = self._reported_motion()
        if velocity is None:
            velocity = await self.velocity.get_value()
        if acceleration is None and self.acceleration is not None:
            acceleration = await self.acceleration.get_value()
        return _travel(old_position, new_position, velocity, acceleration)

    def expected_travel(self, old_position: float, new_position: float) -> float | None:
        """Seconds the controller's motion profile needs for the move, from what it already
        reported, without a byte on the wire; None when something is unknown or cannot be right
        (the polls then follow the back-off alone)."""
        return _travel(old_position, new_position, *self._reported_motion())

    def _reported_motion(self) -> tuple[float | None, float | None]:
        """Velocity and acceleration as the controller last reported them, None for one it never
        did; an axis without an acceleration signal is taken to reach its velocity at once."""
        velocity = None if self.velocity is None else _reported(self.velocity)
        acceleration = math.inf if self.acceleration is None else _reported(self.acceleration)
        return velocity, acceleration

    # --- moving ---------------------------------------------------------------------------------

    @property
    def moving(self) -> bool:
        """True from the move command until the move's status ends."""
        return self._current > 0

    async def start(self, target: float) -> int:
        """Send the move command in one lease; return the move's number (for polling)."""
        target = self.check_target(target)
        move_id = next(self._ids)
        async with self.axis.transaction() as x:
            await self.before_move(x, target)
            await x.write(self.motion.move.format(self.motion.format_target(target)))
        # Only once the lease has flushed the command: a move that never left is not "moving".
        self._current = move_id
        return move_id

    async def move(self, new_position: float, timeout: TimeoutCalculator) -> None:
        """Move command, then polls in short leases until the controller says done."""
        # What a put to the setpoint does (start, then keep the target), with the move's own
        # number in hand: a newer move started meanwhile must not be taken for this one.
        from_position = _reported(self.readback)
        move_id = await self.start(new_position)
        started = time.monotonic()
        backend = self.setpoint._connector.backend
        if isinstance(backend, WireTargetBackend):
            backend.store(float(new_position))
        try:
            travel = None
            if from_position is not None:
                travel = self.expected_travel(from_position, float(new_position))
            expected_end = None if travel is None else started + travel
            await self.wait_done(new_position, move_id, timeout(), expected_end)
        except _Superseded:
            raise  # the newer move owns the axis now: no stop
        except BaseException:
            if move_id not in (self._stopped, self._arrived):
                # Lost track of a moving stage (garbled reply, timeout, cancelled status): it
                # must not keep going. Shielded, so a second cancellation cannot skip the stop.
                await asyncio.shield(self._send_stop(move_id))
            raise
        finally:
            if self._current == move_id:
                self._current = 0

    async def wait_done(
        self,
        target: float,
        move_id: int,
        timeout: float | None,
        expected_end: float | None = None,
    ) -> None:
        """Poll (done query, then position) until done; on timeout stop and raise.

        The pauses follow the back-off while the end the motion profile expects
        (``expected_end``, ``time.monotonic()``) is far. The poll that would come within one
        poll's length of that end is moved to land just after it: the end of the move is then
        seen one exchange after it happens, not up to a whole pause later (a poll sent 2 ms
        before the end used to cost the next 20 ms pause). Once the end has passed with the
        controller still moving (settling, a slower stage than its settings say), the back-off
        starts again from its shortest pause, so the end is still seen soon after it comes.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = self.motion.backoff
        late = 0  # polls since the expected end passed
        for poll in itertools.count():
            if self._current != move_id:
                raise _Superseded(
                    f"move of {self.axis.name} to {target:g} was superseded by a newer move.",
                    instrument=self.axis.name,
                )
            polled = time.monotonic()
            async with self.axis.transaction() as x:
                done, position = await self.poll(x)
                if done:
                    self._arrived = move_id  # a queued error after this needs no stop
                    await self.after_move(x, target)
                    return
            if deadline is not None and time.monotonic() > deadline:
                await self._send_stop(move_id)
                raise InstrumentTimeout(
                    f"{self.axis.name} did not reach {target:g} within {timeout:.3g} s (now at "
                    f"{position:g}); it was stopped ({self.motion.stop}).",
                    instrument=self.axis.name,
                    fix="raise the move timeout or the velocity, or check the stage for blockage.",
                )
            pause = backoff[min(poll + 1, len(backoff) - 1)]
            if expected_end is not None:
                now = time.monotonic()
                until_end = expected_end - now
                if until_end <= 0.0:  # the profile's end has passed: poll soon again
                    late += 1
                    pause = min(pause, backoff[min(late, len(backoff) - 1)])
                elif until_end < pause + (now - polled):  # the next poll would come early
                    pause = until_end + END_MARGIN_S
            await self.pause(pause)

    async def pause(self, seconds: float) -> None:
        """The wait between two polls, the port free. An instrument that reports the end of a
        move on its own (the Elliptec's ``PO``) may end it early; the next poll still decides."""
        await asyncio.sleep(seconds)

    async def poll(self, x: Exchange) -> tuple[bool, float]:
        """Motion done? then the position, in the caller's lease; the position is stored."""
        reply = await x.query(self.motion.done)
        try:
            done = self.motion.is_done(reply)
        except ValueError:
            raise x.reply_error(self.motion.done, reply, "a motion-done flag") from None
        backend = wire_backend(self.readback)
        position = await backend.read_in(x)
        backend.store(position)  # watchers and progress bars see every reported position
        return done, position

    async def stop(self) -> None:
        """The stop command in one lease (``StandardMovable.stop`` then cancels the move)."""
        await self._send_stop(self._current)

    async def _send_stop(self, move_id: int) -> None:
        self._stopped = move_id  # before the lease: the move is cancelled while it waits
        async with self.axis.transaction() as x:
            await x.write(self.motion.stop)


def trapezoid_time(distance: float, velocity: float, acceleration: float) -> float | None:
    """Travel time of a trapezoidal profile (a triangle when the move is too short to reach the
    velocity; deceleration equal to the acceleration, the controllers' default); None for a
    velocity or acceleration that cannot be right."""
    v, a = velocity, acceleration
    if not (v > 0 and a > 0 and math.isfinite(distance)):
        return None
    if distance >= v * v / a:  # reaches the velocity: accelerate, cruise, decelerate
        return distance / v + v / a
    return 2.0 * math.sqrt(distance / a)


def _travel(
    old_position: float, new_position: float, velocity: float | None, acceleration: float | None
) -> float | None:
    """The profile's travel time for the move; None when velocity or acceleration is unknown."""
    if velocity is None or acceleration is None:
        return None
    return trapezoid_time(abs(new_position - old_position), velocity, acceleration)


def _reported(signal: SignalR[float]) -> float | None:
    """The value a wire signal's instrument last reported (None if it never did, or a mock)."""
    reading = getattr(signal._connector.backend, "last_reading", None)
    return None if reading is None else float(reading["value"])


class WirePositioner(StandardMovable[float]):
    """A ``StandardMovable`` whose ``set()`` refuses a bad target before any byte or task.

    ``StandardMovable.set`` asks the readback first and checks afterwards; on a wire that is a
    position query for a move that is then refused. Here the soft limits are checked
    synchronously, so the refusal is an exception in the plan, as with the v1 positioners.
    """

    movable_logic: WireMovableLogic

    @property
    def position(self) -> float:
        """The position the controller last reported (no wire exchange; NaN before any).

        For the prompt (bluesky's ``%wa`` lists what has a ``position``) and the IOC; a plan
        reads the axis, which asks the controller."""
        reading = getattr(wire_backend(self.movable_logic.readback), "last_reading", None)
        return math.nan if reading is None else float(reading["value"])

    @property
    def precision(self) -> int | None:
        """Decimals the read-back is shown with (its command's ``precision``)."""
        command = getattr(wire_backend(self.movable_logic.readback), "command", None)
        return getattr(command, "precision", None)

    def set(  # type: ignore[override]
        self, new_position: float, timeout: CalculatableTimeout = CALCULATE_TIMEOUT
    ) -> WatchableAsyncStatus[float]:
        target = self.movable_logic.check_target(new_position)
        return self._move_to(target, timeout)

    @WatchableAsyncStatus.wrap
    async def _move_to(
        self, target: float, timeout: CalculatableTimeout
    ) -> AsyncIterator[WatcherUpdate[float]]:
        """``StandardMovable.set``, starting from the position the controller last reported.

        ophyd-async's ``set`` first asks the readback where the axis is, for the progress
        bar's start and the move's timeout: on a serial line that is a whole position query
        (``1TP?``, 5 ms of reply at 19200 baud) before every move, the only exchange of a step
        that carries nothing the run records. The last report (every poll of every move, every
        read stores one) serves both; only an axis never heard from is asked. What is recorded
        is unchanged: the event's read asks the controller, as always.
        """
        logic = self.movable_logic
        self._stop_state = StopState.NONE
        old_position = _reported(logic.readback)
        if old_position is None:
            old_position = await logic.readback.get_value()
        units, precision = await logic.get_units_precision()
        await logic.check_move(target)
        if timeout == CALCULATE_TIMEOUT:
            move_timeout = await logic.calculate_timeout(old_position, target)
        else:
            move_timeout = timeout
        try:
            async with AsyncStatus(
                logic.move(new_position=target, timeout=MoveTimeout(move_timeout))
            ) as self._move_status:
                async for current in observe_value(logic.readback, done_status=self._move_status):
                    yield WatcherUpdate(
                        current=current,
                        initial=old_position,
                        target=target,
                        name=self.name,
                        unit=units,
                        precision=precision,
                    )
        except asyncio.CancelledError:  # a stop(success=True) ends the move without an error
            if self._stop_state == StopState.NONE:
                raise
        finally:
            self._move_status = None
        stop_state = self._stop_state
        self._stop_state = StopState.NONE
        if stop_state == StopState.USER_FAILURE:
            raise RuntimeError(f"Device {self.name} was stopped.")


def wire_backend(signal: Any) -> WireSignalBackend:
    """The wire backend of a signal (a mock-connected signal has none: a clear error)."""
    backend = signal._connector.backend
    if not isinstance(backend, WireSignalBackend):
        raise TypeError(f"{signal.name or signal!r} is not a wire signal (mock connected?)")
    return backend


class WireTargetBackend(SignalBackend[float]):
    """The setpoint of a wire positioner: the target its last move command sent.

    A put starts a move (the EPICS motor record's VAL semantics, which the IOC serves) and
    returns once the command is on the wire; the value is the target sent, stored only after
    the lease that sent it. Its descriptor names the move command (``ESP300 <port> axis 1 1PA``).
    """

    def __init__(
        self,
        axis: WireAxis,
        command: str,
        start: Callable[[float], Awaitable[Any]],
        *,
        units: str | None = None,
        precision: int | None = None,
        limits: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(float)
        self.axis = axis
        self.command = command
        self.units = units
        self.precision = precision
        self.limits = limits
        self._start = start
        self._reading: Reading[float] | None = None
        self._callback: Callable[[Reading[float]], None] | None = None

    def source(self, name: str, read: bool) -> str:
        return self.axis.source_for(self.command)

    async def connect(self, timeout: float) -> None:
        """Nothing to connect: the controller was proved by its device's connector."""

    async def get_datakey(self, source: str) -> DataKey:
        key = DataKey(dtype="number", shape=[], source=source)
        if self.units is not None:
            key["units"] = self.units
        if self.precision is not None:
            key["precision"] = self.precision
        if self.limits is not None:
            key["limits"] = {"control": {"low": self.limits[0], "high": self.limits[1]}}
        return key

    def store(self, value: float) -> None:
        """Keep a target the controller was sent (or, at connect, where it holds the axis)."""
        reading: Reading[float] = {"value": value, "timestamp": time.time(), "alarm_severity": 0}
        self._reading = reading
        if self._callback is not None:
            self._callback(reading)

    async def put(self, value: float | None) -> None:
        if value is None:
            raise ValueRejected("a move needs a target, got None", instrument=self.axis.name)
        await self._start(value)
        self.store(float(value))

    async def get_reading(self) -> Reading[float]:
        if self._reading is None:
            return {"value": math.nan, "timestamp": time.time(), "alarm_severity": 0}
        return self._reading

    async def get_value(self) -> float:
        return (await self.get_reading())["value"]

    async def get_setpoint(self) -> float:
        return await self.get_value()

    def set_callback(self, callback: Callable[[Reading[float]], None] | None) -> None:
        if callback is not None and self._callback is not None:
            raise RuntimeError(f"{self.command}: a callback is already set")
        self._callback = callback
        if callback is not None and self._reading is not None:
            callback(self._reading)


def wire_target_signal(
    axis: WireAxis,
    command: str,
    start: Callable[[float], Awaitable[Any]],
    *,
    units: str | None = None,
    precision: int | None = None,
    limits: tuple[float, float] | None = None,
    name: str = "",
) -> SignalRW[float]:
    """A positioner's setpoint: a put sends the move command (``start``); reads the target."""
    backend = WireTargetBackend(
        axis, command, start, units=units, precision=precision, limits=limits
    )
    return SignalRW(backend, name=name)
