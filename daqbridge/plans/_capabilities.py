"""What a plan needs from a device, found through bluesky protocols and signal types only.

Why this layer: during the migration the same instrument is a native ophyd device in one lab
profile and a legacy driver behind the legacy adapter in another (in ``profiles/sim.toml`` the
MaiTai is legacy). Both show the same components under the same names (``laser.wavelength``,
``laser.shutter``, ``meter.wavelength``; see docs/legacy.md), each a bluesky ``Movable`` that
commands the instrument and holds its read-back, so a plan asks for *capabilities* ("something
that tunes the wavelength and reports when it settled", "a shutter that is read back") by name
and never by class: a component is movable when it is ``Movable`` and not a read-only signal
(ophyd's ``write_access``), whichever stack built it.

Anything missing is a :class:`PlanArgumentError` naming the plan, the argument and what the
device lacks, raised before the first message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bluesky.protocols import Movable, Readable

from daqbridge.plans._checks import plan_error, positioner_limits, require_device
from daqbridge.plans._metadata import device_name, hinted_fields

__all__ = [
    "LASER_TUNING_RANGE_NM",
    "METER_WAVELENGTH_RANGE_NM",
    "LaserControls",
    "MeterControls",
    "is_legacy_device",
    "laser_controls",
    "meter_controls",
]

LASER_TUNING_RANGE_NM = (690.0, 1040.0)
"""What a MaiTai accepts at all (INSTRUMENTS.md); profiles may only narrow it."""
METER_WAVELENGTH_RANGE_NM = (300.0, 1100.0)
"""The 1830-C's ``Wnnnn`` calibration wavelength range (4-digit nm)."""


def is_legacy_device(obj: Any) -> bool:
    """A device read by a legacy driver (it says so: ``driver_stack``), whose readings come from
    that driver's measurement stream: what the plans about the legacy stack itself
    (``record_legacy``, ``shadow_compare``) need."""
    return getattr(obj, "driver_stack", None) == "legacy"


def _intersect(*ranges: tuple[float, float] | None) -> tuple[float, float]:
    low, high = -math.inf, math.inf
    for r in ranges:
        if r is not None:
            low, high = max(low, r[0]), min(high, r[1])
    return (low, high)


def _setter(dev: Any, attr: str) -> Any | None:
    """The component ``attr`` of ``dev`` if a plan can move it: Movable, and not a signal
    whose type says it is read-only (a measured channel has a ``set`` that only refuses)."""
    obj = getattr(dev, attr, None)
    if obj is None or not isinstance(obj, Movable) or not getattr(obj, "write_access", True):
        return None
    return obj


# --- laser -------------------------------------------------------------------------------------


@dataclass
class LaserControls:
    """What a wavelength scan drives on a laser, whatever its stack."""

    device: Any
    wavelength: Any
    """Movable; its status finishes when the wavelength has settled."""
    shutter: Any
    """Movable taking 1 (open) / 0 (closed), confirmed by read-back."""
    limits: tuple[float, float]
    wavelength_fields: list[str]
    """Data keys of the wavelength read-back in the laser's own readings (plot axis)."""
    readables: list[Any]
    """What to read each point: the laser itself (wavelength and power)."""


def laser_controls(plan: str, argument: str, laser: Any) -> LaserControls:
    """Find the wavelength positioner, the shutter and the tuning limits of ``laser``."""
    require_device(plan, argument, laser, "a laser device", Readable)
    configured = getattr(laser, "wavelength_limits", None)
    configured = tuple(float(v) for v in configured) if configured else None
    wavelength = _setter(laser, "wavelength")
    shutter = _setter(laser, "shutter")
    if wavelength is None or shutter is None:
        lacks = [n for n, o in (("wavelength", wavelength), ("shutter", shutter)) if o is None]
        raise plan_error(
            plan,
            argument,
            laser,
            f"is not a laser the plan can tune ({type(laser).__name__} has no movable "
            f"{' or '.join(repr(n) for n in lacks)} component)",
            instrument=device_name(laser),
            fix="pass the laser (a MaiTai, on either stack), not another instrument.",
        )
    limits = _intersect(LASER_TUNING_RANGE_NM, positioner_limits(wavelength), configured)
    return LaserControls(laser, wavelength, shutter, limits, hinted_fields(wavelength), [laser])


# --- power meter -------------------------------------------------------------------------------


@dataclass
class MeterControls:
    """A power meter and the setting of its calibration wavelength."""

    device: Any
    wavelength: Any
    """Movable taking whole nm (the 1830-C's ``Wnnnn``)."""
    wavelength_reading: Any | None
    """A signal holding the wavelength setting, read with every point (or None)."""
    limits: tuple[float, float]


def meter_controls(plan: str, argument: str, meter: Any) -> MeterControls:
    require_device(plan, argument, meter, "a power meter", Readable)
    setter = _setter(meter, "wavelength")
    if setter is None:
        raise plan_error(
            plan,
            argument,
            meter,
            f"is not a power meter the plan can calibrate ({type(meter).__name__} has no "
            "settable 'wavelength' component)",
            instrument=device_name(meter),
            fix="pass the power meter (a Newport 1830-C, on either stack).",
        )
    limits = _intersect(METER_WAVELENGTH_RANGE_NM, positioner_limits(setter))
    return MeterControls(meter, setter, setter, limits)
