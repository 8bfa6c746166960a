"""Polarisation scan: rotate Elliptec mounts and measure the transmitted power.

Why it is shaped like this:

* Several mounts (half-wave plate and analyser, say) often turn together; on an Elliptec bus
  they share one serial line, and the bus driver lets their moves overlap (each mount has its own
  worker; the bus serialises only bytes). So every point moves all rotators at once
  (``bp.list_scan`` with every rotator) and waits for all of them, instead of one after another.
* A mount accepts one revolution either way of home (it answers "out of range" beyond, after
  the other mounts have already moved), and the profile may narrow that with soft limits; every
  angle of every rotator is checked against both before the first move.
"""

from collections.abc import Generator, Mapping, Sequence
from typing import Any

from bluesky import plans as bp
from bluesky.protocols import Movable, Readable

from daqbridge.plans._checks import (
    plan_error,
    positioner_limits,
    require_device,
    require_numbers,
    require_within,
)
from daqbridge.plans._metadata import device_name, hinted_fields, start_metadata
from daqbridge.plans._safety import stop_on_failure

__all__ = ["polarization_scan", "ROTATION_RANGE_DEG"]

PLAN = "polarization_scan"

ROTATION_RANGE_DEG = (-360.0, 360.0)
"""What an ELL14 accepts without soft limits: one revolution either way of home."""


def _mount_limits(rotator: Any) -> tuple[float, float]:
    soft = positioner_limits(rotator)
    if soft is None:
        return ROTATION_RANGE_DEG
    return (max(soft[0], ROTATION_RANGE_DEG[0]), min(soft[1], ROTATION_RANGE_DEG[1]))


def polarization_scan(
    rotator: Movable,
    meter: Readable,
    angles: Sequence[float],
    *,
    extra_rotators: Sequence[Movable] = (),
    offsets: Sequence[float] | None = None,
    md: Mapping[str, Any] | None = None,
) -> Generator[Any, Any, str]:
    """Turn ``rotator`` through ``angles`` (deg) and read ``meter`` at each angle.

    ``extra_rotators`` turn together with ``rotator`` (all moves of a point overlap), each to the
    same angle plus its entry in ``offsets`` (deg, default 0): e.g. an analyser kept crossed
    with ``offsets=[90]``. Every rotator is read with the meter, so each point records the
    angles reached.
    """
    rotators = [rotator, *_as_list(extra_rotators)]
    require_device(PLAN, "meter", meter, "a power meter", Readable)
    for i, r in enumerate(rotators):
        arg = "rotator" if i == 0 else f"extra_rotators[{i - 1}]"
        require_device(PLAN, arg, r, "a rotation mount", Movable, Readable)
    names = [device_name(r) for r in rotators]
    for i, r in enumerate(rotators):
        if any(r is other for other in rotators[:i]) or names[i] in names[:i]:
            raise plan_error(
                PLAN,
                "extra_rotators",
                names,
                f"lists {names[i]!r} twice (or also as rotator)",
                fix="give each mount once.",
            )
        if r is meter:
            raise plan_error(
                PLAN, "meter", meter, "is also a rotator", fix="pass the power meter as meter."
            )
    angles = require_numbers(PLAN, "angles", angles)
    n_extra = len(rotators) - 1
    if offsets is None:
        offsets = [0.0] * n_extra
    else:
        offsets = require_numbers(PLAN, "offsets", offsets, minimum=0)
        if len(offsets) != n_extra:
            raise plan_error(
                PLAN,
                "offsets",
                offsets,
                f"has {len(offsets)} entries for {n_extra} extra rotator(s)",
                fix="give one offset (deg) per extra rotator, or none.",
            )
    shifts = [0.0, *offsets]
    positions = [[a + s for a in angles] for s in shifts]
    for i, (r, pos) in enumerate(zip(rotators, positions, strict=True)):
        arg = "angles" if i == 0 else f"angles + offsets[{i - 1}] (for {names[i]})"
        limits = _mount_limits(r)
        for value in pos:
            require_within(PLAN, arg, value, limits, device=names[i], what="angle limits (deg)")

    _md = start_metadata(
        PLAN,
        {
            "rotator": rotator,
            "meter": meter,
            "angles": angles,
            "extra_rotators": list(extra_rotators),
            "offsets": list(offsets),
        },
        detectors=[meter],
        motors=rotators,
        dimensions=[(hinted_fields(rotator), "primary")],
        md=md,
        num_points=len(angles),
        num_intervals=len(angles) - 1,
        plan_pattern="array",
        plan_pattern_args={"angles": angles, "offsets": list(offsets)},
    )
    args: list[Any] = []
    for r, pos in zip(rotators, positions, strict=True):
        args.extend([r, pos])
    return (yield from stop_on_failure(bp.list_scan([meter], *args, md=_md), rotators))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str) or hasattr(value, "set") or hasattr(value, "read"):
        return [value]  # one device (or a name) given instead of a list
    return list(value)
