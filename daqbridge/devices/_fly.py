"""A row of a fly scan: one wire positioner moving at constant velocity while a wire detector is
read as fast as its line allows (issue 16, "beat the step floor").

Why it is built this way:

* **The bluesky flyer protocol, nothing of its own.** :class:`RowFlyer` is Stageable,
  Preparable, Flyable, Collectable and Stoppable: a plan stages it (the axis's velocity is
  remembered), prepares it with a :class:`Row`, kicks it off (the move to the row's far end
  starts, the samplers with it), waits for ``complete`` (the move has ended and the controller
  has said so, ``MD?`` + ``TE?``, through the axis's own move logic) and collects the row as
  events of ``primary`` (the detector's values with positions) and of ``<axis>_readbacks``
  (every position the controller reported). ophyd-async's ``StandardFlyer`` is built for
  hardware-triggered detectors writing frames; these instruments are software-polled serial
  lines, which is the old flyer protocol's shape.
* **Data is the product.** Every detector value is one the instrument reported, through its own
  wire signal (the 1830-C's ``C``, ``D?``, ``Q?`` in one lease, with every check its driver
  makes); its timestamp is the time the query went out, taken inside the lease (a lease wait
  behind another holder is not in it). Every position is a ``TP?`` reply, time-stamped the
  same way. A sample's position is the linear interpolation, in time, between the two ``TP?``
  readbacks around it; the descriptor says so (``interpolation`` in the data key, and its
  ``source``). A sample's time is in the event's ``timestamps``; the event's own ``time`` is
  when bluesky composed it at ``collect`` (its collect takes data and timestamps only).
  Nothing is ever the commanded target. Samples outside the requested range (the run-up and
  run-out, where the axis accelerates) are not recorded in ``primary``; their readbacks are in
  ``<axis>_readbacks``.
* **Constant velocity over the range.** The row starts ``run_up`` before its first position and
  ends as far after its last: the trapezoid's acceleration distance, v^2 / (2 a), from the
  velocity and acceleration the controller reported, plus a margin. Both ends are checked
  against the soft limits before anything moves (:meth:`RowFlyer.row`).
* **Safety.** The move is the axis's own (``StandardMovable.set``): soft limits, timeout, ``TE?``
  after ``MD?``, and ``ST`` when the move fails or is cancelled. A sampler that fails (a meter
  fault, a garbled reply) cancels the move, which stops the axis. ``stop()`` stops the axis and
  the samplers; ``unstage()`` stops what still runs and restores the velocity the axis had at
  ``stage()``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from event_model import DataKey
from ophyd_async.core import AsyncStatus

from daqbridge.devices.core import WirePositioner, wire_backend
from daqbridge.errors import InstrumentError, ValueRejected

__all__ = ["INTERPOLATION", "MIN_INTERVAL_S", "RUN_UP_MARGIN", "Row", "RowFlyer"]

INTERPOLATION = (
    "linear in time between the two position readbacks around the sample (each readback and "
    "each sample time-stamped when its query went out; until the move command the axis is "
    "where the readback before it found it)"
)
"""How a fly scan's positions are derived: the words the descriptor carries."""

RUN_UP_MARGIN = 1.25
"""The run-up is this many times the acceleration distance: the controller's profile reaches
the velocity exactly at v^2 / (2 a); a margin keeps the first sample off the bend."""


MIN_INTERVAL_S = 0.001
"""Shortest time between two queries of one sampler. A serial line is slower than this (an
1830-C reading is about 15 ms at 9600 baud, a ``TP?`` about 5 ms at 19200), so it only bounds a
line that answers at once (an in-process simulator without byte time)."""


@dataclass(frozen=True)
class Row:
    """One row: ``start`` to ``stop`` (either direction) on the fast axis at ``velocity``, with
    the run-up before ``start`` and the run-out after ``stop``."""

    start: float
    stop: float
    velocity: float
    run_up: float

    @property
    def direction(self) -> float:
        return 1.0 if self.stop >= self.start else -1.0

    @property
    def begin(self) -> float:
        """Where the axis waits before the row (run-up included)."""
        return self.start - self.direction * self.run_up

    @property
    def end(self) -> float:
        """Where the row's move ends (run-out included)."""
        return self.stop + self.direction * self.run_up

    def covers(self, position: float) -> bool:
        lo, hi = sorted((self.start, self.stop))
        slack = 1e-9 * max(1.0, abs(lo), abs(hi))
        return lo - slack <= position <= hi + slack


