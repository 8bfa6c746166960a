"""Bluesky plans for the lab: wavelength and polarisation scans, rasters, exposure series,
shadow comparison of legacy and native drivers, and recording of legacy streams.

Every plan takes devices as objects and everything else as plain numbers, strings and lists, so
it runs the same from IPython (``RE(wavelength_scan(laser, meter, 750, 850, 11))``), from
``daqbridge run`` and from a queue server. Every plan checks its arguments against the devices'
limits before the first message (:class:`~daqbridge.errors.PlanArgumentError` naming the plan,
argument, value and limit), writes the common start metadata (``daqbridge_devices`` says which
driver stack each device is on) and restores a safe state in a finally clause. See
docs/plans.md.
"""

from daqbridge.plans._capabilities import (
    LASER_TUNING_RANGE_NM,
    METER_WAVELENGTH_RANGE_NM,
    is_legacy_device,
)
from daqbridge.plans._exposure import exposure_series
from daqbridge.plans._fly import fly_polarization, fly_raster
from daqbridge.plans._legacy import record_legacy
from daqbridge.plans._metadata import device_stack, device_stacks
from daqbridge.plans._polarization import ROTATION_RANGE_DEG, polarization_scan
from daqbridge.plans._raster import raster
from daqbridge.plans._shadow import shadow_compare
from daqbridge.plans._wavelength import wavelength_scan

PLANS = {
    "wavelength_scan": wavelength_scan,
    "polarization_scan": polarization_scan,
    "raster": raster,
    "fly_raster": fly_raster,
    "fly_polarization": fly_polarization,
    "exposure_series": exposure_series,
    "shadow_compare": shadow_compare,
    "record_legacy": record_legacy,
}
"""The lab's plans by name (what ``daqbridge run PLAN`` and a queue server offer)."""

__all__ = [
    "LASER_TUNING_RANGE_NM",
    "METER_WAVELENGTH_RANGE_NM",
    "PLANS",
    "ROTATION_RANGE_DEG",
    "device_stack",
    "device_stacks",
    "exposure_series",
    "fly_polarization",
    "fly_raster",
    "is_legacy_device",
    "polarization_scan",
    "raster",
    "record_legacy",
    "shadow_compare",
    "wavelength_scan",
]
