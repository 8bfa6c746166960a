"""A raster flown: rows at constant velocity while the detector is read as fast as its line allows.

Why it is shaped like this (issue 16): a step raster stops at every point, and each stop costs
the move's acceleration, the controller's ``MD?`` + ``TE?`` and a reading; a flown row costs the
motion itself. The plan is bluesky's ``prepare`` / ``kickoff`` / ``complete`` / ``collect`` over
a :class:`~daqbridge.devices.RowFlyer` (one per run), so the RunEngine writes the documents:
``primary`` holds every detector sample with the fast axis's position interpolated from the
controller's own readbacks at the sample's time (the descriptor says how), and
``<axis>_readbacks`` every readback. The safety of the step raster is kept: every row's run-up
and run-out inside the soft limits before the first message, the axes stopped when the plan fails
or is aborted (the flyer stops its row), and the fast axis's velocity restored afterwards
(``unstage``, which runs on success, error and abort).
"""

import logging
from collections.abc import Generator, Mapping, Sequence
from typing import Any

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.protocols import Movable, Readable

from daqbridge.errors import ValueRejected
from daqbridge.plans._checks import (
    plan_error,
    positioner_limits,
    require_device,
    require_number,
    require_points,
    require_positive,
    require_range,
    require_within,
)
from daqbridge.plans._metadata import device_name, hinted_fields, start_metadata
from daqbridge.plans._safety import stop_on_failure

__all__ = ["fly_polarization", "fly_raster"]

PLAN = "fly_raster"
log = logging.getLogger("daqbridge.plans")


def _power_signal(meter: Any, plan: str = PLAN) -> Any:
    """The meter's wire signal a fly row samples (the 1830-C's ``power``)."""
    signal = getattr(meter, "power", None)
    from daqbridge.devices.core import wire_backend

    try:
        wire_backend(signal)
    except (TypeError, AttributeError):
        raise plan_error(
            plan,
            "meter",
            meter,
            "is not a native power meter whose power is read on the wire",
            fix="pass the native 1830-C (sim_meter); legacy and mock devices cannot be flown.",
        ) from None
    return signal


def fly_raster(
    stage_x: Movable,
    stage_y: Movable,
    meter: Readable,
    x_range: Sequence[float],
    y_range: Sequence[float],
    *,
    velocity: float | None = None,
    snake: bool = True,
    md: Mapping[str, Any] | None = None,
) -> Generator[Any, Any, str]:
    """Fly ``meter`` over ``x_range`` x ``y_range``, each ``(start, stop, num)``.

    Rows run along x at constant ``velocity`` (default: the axis's own velocity, ``VA``) while
    the meter is read back to back; y steps between rows, snaking by default. x's ``num`` is the
    step raster's resolution the run is compared with: a row that gives fewer samples than that
    is logged (fly slower). Every sample is an event of ``primary``.
    """
    from daqbridge.devices import RowFlyer
    from daqbridge.devices.core import WirePositioner

    require_device(PLAN, "stage_x", stage_x, "a stage axis", Movable, Readable)
    require_device(PLAN, "stage_y", stage_y, "a stage axis", Movable, Readable)
    require_device(PLAN, "meter", meter, "a power meter", Readable)
    if stage_x is stage_y:
        raise plan_error(
            PLAN, "stage_y", stage_y, "is the same axis as stage_x", fix="pass two different axes."
        )
    for arg, axis in (("stage_x", stage_x), ("stage_y", stage_y)):
        if not isinstance(axis, WirePositioner):
            raise plan_error(
                PLAN,
                arg,
                axis,
                "is not a native wire axis (an ESP300 axis)",
                fix="fly the native ESP300 axes (sim_stage_x, sim_stage_y).",
            )
    signal = _power_signal(meter)
    if not isinstance(snake, bool):
        raise plan_error(PLAN, "snake", snake, "must be True or False", fix="pass a bool.")
    if velocity is not None:
        velocity = require_positive(PLAN, "velocity", velocity)
    x0, x1, nx = require_range(PLAN, "x_range", x_range)
    y0, y1, ny = require_range(PLAN, "y_range", y_range)
    require_points(PLAN, "x_range[2] x y_range[2]", nx * ny, axes=2)
    if x0 == x1:
        raise plan_error(
            PLAN,
            "x_range",
            [x0, x1, nx],
            "starts where it stops: a flown row needs a length",
            fix="give x_range a start and a stop that differ (or use raster for one column).",
        )
    for arg, axis, values in (("x_range", stage_x, (x0, x1)), ("y_range", stage_y, (y0, y1))):
        limits = positioner_limits(axis)
        for value in values:
            require_within(PLAN, arg, value, limits, device=device_name(axis), what="soft limits")
    flyer = RowFlyer(stage_x, signal, slow_axis=stage_y, name=f"{device_name(stage_x)}_fly")
    try:
        forward, backward = flyer.row(x0, x1, velocity), flyer.row(x1, x0, velocity)
    except ValueRejected as exc:
        raise plan_error(
            PLAN,
            "x_range" if velocity is None else "velocity",
            [x0, x1] if velocity is None else velocity,
            f"needs a run-up outside what the axis allows ({exc.what})",
            limit=positioner_limits(stage_x),
            fix="shrink x_range or lower the velocity (the run-up is 1.25 v^2 / 2a each side).",
        ) from None
    ys = [y0 + (y1 - y0) * j / (ny - 1) for j in range(ny)] if ny > 1 else [y0]

    _md = start_metadata(
        PLAN,
        {
            "stage_x": stage_x,
            "stage_y": stage_y,
            "meter": meter,
            "x_range": [x0, x1, nx],
            "y_range": [y0, y1, ny],
            "velocity": velocity,
            "snake": snake,
        },
        detectors=[meter],
        motors=[stage_y, stage_x],
        dimensions=[(hinted_fields(stage_y), "primary"), (hinted_fields(stage_x), "primary")],
        md=md,
        fly={
            "velocity": forward.velocity,
            "run_up": forward.run_up,
            "interpolation": "see the descriptor's data key of the fast axis",
        },
    )

    def rows() -> Generator[Any, Any, str]:
        uid = yield from bps.open_run(_md)
        for j, y in enumerate(ys):
            row = backward if snake and j % 2 else forward
            yield from bps.mv(stage_y, y, stage_x, row.begin)
            yield from _fly_row(flyer, row)
            samples = flyer.pending_samples
            if samples < nx:
                log.warning(
                    "fly_raster row %d: %d samples over %d points of x_range: fly slower "
                    "(velocity) for one sample per point.",
                    j,
                    samples,
                    nx,
                )
            yield from bps.collect(flyer)
        yield from bps.close_run()
        return uid

    plan = bpp.stage_wrapper(rows(), [flyer])
    return (yield from stop_on_failure(plan, [flyer, stage_x, stage_y]))


