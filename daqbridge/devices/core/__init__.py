"""The shared core of the native (ophyd-async) wire devices.

* :class:`WireCommand` / :func:`wire_signal_r` / :func:`wire_signal_rw`: signals declared from
  their wire commands; a set and its read-back in one lease; values only from the instrument.
* :class:`WireDevice`: identity at connect, re-verification after the port was reopened.
* :class:`Exchange`: one leased transaction on a line instrument (drain, echoes, silent sets).
* :class:`AsyncLease` / :class:`LeasedPort`: the interface a driver needs from a port, so a test
  can hand it :class:`ReplayPort`, which replays a transcript and fails on any unexpected byte.
"""

from daqbridge.devices.core._device import WireDevice, WireDeviceConnector
from daqbridge.devices.core._errors import SetNotConfirmed
from daqbridge.devices.core._exchange import Exchange
from daqbridge.devices.core._replay import ReplayMismatch, ReplayPort
from daqbridge.devices.core._signal import (
    WireCommand,
    WireSignalBackend,
    wire_signal_r,
    wire_signal_rw,
)
from daqbridge.devices.core._transport import AsyncLease, LeasedPort

__all__ = [
    "AsyncLease",
    "Exchange",
    "LeasedPort",
    "ReplayMismatch",
    "ReplayPort",
    "SetNotConfirmed",
    "WireCommand",
    "WireDevice",
    "WireDeviceConnector",
    "WireSignalBackend",
    "wire_signal_r",
    "wire_signal_rw",
]
