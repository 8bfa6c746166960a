"""Where the legacy stack meets Bluesky: the adapter, the measurement bridge and shadow mode.

This layer sits above both driver stacks and the catalog, and below the plans and the runtime:
it is the only place that knows a legacy instrument and a native device side by side.

* ``LegacyDevice`` (``legacy_adapter``): any legacy instrument as an ophyd-async device, one signal
  per channel and one read-write signal per settable parameter.
* ``MeasurementBridge``: free-running legacy streams recorded as event-model runs.
* Shadow mode (``ShadowComparison``, ``ShadowReport``, ``shadow_compare_plan``): legacy and
  native drivers of one instrument read side by side on the same hardware.
"""

from daqbridge.bridge._measurement import BRIDGE_PLAN_NAME, BridgeStats, MeasurementBridge
from daqbridge.bridge._shadow import (
    LEGACY_TWIN,
    SHADOW_PLAN_NAME,
    ShadowComparison,
    ShadowPair,
    ShadowReport,
    shadow_compare_plan,
)
from daqbridge.bridge.legacy_adapter import (
    Field,
    LegacyDevice,
    LegacyMovableDevice,
    LegacySetting,
    LegacySignal,
)

__all__ = [
    "BRIDGE_PLAN_NAME",
    "LEGACY_TWIN",
    "SHADOW_PLAN_NAME",
    "BridgeStats",
    "Field",
    "LegacyDevice",
    "LegacyMovableDevice",
    "LegacySetting",
    "LegacySignal",
    "MeasurementBridge",
    "ShadowComparison",
    "ShadowPair",
    "ShadowReport",
    "shadow_compare_plan",
]
