"""The coexistence runtime: profile -> transport -> legacy subsystem -> devices -> RunEngine.

    from daqbridge.runtime import Runtime

    with Runtime.from_profile("my_lab.toml") as rt:      # None: the embedded simulated lab
        rt.RE(bp.count([rt["sim_meter"]], 5))
        print(rt.format_status())

This is the top of the stack below the front ends: it starts and stops the layers under it in
order (docs/runtime.md). The layers themselves are siblings of this package (``transport``,
``config``, ``catalog``, ``bridge``, ...), so importing it loads the whole stack, as it should.
"""

from daqbridge.runtime._builders import (
    LEGACY_TYPES,
    BuildContext,
    NativeInstrument,
    StartupFailed,
    register_builder,
    registered_builders,
)
from daqbridge.runtime._runtime import LEGACY_CONNECT_TIMEOUT, Resources, Runtime
from daqbridge.runtime._shutdown import (
    PHASES,
    PhaseForced,
    PhaseOutcome,
    ShutdownReport,
    ShutdownRequested,
    SignalHandlers,
)
from daqbridge.runtime._status import collect_status, format_status

__all__ = [
    "LEGACY_CONNECT_TIMEOUT",
    "LEGACY_TYPES",
    "PHASES",
    "BuildContext",
    "NativeInstrument",
    "PhaseForced",
    "PhaseOutcome",
    "Resources",
    "Runtime",
    "ShutdownReport",
    "ShutdownRequested",
    "SignalHandlers",
    "StartupFailed",
    "collect_status",
    "format_status",
    "register_builder",
    "registered_builders",
]
