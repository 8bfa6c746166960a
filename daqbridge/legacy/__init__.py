"""The legacy ("V2") instrument stack: polled drivers, commands, a broadcast of measurements.

Independent of ophyd and bluesky on purpose (it is the code being migrated away from);
``daqbridge.bridge.legacy_adapter`` wraps any ``LegacyInstrument`` as an ophyd-async device.
Importing the package registers the built-in driver types ``newport_1830c``, ``elliptec`` and
``maitai``. See docs/legacy.md.
"""

from daqbridge.legacy._command import Command, CommandKind, CommandResult, LegacyInstrumentError
from daqbridge.legacy._config import (
    DriverSpec,
    InstrumentConfig,
    LegacyConfig,
    RuntimeSettings,
    build_instrument,
    load_legacy_config,
    parse_legacy_config,
    register_driver,
    registered_drivers,
    unregister_driver,
)
from daqbridge.legacy._distributor import DEFAULT_MAXSIZE, DataDistributor, Subscription
from daqbridge.legacy._elliptec import ElliptecBus, ElliptecRouter, MountInfo
from daqbridge.legacy._instrument import LegacyInstrument, Publisher
from daqbridge.legacy._maitai import MaiTai
from daqbridge.legacy._measurement import ChannelInfo, Measurement, MeasurementValue, ParameterInfo
from daqbridge.legacy._newport1830c import Newport1830C
from daqbridge.legacy._runtime import (
    InstrumentState,
    LegacyRuntime,
    RestartPolicy,
    StopReport,
)
from daqbridge.legacy._serial_line import SerialLine

__all__ = [
    "DEFAULT_MAXSIZE",
    "ChannelInfo",
    "Command",
    "CommandKind",
    "CommandResult",
    "DataDistributor",
    "DriverSpec",
    "ElliptecBus",
    "ElliptecRouter",
    "InstrumentConfig",
    "InstrumentState",
    "LegacyConfig",
    "LegacyInstrument",
    "LegacyInstrumentError",
    "LegacyRuntime",
    "MaiTai",
    "Measurement",
    "MeasurementValue",
    "MountInfo",
    "Newport1830C",
    "ParameterInfo",
    "Publisher",
    "RestartPolicy",
    "RuntimeSettings",
    "SerialLine",
    "StopReport",
    "Subscription",
    "build_instrument",
    "load_legacy_config",
    "parse_legacy_config",
    "register_driver",
    "registered_drivers",
    "unregister_driver",
]
