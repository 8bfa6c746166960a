"""Native ("V4") ophyd devices of the lab, and the adapter that makes legacy instruments devices.

Every device talks to hardware only through ``daqbridge.runtime.resources`` (leases, bus
endpoints, VISA sessions) and does its wire I/O on its own worker thread, so the RunEngine's
event loop never waits on a port. Names are imported lazily so that ``import daqbridge.devices``
costs nothing until a device is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "ESP300Controller": "esp300",
    "ESP300Axis": "esp300",
    "Newport1830C": "newport1830c",
    "MaiTaiLaser": "maitai",
    "MaiTaiWavelength": "maitai",
    "ElliptecBus": "elliptec",
    "ElliptecMount": "elliptec",
    "ElliptecBusRouter": "elliptec",
    "ScpiInstrument": "scpi",
    "ScpiSignalSpec": "scpi",
    "PvcamCamera": "pvcam",
    "CameraInfo": "pvcam",
    "FrameWriter": "_hdf5",
    "CameraBackend": "pvcam_backend",
    "PyVcamBackend": "pvcam_backend",
    "Roi": "pvcam_backend",
    "Frame": "pvcam_backend",
    "ImageStatus": "pvcam_backend",
    "ExposureMode": "pvcam_backend",
    "LegacyDevice": "legacy_adapter",
    "InstrumentWorker": "_base",
    "InstrumentSignal": "_base",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'daqbridge.devices' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"daqbridge.devices.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
