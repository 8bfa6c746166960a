"""The shared core of the native (ophyd-async) wire devices.

* :class:`WireCommand` / :func:`wire_signal_r` / :func:`wire_signal_rw`: signals declared from
  their wire commands; a set and its read-back in one lease; values only from the instrument.
* :class:`WireDevice`: identity at connect, re-verification after the port was reopened.
* :class:`Exchange`: one leased transaction on a line instrument (drain, echoes, silent sets).
* :class:`AsyncLease` / :class:`LeasedPort`: the interface a driver needs from a port, so a test
  can hand it :class:`ReplayPort`, which replays a transcript and fails on any unexpected byte.
* :class:`WireMovableLogic` / :class:`WirePositioner` / :func:`wire_target_signal`: positioners
  whose moves are coroutines (move command in one lease, motion-done polls in short ones).
* :data:`COMPLETED`: the status of an operation with nothing left to do (done when returned).
* :func:`call_sync` / :func:`maybe_sync`: a device's coroutines from synchronous code (another
  thread), run on the loop the device was connected on.
"""

from daqbridge.devices.core._device import WireDevice, WireDeviceConnector
from daqbridge.devices.core._errors import SetNotConfirmed
from daqbridge.devices.core._exchange import Exchange
from daqbridge.devices.core._movable import (
    POLL_BACKOFF_S,
    WireAxis,
    WireMotion,
    WireMovableLogic,
    WirePositioner,
    WireTargetBackend,
    wire_backend,
    wire_target_signal,
)
from daqbridge.devices.core._replay import ReplayMismatch, ReplayPort
from daqbridge.devices.core._signal import (
    RecordedAsV1,
    WireCommand,
    WireSignalBackend,
    wire_signal_r,
    wire_signal_rw,
)
from daqbridge.devices.core._status import COMPLETED, Completed
from daqbridge.devices.core._sync import (
    CallTimeout,
    call_sync,
    device_loop,
    instrument_error,
    is_async_device,
    maybe_sync,
)
from daqbridge.devices.core._transport import AsyncLease, LeasedPort

__all__ = [
    "COMPLETED",
    "Completed",
    "RecordedAsV1",
    "AsyncLease",
    "CallTimeout",
    "Exchange",
    "LeasedPort",
    "POLL_BACKOFF_S",
    "ReplayMismatch",
    "ReplayPort",
    "SetNotConfirmed",
    "WireAxis",
    "WireCommand",
    "WireDevice",
    "WireDeviceConnector",
    "WireMotion",
    "WireMovableLogic",
    "WirePositioner",
    "WireSignalBackend",
    "WireTargetBackend",
    "wire_backend",
    "call_sync",
    "device_loop",
    "instrument_error",
    "is_async_device",
    "maybe_sync",
    "wire_signal_r",
    "wire_signal_rw",
    "wire_target_signal",
]
