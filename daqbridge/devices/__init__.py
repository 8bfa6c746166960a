"""Native ("V4") ophyd devices of the lab, one module per instrument family.

Every device talks to hardware only through ``daqbridge.transport`` (leases, bus
endpoints, VISA sessions), so the RunEngine's event loop never waits on a port: every native
device is an ophyd-async device (``devices/core``) awaiting async leases whose waiting runs on
the port's I/O thread (ADR 0007, 0009). Names are imported lazily so that
``import daqbridge.devices`` costs nothing until a device is used.

ophyd's EPICS client sleeps until an EPICS PV is made. ``import ophyd`` picks its control layer at
once and, with caproto, starts a Channel Access client (a dozen threads, UDP sockets) whose
clean-up at exit joins a thread that wakes once a second: up to 1 s (measured up to 2 s on a
loaded machine) at the end of every ``daqbridge run`` of a lab that has no EPICS device at all.
So when ophyd is first imported after this package, it is imported with its ``dummy`` layer and
then handed the deferred layer of :mod:`daqbridge.devices.epics`, which starts the real client
(caproto, or pyepics where installed) at the first EPICS PV: a profile's ``driver = "epics"``
entry or anyone's ``ophyd.EpicsSignal``. Setting ``OPHYD_CONTROL_LAYER``, or importing ophyd
before daqbridge, keeps ophyd's own choice.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
import threading
from importlib.machinery import ModuleSpec
from types import ModuleType
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
    "Row": "_fly",
    "RowFlyer": "_fly",
    "DriverSettings": "_registry",
    "DriverSpec": "_registry",
    "EntryDefault": "_registry",
    "ProfileEntry": "_registry",
    "TwinField": "_registry",
    "TwinView": "_registry",
    "addressed_parts": "_registry",
    "declared_driver": "_registry",
    "known_drivers": "_registry",
    "unregister_driver": "_registry",
    "for_native_stack": "_registry",
    "register_driver": "_registry",
    "registered_drivers": "_registry",
    "settings_error": "_registry",
    "validate_settings": "_registry",
}

__all__ = sorted(_EXPORTS)

_CONTROL_LAYER_VARIABLE = "OPHYD_CONTROL_LAYER"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'daqbridge.devices' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"daqbridge.devices.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


class _OphydWithEpicsAsleep(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ophyd the usual way and runs its ``__init__`` with the ``dummy`` control layer.

    A finder, not an eager ``import ophyd`` here: ``daqbridge sim serve`` imports this package
    (the camera simulator shares ``pvcam_backend``) and must not pay for ophyd. The variable is
    set only while ophyd's ``__init__`` runs, so no subprocess inherits it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loader: importlib.abc.Loader | None = None

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if fullname != "ophyd":
            return None
        with self._lock:
            if self not in sys.meta_path:
                return None
            sys.meta_path.remove(self)
        if _CONTROL_LAYER_VARIABLE in os.environ:
            return None
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self._loader = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        assert self._loader is not None
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        loader = self._loader
        assert loader is not None
        module.__loader__ = loader
        if module.__spec__ is not None:
            module.__spec__.loader = loader
        os.environ[_CONTROL_LAYER_VARIABLE] = "dummy"
        try:
            loader.exec_module(module)
        finally:
            os.environ.pop(_CONTROL_LAYER_VARIABLE, None)
        from daqbridge.devices._epics_layer import defer_epics_client

        defer_epics_client(module)


if "ophyd" not in sys.modules and not any(
    isinstance(finder, _OphydWithEpicsAsleep) for finder in sys.meta_path
):
    sys.meta_path.insert(0, _OphydWithEpicsAsleep())
