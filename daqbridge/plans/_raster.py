"""Two-axis raster on the ESP300 stage, with any detector (power meter or camera).

Why it is shaped like this: ``bp.grid_scan`` already moves only the axis that changes, snakes,
and writes the ``shape``/``extents`` metadata that image viewers use to rebuild the map, so the
raster is a grid scan with the checks that make it safe on a real stage: both axes distinct,
every corner inside the soft limits before the first ``PA`` (the ESP300 refuses a target beyond
its limits only after the other axis has moved), and ``ST`` sent to both axes when the raster
fails or is aborted.
"""

from collections.abc import Generator, Mapping, Sequence
from typing import Any

from bluesky import plans as bp
from bluesky.protocols import Movable, Readable

from daqbridge.plans._checks import (
    plan_error,
    positioner_limits,
    require_device,
    require_points,
    require_range,
    require_within,
)
from daqbridge.plans._metadata import device_name, hinted_fields, start_metadata
from daqbridge.plans._safety import stop_on_failure

__all__ = ["raster"]

PLAN = "raster"


def raster(
    stage_x: Movable,
    stage_y: Movable,
    detector: Readable,
    x_range: Sequence[float],
    y_range: Sequence[float],
    *,
    snake: bool = True,
    md: Mapping[str, Any] | None = None,
) -> Generator[Any, Any, str]:
    """Raster ``detector`` over ``x_range`` x ``y_range``, each ``(start, stop, num)``.

    Rows run along x (the fast axis); y steps between rows (the slow axis). With ``snake``
    (default) every other row runs backwards, saving the return travel.
    """
    require_device(PLAN, "stage_x", stage_x, "a stage axis", Movable, Readable)
    require_device(PLAN, "stage_y", stage_y, "a stage axis", Movable, Readable)
    require_device(PLAN, "detector", detector, "a detector", Readable)
    if stage_x is stage_y:
        raise plan_error(
            PLAN, "stage_y", stage_y, "is the same axis as stage_x", fix="pass two different axes."
        )
    if detector is stage_x or detector is stage_y:
        raise plan_error(
            PLAN, "detector", detector, "is one of the stage axes", fix="pass a detector."
        )
    if not isinstance(snake, bool):
        raise plan_error(PLAN, "snake", snake, "must be True or False", fix="pass a bool.")
    x0, x1, nx = require_range(PLAN, "x_range", x_range)
    y0, y1, ny = require_range(PLAN, "y_range", y_range)
    require_points(PLAN, "x_range[2] x y_range[2]", nx * ny, axes=2)
    for arg, axis, values in (("x_range", stage_x, (x0, x1)), ("y_range", stage_y, (y0, y1))):
        limits = positioner_limits(axis)
        for value in values:
            require_within(PLAN, arg, value, limits, device=device_name(axis), what="soft limits")

    _md = start_metadata(
        PLAN,
        {
            "stage_x": stage_x,
            "stage_y": stage_y,
            "detector": detector,
            "x_range": [x0, x1, nx],
            "y_range": [y0, y1, ny],
            "snake": snake,
        },
        detectors=[detector],
        motors=[stage_y, stage_x],
        dimensions=[(hinted_fields(stage_y), "primary"), (hinted_fields(stage_x), "primary")],
        md=md,
    )
    plan = bp.grid_scan(
        [detector], stage_y, y0, y1, ny, stage_x, x0, x1, nx, snake_axes=snake, md=_md
    )
    return (yield from stop_on_failure(plan, [stage_x, stage_y]))