@dataclass
class _Sample:
    asked: float  # time.time() when the query went out
    value: float
    reported: bool = True  # False: the rest position held until the move command (no query)
    answered: float | None = None  # time.time() when the reply came back


class RowFlyer:
    """Flies rows of ``axis`` (a wire positioner: the ESP300's) reading ``detector`` (a wire
    signal: the 1830-C's ``power``) as fast as its line allows; ``slow_axis`` (optional) is
    read once per row and recorded with every sample of it."""

    def __init__(
        self,
        axis: WirePositioner,
        detector: Any,
        *,
        slow_axis: WirePositioner | None = None,
        name: str = "",
        min_interval: float = MIN_INTERVAL_S,
        position_interval: float | None = None,
    ) -> None:
        self.min_interval = float(min_interval)
        self.position_interval = (
            self.min_interval if position_interval is None else float(position_interval)
        )
        """Shortest time between two position queries: an instrument that wants its commands
        spaced (an Elliptec mount, about 100 ms) gets its spacing."""
        self.axis = axis
        self.detector = detector
        self.slow_axis = slow_axis
        self.name = name or f"{axis.name}_fly"
        self.parent = None
        self._position = wire_backend(axis.movable_logic.readback)
        self._value = wire_backend(detector)
        self._slow = None if slow_axis is None else wire_backend(slow_axis.movable_logic.readback)
        self._row: Row | None = None
        self._move: Any = None
        self._samplers: list[asyncio.Task] = []
        self._positions: list[_Sample] = []
        self._values: list[_Sample] = []
        self._slow_reading: _Sample | None = None
        self._pending: list[dict[str, Any]] = []
        self._readbacks: list[dict[str, Any]] = []
        self._velocity_at_stage: float | None = None
        self.rows_flown = 0

    # --- names and descriptions -----------------------------------------------------------------

    @property
    def position_key(self) -> str:
        return self.axis.movable_logic.readback.name

    @property
    def detector_key(self) -> str:
        return self.detector.name

    @property
    def slow_key(self) -> str | None:
        return None if self.slow_axis is None else self.slow_axis.movable_logic.readback.name

    @property
    def readbacks_stream(self) -> str:
        return f"{self.axis.name}_readbacks"

    @property
    def pending_samples(self) -> int:
        """Samples of ``primary`` the next ``collect`` gives."""
        return len(self._pending)

    @property
    def hints(self) -> dict[str, list[str]]:
        return {"fields": [self.detector_key]}

    # --- the row's geometry (synchronous: plans check rows before their first message) ----------

    def reported(self, signal: Any) -> float | None:
        """What the controller last reported through ``signal`` (no wire exchange)."""
        reading = wire_backend(signal).last_reading
        return None if reading is None else float(reading["value"])

    def row(self, start: float, stop: float, velocity: float | None = None) -> Row:
        """The :class:`Row` from ``start`` to ``stop`` at ``velocity`` (None: the axis's current
        velocity), its run-up and run-out inside the axis's soft limits, or ValueRejected."""
        axis = self.axis
        if velocity is not None:
            # The axis's own check of a velocity set (the ESP300's VU, a mount's 1-100 %),
            # before any byte.
            velocity = wire_backend(axis.velocity).check(velocity)[0]
        v = velocity if velocity is not None else self.reported(axis.velocity)
        # An axis without an acceleration setting (an Elliptec mount: constant speed, its
        # velocity a percentage) needs no run-up.
        ramp = getattr(axis, "acceleration", None)
        a = math.inf if ramp is None else self.reported(ramp)
        if v is None or a is None or not (v > 0 and a > 0):
            raise ValueRejected(
                f"{axis.name}: velocity {v!r} or acceleration {a!r} unknown or not positive; "
                "a fly row needs both to place its run-up.",
                instrument=axis.name,
                fix="connect the axis (its VA? and AC? are read at connect) or give a velocity.",
            )
        top = self.reported(axis.max_velocity) if hasattr(axis, "max_velocity") else None
        if top is not None and v > top:
            raise ValueRejected(
                f"{axis.name}: fly velocity {v:g} is above the axis's maximum {top:g} (VU).",
                instrument=axis.name,
                value=v,
                limit=(0.0, top),
                fix=f"give a velocity up to {top:g}.",
            )
        run_up = 0.0 if math.isinf(a) else RUN_UP_MARGIN * v * v / (2.0 * a)
        row = Row(float(start), float(stop), float(v), run_up)
        for where in (row.begin, row.end):
            axis.movable_logic.check_target(where)  # soft limits, before any byte
        return row

    # --- Stageable ------------------------------------------------------------------------------

    @AsyncStatus.wrap
    async def stage(self) -> None:
        """Remember the velocity the axis has, to restore it at ``unstage``."""
        self._velocity_at_stage = await self.axis.velocity.get_value()
        self.rows_flown = 0

    @AsyncStatus.wrap
    async def unstage(self) -> None:
        """Stop what still runs (an aborted row), then give the axis its velocity back."""
        await self._halt()
        wanted = self._velocity_at_stage
        self._velocity_at_stage = None
        if wanted is not None and self.reported(self.axis.velocity) != wanted:
            await self.axis.velocity.set(wanted)

    # --- Preparable -----------------------------------------------------------------------------

    @AsyncStatus.wrap
    async def prepare(self, value: Row) -> None:
        """Take ``value`` as the next row; set the axis's velocity to the row's (VA, read back)."""
        if not isinstance(value, Row):
            raise TypeError(f"{self.name}: prepare takes a Row, got {value!r}")
        self.row(value.start, value.stop, value.velocity)  # limits again: refuse before motion
        if self.reported(self.axis.velocity) != value.velocity:
            await self.axis.velocity.set(value.velocity)
        self._row = value

    # --- Flyable --------------------------------------------------------------------------------

    @AsyncStatus.wrap
    async def kickoff(self) -> None:
        """One position at rest, the slow axis's position, then the move and the samplers."""
        row = self._row
        if row is None:
            raise InstrumentError(f"{self.name}: kickoff before prepare", instrument=self.name)
        self._positions, self._values = [], []
        self._positions.append(await self._ask(self._position))
        if self._slow is not None:
            self._slow_reading = await self._ask(self._slow)
        at_rest = self._positions[-1].value
        logic = self.axis.movable_logic
        self._move = move = self.axis.set(row.end)
        # Until the move command has left, the axis is where the readback found it: that bounds
        # the interpolation at the start of the row by when the move could have begun, not by
        # the next readback (an Elliptec mount's come 100 ms apart, and its driver may hold the
        # command back to space it from the previous move).
        rest_until = time.time()
        while not logic.moving and not move.done:
            rest_until = time.time()
            await asyncio.sleep(self.min_interval)
        self._positions.append(_Sample(rest_until, at_rest, reported=False))
        self._samplers = [
            asyncio.ensure_future(
                self._sample(self._position, self._positions, self.position_interval)
            ),
            asyncio.ensure_future(self._sample(self._value, self._values, self.min_interval)),
        ]

    @AsyncStatus.wrap
    async def complete(self) -> None:
        """Done when the move has ended (``MD?`` 1, ``TE?`` clear) and the samplers stopped."""
        move, row = self._move, self._row
        if move is None or row is None:
            raise InstrumentError(f"{self.name}: complete before kickoff", instrument=self.name)
        samplers = self._samplers
        stopped: BaseException | None = None
        try:
            await move
        except BaseException as exc:  # noqa: BLE001 - a sampler's failure may be the cause
            stopped = exc
        for task in samplers:
            task.cancel()
        results = await asyncio.gather(*samplers, return_exceptions=True)
        for result in results:
            # A sampler that failed cancelled the move: its error is the reason, not the
            # move's cancellation.
            if isinstance(result, Exception):
                raise result
        if stopped is not None:
            raise stopped
        self._positions.append(await self._ask(self._position))  # at rest: the row's last
        self._build_events(row)
        self._move, self._samplers = None, []
        self.rows_flown += 1

    # --- Collectable ----------------------------------------------------------------------------

    def describe_collect(self) -> dict[str, dict[str, DataKey]]:
        position_source = self._position.source(self.position_key, True)
        logic = self.axis.movable_logic
        units = getattr(self._position.command, "units", None)
        position = DataKey(
            dtype="number",
            shape=[],
            source=f"{position_source}, interpolated at the sample time",
            interpolation=INTERPOLATION,  # type: ignore[typeddict-unknown-key]
        )
        reported = DataKey(dtype="number", shape=[], source=position_source)
        if units is not None:
            position["units"] = reported["units"] = units
        precision = getattr(self._position.command, "precision", None)
        if precision is not None:
            position["precision"] = reported["precision"] = precision
        low, high = logic.limits
        if low is not None and high is not None:
            position["limits"] = {"control": {"low": low, "high": high}}
        detector = DataKey(
            dtype="number",
            shape=[],
            source=f"{self._value.source(self.detector_key, True)}, time-stamped when asked",
        )
        if getattr(self._value.command, "units", None) is not None:
            detector["units"] = self._value.command.units
        primary = {self.detector_key: detector, self.position_key: position}
        if self._slow is not None and self.slow_key is not None:
            slow = DataKey(
                dtype="number",
                shape=[],
                source=f"{self._slow.source(self.slow_key, True)}, read at rest before the row",
            )
            if getattr(self._slow.command, "units", None) is not None:
                slow["units"] = self._slow.command.units
            primary[self.slow_key] = slow
        answered = DataKey(
            dtype="number",
            shape=[],
            source=f"{position_source}: when its reply came back (the controller took the "
            "position between the query's time stamp and this)",
            units="s",
        )
        key = f"{self.position_key}_readback"
        return {
            "primary": primary,
            self.readbacks_stream: {key: reported, f"{key}_answered": answered},
        }

    def collect(self) -> Iterator[dict[str, Any]]:
        """The last rows' samples (``primary``) and readbacks (``<axis>_readbacks``), once."""
        events, self._pending = self._pending + self._readbacks, []
        self._readbacks = []
        return iter(events)

    # --- Stoppable ------------------------------------------------------------------------------

    async def stop(self, success: bool = False) -> None:
        """Stop the axis (``ST``) and the samplers."""
        await self._halt(always_stop=True)

    # --- the work -------------------------------------------------------------------------------

    async def _halt(self, always_stop: bool = False) -> None:
        move = self._move
        for task in self._samplers:
            task.cancel()
        if self._samplers:
            await asyncio.gather(*self._samplers, return_exceptions=True)
        self._samplers = []
        if always_stop or (move is not None and not move.done):
            await self.axis.stop(success=False)
        if move is not None and not move.done:
            with contextlib.suppress(BaseException):
                await move
        self._move = None

    async def _ask(self, backend: Any) -> _Sample:
        """One value through ``backend`` in one lease, time-stamped when the query went out."""
        async with backend.device.transaction() as x:
            asked = time.time()
            value = await backend.read_in(x)
            answered = time.time()
        backend.store(value)
        return _Sample(asked, float(value), answered=answered)

    async def _sample(self, backend: Any, into: list[_Sample], interval: float) -> None:
        """Ask ``backend`` back to back until cancelled; a failure cancels the move (which
        stops the axis) and is raised by ``complete``."""
        move = self._move
        try:
            while not move.done:
                sample = await self._ask(backend)
                into.append(sample)
                # Always a turn of the loop: a line that answers without waiting (sim://, no
                # byte time) must not starve the move's own polls, nor pile up samples.
                await asyncio.sleep(max(0.0, sample.asked + interval - time.time()))
        except asyncio.CancelledError:
            raise
        except BaseException:
            if not move.done:
                move.task.cancel()
            raise

    def _build_events(self, row: Row) -> None:
        positions = sorted(self._positions, key=lambda s: s.asked)
        times = [p.asked for p in positions]
        for p in positions:
            if not p.reported:
                continue
            key = f"{self.position_key}_readback"
            late = f"{key}_answered"
            self._readbacks.append(
                {
                    "data": {key: p.value, late: p.answered},
                    "timestamps": {key: p.asked, late: p.answered},
                }
            )
        slow = self._slow_reading
        for sample in self._values:
            x = _interpolate(times, [p.value for p in positions], sample.asked)
            if x is None or not row.covers(x):
                continue
            data = {self.detector_key: sample.value, self.position_key: x}
            stamps = {self.detector_key: sample.asked, self.position_key: sample.asked}
            if slow is not None and self.slow_key is not None:
                data[self.slow_key] = slow.value
                stamps[self.slow_key] = slow.asked
            self._pending.append({"data": data, "timestamps": stamps})


def _interpolate(times: list[float], values: list[float], t: float) -> float | None:
    """Linear interpolation at ``t`` between the samples around it; None outside them."""
    if not times or t < times[0] or t > times[-1]:
        return None
    i = bisect.bisect_right(times, t)
    if i >= len(times):
        return values[-1]
    t0, t1 = times[i - 1], times[i]
    if t1 <= t0:
        return values[i]
    f = (t - t0) / (t1 - t0)
    x = values[i - 1] + f * (values[i] - values[i - 1])
    return x if math.isfinite(x) else None