def _fly_row(flyer: Any, row: Any) -> Generator[Any, Any, None]:
    """One row flown, the flyer protocol's way: prepare, kickoff, complete (collect is the
    caller's, which may look at the samples first)."""
    yield from bps.prepare(flyer, row, wait=True)
    yield from bps.kickoff(flyer, wait=True)
    yield from bps.complete(flyer, wait=True)


POLARIZATION_PLAN = "fly_polarization"


def fly_polarization(
    rotator: Movable,
    meter: Readable,
    start: float,
    stop: float,
    *,
    velocity: int | None = None,
    md: Mapping[str, Any] | None = None,
) -> Generator[Any, Any, str]:
    """Turn ``rotator`` (an Elliptec mount) from ``start`` to ``stop`` degrees in one move while
    ``meter`` is read back to back: the polarisation scan flown.

    ``velocity`` is the mount's velocity in percent (``sv``; default: the mount's own). Every
    meter sample is an event of ``primary`` with the angle interpolated from the mount's ``gp``
    readbacks, asked no faster than the mount's poll interval (a mount wants about 100 ms
    between commands).
    """
    from daqbridge.devices import RowFlyer
    from daqbridge.devices.core import WirePositioner
    from daqbridge.plans._polarization import _mount_limits

    plan = POLARIZATION_PLAN
    require_device(plan, "rotator", rotator, "a rotation mount", Movable, Readable)
    require_device(plan, "meter", meter, "a power meter", Readable)
    if not isinstance(rotator, WirePositioner):
        raise plan_error(
            plan,
            "rotator",
            rotator,
            "is not a native wire mount (an Elliptec mount)",
            fix="fly a native Elliptec mount (sim_rotators_a).",
        )
    signal = _power_signal(meter, plan)
    a = require_number(plan, "start", start)
    b = require_number(plan, "stop", stop)
    if a == b:
        raise plan_error(
            plan, "stop", b, "equals start: a flown turn needs a length", fix="give two angles."
        )
    if velocity is not None:
        velocity = int(require_positive(plan, "velocity", velocity))
    limits = _mount_limits(rotator)
    for arg, value in (("start", a), ("stop", b)):
        require_within(plan, arg, value, limits, device=device_name(rotator), what="limits")
    interval = getattr(rotator, "poll_interval", None)
    flyer = RowFlyer(
        rotator, signal, name=f"{device_name(rotator)}_fly", position_interval=interval
    )
    try:
        row = flyer.row(a, b, velocity)
    except ValueRejected as exc:
        raise plan_error(
            plan,
            "velocity",
            velocity,
            f"cannot be flown ({exc.what})",
            fix="give a velocity the mount takes (1-100 %).",
        ) from None
    _md = start_metadata(
        plan,
        {"rotator": rotator, "meter": meter, "start": a, "stop": b, "velocity": velocity},
        detectors=[meter],
        motors=[rotator],
        dimensions=[(hinted_fields(rotator), "primary")],
        md=md,
        fly={
            "velocity": row.velocity,
            "run_up": row.run_up,
            "interpolation": "see the descriptor's data key of the rotator",
        },
    )

    def turn() -> Generator[Any, Any, str]:
        uid = yield from bps.open_run(_md)
        yield from bps.mv(rotator, row.begin)
        yield from _fly_row(flyer, row)
        yield from bps.collect(flyer)
        yield from bps.close_run()
        return uid

    return (yield from stop_on_failure(bpp.stage_wrapper(turn(), [flyer]), [flyer, rotator]))
