"""Wavelength scan: tune the MaiTai, calibrate the power meter to match, measure.

Why it is shaped like this:

* The 1830-C's reading is only right at the wavelength it is calibrated for (its silicon
  responsivity changes by a factor of two across the MaiTai's range), so the meter's ``W``
  setting follows the laser at every point, in parallel with the tune, and is recorded with
  the point.
* Light reaches the sample only during the scan: the shutter opens after the first tune and is
  closed by a finally clause (``bluesky.preprocessors.finalize_wrapper``) whatever ends the scan
  (the last point, an instrument error, an abort, Ctrl-C). Power drops while tuning, so every
  point waits for the laser to report the settled wavelength (the positioner's status), plus an
  optional ``settle_time`` for the power to stabilise.
* The laser may be native or legacy (see ``_capabilities``).
"""

from collections.abc import Generator, Mapping
from typing import Any

import numpy as np
from bluesky import plan_stubs as bps
from bluesky import preprocessors as bpp
from bluesky.protocols import Readable

from daqbridge.plans._capabilities import laser_controls, meter_controls
from daqbridge.plans._checks import (
    require_count,
    require_delay,
    require_number,
    require_within,
)
from daqbridge.plans._metadata import device_name, start_metadata
from daqbridge.plans._points import read_point
from daqbridge.plans._safety import finally_plan, stop_on_failure

__all__ = ["wavelength_scan"]

PLAN = "wavelength_scan"


def wavelength_scan(
    laser: Readable,
    meter: Readable,
    start: float,
    stop: float,
    num: int,
    *,
    settle_time: float = 0.0,
    md: Mapping[str, Any] | None = None,
) -> Generator[Any, Any, str]:
    """Scan the laser from ``start`` to ``stop`` nm in ``num`` points, reading ``meter``.

    At every point the laser is tuned and the meter's calibration wavelength set to the same
    whole nm, both waited for, then ``settle_time`` seconds pass and the meter and the laser
    (wavelength, power) are read. The shutter is open only during the scan.
    ``laser``: a MaiTai and ``meter``: a Newport 1830-C, each on either driver stack (both
    show the same ``wavelength``/``shutter`` components).
    """
    laser_c = laser_controls(PLAN, "laser", laser)
    meter_c = meter_controls(PLAN, "meter", meter)
    start = require_number(PLAN, "start", start)
    stop = require_number(PLAN, "stop", stop)
    num = require_count(PLAN, "num", num)
    settle_time = require_delay(PLAN, "settle_time", settle_time)
    for arg, value in (("start", start), ("stop", stop)):
        require_within(
            PLAN,
            arg,
            value,
            laser_c.limits,
            device=device_name(laser),
            what="tuning range (nm)",
        )
    points = [float(p) for p in np.linspace(start, stop, num)]
    for value in points:
        require_within(
            PLAN,
            "start/stop",
            round(value),
            meter_c.limits,
            device=device_name(meter),
            what="calibration wavelength range (nm)",
        )

    detectors = [meter, *laser_c.readables]
    # The meter's wavelength setting is a component of the meter: bps.trigger_and_read would
    # drop it as a child of a device it already reads, so it is read on its own in the event.
    extra = [meter_c.wavelength_reading] if meter_c.wavelength_reading is not None else []
    _md = start_metadata(
        PLAN,
        {
            "laser": laser,
            "meter": meter,
            "start": start,
            "stop": stop,
            "num": num,
            "settle_time": settle_time,
        },
        detectors=[meter],
        motors=[laser],
        dimensions=[(laser_c.wavelength_fields, "primary")],
        md=md,
        num_points=num,
        num_intervals=num - 1,
        plan_pattern="linspace",
        plan_pattern_module="numpy",
        plan_pattern_args={"start": start, "stop": stop, "num": num},
        wavelength_limits=list(laser_c.limits),
    )

    def tune(nm: float) -> Generator:
        yield from bps.mv(laser_c.wavelength, nm, meter_c.wavelength, int(round(nm)))
        if settle_time:
            yield from bps.sleep(settle_time)

    def close_shutter() -> Generator:
        yield from bps.mv(laser_c.shutter, 0)

    def with_light() -> Generator:
        yield from tune(points[0])
        yield from bps.mv(laser_c.shutter, 1)
        for i, nm in enumerate(points):
            if i:
                yield from tune(nm)
            yield from read_point(detectors, extra)

    @bpp.stage_decorator([meter, laser])
    @bpp.run_decorator(md=_md)
    def scan() -> Generator:
        shuttered = finally_plan(with_light(), close_shutter)
        return (yield from stop_on_failure(shuttered, [laser_c.wavelength]))

    return (yield from scan())
