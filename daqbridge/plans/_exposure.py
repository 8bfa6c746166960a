"""Exposure series: the same scene at several exposure times (linearity, dynamic range).

Why it is shaped like this: the camera's exposure is a setting that outlives the plan; a series
that ends (or fails) at 2 s exposure leaves the next user's live view or focus scan crawling. So
the exposure in force before the series is read first and restored by a finally clause. Every
event records the exposure it was taken with (the exposure is configuration, which an event
descriptor captures only once per run).
"""

import inspect
from collections.abc import Generator, Mapping, Sequence
from typing import Any

from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.protocols import Movable, Readable, Triggerable
from bluesky.utils import Msg

from daqbridge.plans._checks import (
    plan_error,
    require_count,
    require_device,
    require_numbers,
    require_positive,
    require_within,
)
from daqbridge.plans._metadata import device_name, start_metadata
from daqbridge.plans._points import read_point
from daqbridge.plans._safety import finally_plan, stop_on_failure

__all__ = ["exposure_series"]

PLAN = "exposure_series"


def exposure_series(
    camera: Readable,
    exposures: Sequence[float],
    *,
    frames_per_exposure: int = 1,
    md: Mapping[str, Any] | None = None,
) -> Generator[Any, Any, str]:
    """Take ``frames_per_exposure`` points at each exposure in ``exposures`` (camera units, ms
    for PVCAM), then put the camera's exposure back to what it was."""
    require_device(PLAN, "camera", camera, "a camera", Readable, Triggerable)
    exposure = getattr(camera, "exposure", None)
    if exposure is None or not isinstance(exposure, Movable):
        raise plan_error(
            PLAN,
            "camera",
            camera,
            f"is not a camera ({type(camera).__name__} has no settable 'exposure')",
            instrument=device_name(camera),
            fix="pass a camera (PvcamCamera).",
        )
    values = require_numbers(PLAN, "exposures", exposures)
    for i, value in enumerate(values):
        require_positive(PLAN, f"exposures[{i}]", value)
    frames = require_count(PLAN, "frames_per_exposure", frames_per_exposure)
    high = getattr(camera, "max_exposure_ms", None)
    if high is not None:
        for i, value in enumerate(values):
            require_within(
                PLAN,
                f"exposures[{i}]",
                value,
                (0.0, float(high)),
                device=device_name(camera),
                what="exposure limit (ms)",
                fix=f"use exposures up to {float(high):g} ms.",
            )
    if _microsecond_resolution(camera):
        for i, value in enumerate(values):
            if abs(value * 1000 - round(value * 1000)) > 1e-6:
                raise plan_error(
                    PLAN,
                    f"exposures[{i}]",
                    value,
                    "is not a whole number of microseconds, the finest step of the camera",
                    instrument=device_name(camera),
                    fix=f"use {round(value * 1000) / 1000:g} ms.",
                )

    units = yield from _units(exposure)
    _md = start_metadata(
        PLAN,
        {"camera": camera, "exposures": values, "frames_per_exposure": frames},
        detectors=[camera],
        dimensions=[([exposure.name], "primary")],
        md=md,
        num_points=len(values) * frames,
        exposure_units=units,
    )

    def series() -> Generator:
        for value in values:
            yield from bps.mv(exposure, value)
            for _ in range(frames):
                yield from read_point([camera], [exposure])

    def body(original: Any) -> Generator:
        def restore() -> Generator:
            yield from bps.mv(exposure, original)

        return (yield from stop_on_failure(finally_plan(series(), restore), [camera]))

    @bpp.stage_decorator([camera])
    @bpp.run_decorator(md=_md)
    def run() -> Generator:
        original = yield from bps.rd(exposure)
        return (yield from body(original))

    return (yield from run())


def _microsecond_resolution(camera: Any) -> bool:
    try:
        from daqbridge.devices.pvcam import PvcamCamera
    except Exception:  # noqa: BLE001
        return False
    return isinstance(camera, PvcamCamera)


def _units(signal: Any) -> Generator[Any, Any, str | None]:
    """The exposure's units from its descriptor. An ophyd-async signal describes itself in a
    coroutine, awaited by the RunEngine (the plan runs on its loop, which must not wait)."""
    described: Any = {}
    try:
        answer = signal.describe()
        if inspect.isawaitable(answer):

            async def take() -> None:
                described.update(await answer)

            yield Msg("wait_for", None, [take])
        else:
            described = answer
        return described[signal.name].get("units")
    except Exception:  # noqa: BLE001 - units are a nicety for the metadata
        return None
