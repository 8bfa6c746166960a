"""Hardware resource managers: the only way daqbridge code touches a port or a VISA instrument.

Every serial port is opened once per process and used through leases (exclusive, FIFO-fair,
owner-named, deadline-bound); multi-drop buses route every packet to its address; VISA traffic is
serialised per instrument; every resource has a rank so lock-order mistakes fail at once. See
docs/resources.md.

This package sits below everything else: it imports nothing from devices, legacy, plans or sim.
"""

from daqbridge.transport._bus import BusEndpoint, BusRouter, SerialBus
from daqbridge.transport._device_cache import (
    DeviceCache,
    SerialPortInfo,
    VisaResourceInfo,
)
from daqbridge.transport._lease import held_resources
from daqbridge.transport._serial import (
    SERIAL_RANK,
    AsyncSerialLease,
    SerialLease,
    SerialPortPool,
    SharedSerialPort,
    canonical_name,
    default_pool,
)
from daqbridge.transport._visa import (
    VISA_RANK,
    VisaLease,
    VisaSession,
    VisaSessionManager,
    default_visa_manager,
)

__all__ = [
    "SERIAL_RANK",
    "VISA_RANK",
    "AsyncSerialLease",
    "BusEndpoint",
    "BusRouter",
    "DeviceCache",
    "SerialBus",
    "SerialLease",
    "SerialPortInfo",
    "SerialPortPool",
    "SharedSerialPort",
    "VisaLease",
    "VisaResourceInfo",
    "VisaSession",
    "VisaSessionManager",
    "canonical_name",
    "default_pool",
    "default_visa_manager",
    "held_resources",
]
