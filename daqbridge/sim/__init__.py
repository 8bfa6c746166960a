"""Wire-level simulators of every instrument of the lab (see docs/simulators.md).

Importing this package also registers the ``sim://KIND?options`` pyserial URL handler, so
``serial.serial_for_url("sim://esp300?speed=10")`` works everywhere a port URL is accepted.
Simulators written in other modules (MaiTai, Elliptec, SCPI) are imported only when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

import serial

from daqbridge.sim._core import Faults, SerialSimulator
from daqbridge.sim._pty import PtyServer, serve_pty
from daqbridge.sim._registry import (
    SERIAL_KINDS,
    SOCKET_KINDS,
    create_simulator,
    known_kinds,
    lookup,
    register,
    registered_names,
    unregister,
)
from daqbridge.sim.esp300 import ESP300Simulator
from daqbridge.sim.newport1830c import Newport1830CSimulator

if "daqbridge.sim" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("daqbridge.sim")

_LAZY = {
    "MaiTaiSimulator": "daqbridge.sim.maitai",
    "ElliptecBusSimulator": "daqbridge.sim.elliptec",
    "ScpiInstrumentModel": "daqbridge.sim.scpi",
    "serve_tcp": "daqbridge.sim.scpi",
}

__all__ = [
    "ESP300Simulator",
    "ElliptecBusSimulator",
    "Faults",
    "MaiTaiSimulator",
    "Newport1830CSimulator",
    "PtyServer",
    "SERIAL_KINDS",
    "SOCKET_KINDS",
    "ScpiInstrumentModel",
    "SerialSimulator",
    "create_simulator",
    "known_kinds",
    "lookup",
    "register",
    "registered_names",
    "serve_pty",
    "serve_tcp",
    "unregister",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'daqbridge.sim' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
