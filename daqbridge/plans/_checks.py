"""Argument checks every plan runs before its first message.

Why up front: a plan that fails at point 37 of a wavelength scan has already tuned the laser and
opened the shutter 36 times; a wrong argument must fail before anything moves, and the message
must say which plan, which argument, what value and which limit, so the scientist can fix the
call without reading a traceback. Every failure here is a :class:`PlanArgumentError`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

from bluesky.protocols import Movable, Readable, Triggerable

from daqbridge.errors import PlanArgumentError

__all__ = [
    "BYTES_PER_POINT_PER_AXIS",
    "MAX_DELAY_S",
    "MAX_NESTING",
    "MAX_PLAN_MEMORY_BYTES",
    "MAX_POINTS",
    "max_points",
    "plan_error",
    "require_count",
    "require_delay",
    "require_device",
    "require_movable",
    "require_number",
    "require_numbers",
    "require_points",
    "require_positive",
    "require_range",
    "require_within",
    "positioner_limits",
    "trajectory_bytes",
]

# --- the bounds every plan argument meets -------------------------------------------------------
# One home for them, so `daqbridge run` (before the lab starts) and the plans (before their first
# message) refuse the same values with the same words; docs/plans.md ("Bounds") lists them.

MAX_DELAY_S = 86_400.0
"""Longest pause between points (count's ``delay``, ``settle_time``): one day. Anything longer
is a typo (1e308 for 1e-3) or a job for a scheduler; a plan asleep for it holds the whole lab."""

BYTES_PER_POINT_PER_AXIS = 800
"""What a step plan holds per point and per motor before its run opens: bluesky builds the whole
trajectory first, one dict per point. Measured with tracemalloc (bluesky 1.15, 50,000 points):
scan 490 B for one motor, 990 for two, 1,940 for three, 4,110 for six; grid_scan 240-2,670 for
two to four motors. 800 B per point and motor is above every one of them."""

MAX_PLAN_MEMORY_BYTES = 800_000_000
"""What one plan's trajectory may take: 800 MB, a tenth of an 8 GB lab PC that also runs the
RunEngine, the catalog writer, the drivers and the plots."""

MAX_POINTS = MAX_PLAN_MEMORY_BYTES // BYTES_PER_POINT_PER_AXIS
"""Most points (events) in one run: 1,000,000, the memory bound for one motor. A count holds no
trajectory but gets the same bound: the catalog serves a run's stream back as one table."""

MAX_NESTING = 32
"""Deepest nesting of lists and mappings in a plan argument or in run metadata. Far above any
real use; below it, copying and validating a value can never exhaust Python's stack."""


def plan_error(
    plan: str,
    argument: str,
    value: Any,
    problem: str,
    *,
    limit: Any = None,
    fix: str | None = None,
    instrument: str | None = None,
) -> PlanArgumentError:
    """A PlanArgumentError whose text names the plan, the argument, the value and the limit.

    The parts also stay available as attributes (``plan``, ``argument``, ``value``, ``limit``)
    so the CLI and the queue server can show them without parsing the text.
    """
    shown = _short_repr(value)
    what = f"{plan}(): {argument}={shown} {problem}"
    if limit is not None and "limit" not in problem:
        what += f" (limit: {_limit_text(limit)})"
    err = PlanArgumentError(what + ".", instrument=instrument, fix=fix)
    err.plan = plan
    err.argument = argument
    err.value = value
    err.limit = limit
    return err


def _short_repr(value: Any) -> str:
    text = getattr(value, "name", None) if _looks_like_device(value) else None
    text = repr(text) if text else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _limit_text(limit: Any) -> str:
    if isinstance(limit, tuple) and len(limit) == 2:
        return f"{limit[0]:g} to {limit[1]:g}" if _all_numbers(limit) else repr(limit)
    return str(limit)


def _all_numbers(values: Iterable[Any]) -> bool:
    return all(isinstance(v, numbers.Real) for v in values)


def _looks_like_device(obj: Any) -> bool:
    return hasattr(obj, "read") or hasattr(obj, "set")


def require_count(
    plan: str, argument: str, value: Any, *, minimum: int = 1, maximum: int = MAX_POINTS
) -> int:
    """A whole number from ``minimum`` to ``maximum`` (points, frames); True/False are refused.

    The maximum defaults to :data:`MAX_POINTS`: a count is a number of points somewhere, and 1e9
    typed for 1e3 must fail here, not after gigabytes were allocated.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        real = isinstance(value, numbers.Real) and not isinstance(value, bool)
        if real and math.isfinite(value) and float(value).is_integer():
            value = int(value)  # 5.0 from a queue server's JSON is fine
        else:
            raise plan_error(
                plan,
                argument,
                value,
                "must be a whole number",
                fix=f"pass an integer >= {minimum}.",
            )
    if value < minimum:
        raise plan_error(
            plan,
            argument,
            value,
            f"is below the minimum {minimum}",
            limit=f">= {minimum}",
            fix=f"pass an integer >= {minimum}.",
        )
    if value > maximum:
        raise plan_error(
            plan,
            argument,
            value,
            f"is above the maximum {maximum:,}",
            limit=f"{minimum:,} to {maximum:,}",
            fix=f"pass at most {maximum:,}, or split the measurement into several runs.",
        )
    return int(value)


def require_number(plan: str, argument: str, value: Any) -> float:
    """A finite real number (numpy scalars accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise plan_error(plan, argument, value, "must be a number", fix="pass a finite number.")
    number = float(value)
    if not math.isfinite(number):
        raise plan_error(plan, argument, value, "must be finite", fix="pass a finite number.")
    return number


def require_positive(plan: str, argument: str, value: Any, *, allow_zero: bool = False) -> float:
    """A finite number > 0 (or >= 0 with ``allow_zero``): durations, exposures."""
    number = require_number(plan, argument, value)
    if number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise plan_error(
            plan,
            argument,
            value,
            f"must be {bound}",
            limit=bound,
            fix=f"pass a number {bound}.",
        )
    return number


def require_delay(plan: str, argument: str, value: Any) -> float:
    """A pause in seconds, from 0 to :data:`MAX_DELAY_S` (a day)."""
    number = require_number(plan, argument, value)
    limit = f"0 to {MAX_DELAY_S:g} s"
    if number < 0:
        raise plan_error(
            plan,
            argument,
            value,
            "must be >= 0 (a pause cannot be negative)",
            limit=limit,
            fix="pass 0 for no pause, or a number of seconds.",
        )
    if number > MAX_DELAY_S:
        raise plan_error(
            plan,
            argument,
            value,
            f"is longer than one day ({MAX_DELAY_S:g} s)",
            limit=limit,
            fix="pass the pause in seconds (1e-3 is a millisecond); for waits of days, "
            "schedule separate runs.",
        )
    return number


def trajectory_bytes(points: int, axes: int = 1) -> int:
    """Upper estimate of what a plan of ``points`` points on ``axes`` motors holds before its
    run (see :data:`BYTES_PER_POINT_PER_AXIS`); a count (no motor) is costed as one axis."""
    return int(points) * max(int(axes), 1) * BYTES_PER_POINT_PER_AXIS


def max_points(axes: int = 1) -> int:
    """Most points a plan on ``axes`` motors may have: :data:`MAX_POINTS` for one motor, less
    for more motors, as each holds its own positions."""
    return MAX_PLAN_MEMORY_BYTES // (max(int(axes), 1) * BYTES_PER_POINT_PER_AXIS)


def require_points(plan: str, argument: str, points: Any, *, axes: int = 1) -> int:
    """A plan's total number of points (``num``, a grid's product, a spiral's estimate) within
    :data:`MAX_POINTS` and, for its ``axes`` motors, within :data:`MAX_PLAN_MEMORY_BYTES`."""
    if isinstance(points, float):  # an estimate (a spiral's): shown as whole points
        points = math.ceil(points) if points < 1e15 else points
    most = max_points(axes)
    if points <= most:
        return int(points)
    motors = f" on {axes} motors" if axes > 1 else ""
    needs = (
        f"about {_bytes_text(trajectory_bytes(int(points), axes))}"
        if points < 1e15
        else "more memory than any computer has"
    )
    raise plan_error(
        plan,
        argument,
        points,
        f"makes {_points_text(points)} points{motors}; the plan would hold {needs} before its run "
        f"opens ({BYTES_PER_POINT_PER_AXIS} B per point and motor)",
        limit=f"at most {most:,} points{motors}, {_bytes_text(MAX_PLAN_MEMORY_BYTES)}",
        fix=f"use at most {most:,} points, or split the measurement into several runs.",
    )


def _points_text(points: float) -> str:
    if points < 1e15:
        return f"{int(points):,}"
    return f"{float(points):.3g}" if points < 1e300 else "more than 1e300"


def _bytes_text(n: int) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.3g} {unit}"
    return f"{n} B"


def require_numbers(plan: str, argument: str, values: Any, *, minimum: int = 1) -> list[float]:
    """A non-empty list of finite numbers (a list, tuple or 1-D array; not a bare number)."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise plan_error(
            plan,
            argument,
            values,
            "must be a list of numbers",
            fix="pass a list, e.g. [0, 45, 90].",
        )
    out = []
    for i, v in enumerate(values):
        out.append(require_number(plan, f"{argument}[{i}]", v))
    if len(out) < minimum:
        raise plan_error(
            plan,
            argument,
            values,
            f"has {len(out)} values, fewer than {minimum}",
            limit=f">= {minimum} values",
            fix=f"pass at least {minimum} value(s).",
        )
    return out


def require_range(plan: str, argument: str, value: Any) -> tuple[float, float, int]:
    """A ``(start, stop, num)`` triplet, as for one axis of a raster."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 3:
        raise plan_error(
            plan,
            argument,
            value,
            "must be (start, stop, num)",
            fix=f"pass e.g. {argument}=(-1.0, 1.0, 11).",
        )
    start = require_number(plan, f"{argument}[0] (start)", value[0])
    stop = require_number(plan, f"{argument}[1] (stop)", value[1])
    num = require_count(plan, f"{argument}[2] (num)", value[2])
    return start, stop, num


_PROTOCOL_WORDS = {
    Readable: "readable (read/describe)",
    Triggerable: "triggerable (trigger)",
    Movable: "movable (set)",
}


def require_device(plan: str, argument: str, obj: Any, what: str, *protocols: type) -> Any:
    """``obj`` is a device object satisfying ``protocols`` (bluesky.protocols classes).

    Text is refused with a hint: from the CLI or a queue server a device arrives as an object
    only if the caller resolved the name, and "sim_meter" as a string would otherwise fail deep
    inside the RunEngine.
    """
    if isinstance(obj, str):
        raise plan_error(
            plan,
            argument,
            obj,
            f"is text, not {what}",
            fix=f"pass the device object, e.g. runtime.devices[{obj!r}].",
        )
    missing = [p for p in protocols if not isinstance(obj, p)]
    if missing or obj is None:
        words = ", ".join(_PROTOCOL_WORDS.get(p, p.__name__) for p in missing) or "a device"
        raise plan_error(
            plan,
            argument,
            obj,
            f"is not {what} ({type(obj).__name__} is not {words})",
            fix=f"pass {what}.",
        )
    return obj


def require_movable(plan: str, argument: str, obj: Any, what: str) -> Any:
    return require_device(plan, argument, obj, what, Movable)


def positioner_limits(obj: Any) -> tuple[float, float] | None:
    """Soft limits of a positioner, or None when it has none.

    ophyd's convention: ``limits == (0, 0)`` (or low == high) means "no soft limits"; an open side
    is +/-inf.
    """
    limits = getattr(obj, "limits", None)
    try:
        low, high = (float(v) for v in limits)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if low == high or math.isnan(low) or math.isnan(high):
        return None
    return (low, high)


def require_within(
    plan: str,
    argument: str,
    value: float,
    limits: tuple[float, float] | None,
    *,
    device: str,
    what: str,
    fix: str | None = None,
) -> float:
    """``value`` inside the inclusive ``limits`` of ``device`` (None: no limits)."""
    if limits is None:
        return value
    low, high = limits
    if not low - 1e-9 <= value <= high + 1e-9:
        raise plan_error(
            plan,
            argument,
            value,
            f"is outside the {what} of {device!r}, {_limit_text(limits)}",
            limit=limits,
            instrument=device,
            fix=fix
            or f"choose values between {low:g} and {high:g}, or change the limits in "
            "the lab profile.",
        )
    return value
