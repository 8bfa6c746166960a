"""The coexistence runtime: profile, resources, both driver stacks, RunEngine and catalog.

    from daqbridge.runtime import Runtime

    with Runtime.from_profile("my_lab.toml") as rt:      # None: the embedded simulated lab
        rt.RE(bp.count([rt["sim_meter"]], 5))
        print(rt.format_status())

See docs/runtime.md. This package is also the parent of ``resources``, ``profile`` and
``catalog``, which the device and legacy layers import, so importing it must stay cheap and must
not pull in those layers: every name below is resolved on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY: dict[str, str] = {
    "Runtime": "daqbridge.runtime._runtime",
    "Resources": "daqbridge.runtime._runtime",
    "LEGACY_CONNECT_TIMEOUT": "daqbridge.runtime._runtime",
    "ShutdownReport": "daqbridge.runtime._shutdown",
    "PhaseOutcome": "daqbridge.runtime._shutdown",
    "PhaseForced": "daqbridge.runtime._shutdown",
    "ShutdownRequested": "daqbridge.runtime._shutdown",
    "SignalHandlers": "daqbridge.runtime._shutdown",
    "PHASES": "daqbridge.runtime._shutdown",
    "StartupFailed": "daqbridge.runtime._builders",
    "NativeInstrument": "daqbridge.runtime._builders",
    "BuildContext": "daqbridge.runtime._builders",
    "register_builder": "daqbridge.runtime._builders",
    "registered_builders": "daqbridge.runtime._builders",
    "LEGACY_TYPES": "daqbridge.runtime._builders",
    "collect_status": "daqbridge.runtime._status",
    "MeasurementBridge": "daqbridge.runtime._bridge",
    "ShadowComparison": "daqbridge.runtime._shadow",
    "ShadowReport": "daqbridge.runtime._shadow",
    "ShadowPair": "daqbridge.runtime._shadow",
    "shadow_compare_plan": "daqbridge.runtime._shadow",
    "format_status": "daqbridge.runtime._status",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'daqbridge.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
