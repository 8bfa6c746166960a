"""The lab over EPICS Channel Access: a caproto IOC serving the configured instruments.

    daqbridge ioc serve --profile my_lab.toml --prefix LAB1:      # 127.0.0.1 only by default

The IOC layer sits above the runtime: it starts a :class:`~daqbridge.runtime.Runtime` (which
owns the resource managers and the devices) and serves every device as PVs, so clients on other
machines use the instruments through the same port leases as local plans. Positioners are motor
records (a stock ``ophyd.EpicsMotor`` drives them); other devices are plain PVs with units and
limits, writable exactly when their signal is read-write (ophyd's ``write_access``), with the same
names on either driver stack. Client-side classes: :mod:`daqbridge.devices.epics`. See
docs/across_machines.md.
"""

from daqbridge.ioc._link import Bridge, Pusher
from daqbridge.ioc._main import READY, ca_environment, run, serve_ioc
from daqbridge.ioc._motor import MotorRecord, PositionerLink, RecordRefused
from daqbridge.ioc._process import (
    LOOPBACK_CA,
    IocProcess,
    free_port,
    ioc_command,
    loopback_ca_env,
    spawn,
)
from daqbridge.ioc._server import (
    DEFAULT_POLL_PERIOD,
    DEFAULT_PREFIX,
    CameraGroup,
    DeviceGroup,
    IocGroup,
    LabIOC,
    SignalPV,
    restrict_writes,
)

__all__ = [
    "DEFAULT_POLL_PERIOD",
    "LOOPBACK_CA",
    "IocProcess",
    "free_port",
    "ioc_command",
    "loopback_ca_env",
    "spawn",
    "DEFAULT_PREFIX",
    "READY",
    "Bridge",
    "CameraGroup",
    "DeviceGroup",
    "IocGroup",
    "LabIOC",
    "MotorRecord",
    "PositionerLink",
    "Pusher",
    "RecordRefused",
    "SignalPV",
    "ca_environment",
    "restrict_writes",
    "run",
    "serve_ioc",
]
