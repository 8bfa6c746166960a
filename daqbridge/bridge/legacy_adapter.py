"""Any legacy ("V2") instrument as an ophyd-async device, so legacy and native drivers share plans.

Why it is built this way:

* It knows nothing about our drivers: everything comes from the ``LegacyInstrument`` interface
  (``channels()``, ``parameters()``, commands through ``LegacyRuntime`` and the measurement
  stream of the ``DataDistributor``). A driver written next year works without touching this file.
* It is an ophyd-async ``StandardReadable`` like the native devices (issue 12): one signal per
  channel and per setting, declared from what the instrument declares (units, dtype, shape,
  limits, a ``source`` naming the instrument and parameter), so descriptors, hints and the IOC's
  PVs come out as the native drivers' do. The ``set``/``locate`` part is there only when the
  instrument has a settable parameter (:class:`LegacyMovableDevice`), so
  ``isinstance(dev, bluesky.protocols.Movable)`` is true exactly when a plan can move it.
* Every signal shows only what the instrument reported (issue 18): a settable parameter is a
  read-write :class:`LegacySetting` whose ``set`` commands the instrument (set, then query the
  read-back; done only when the read-back is within tolerance of the target) and then holds the
  read-back, never the commanded value; a measured channel is a read-only :class:`LegacySignal`
  (it has no ``set``: there is nothing to command, and a front end sees that from its type).
  ``bps.mv(laser.shutter, 0)`` is the same line on both stacks and closes the shutter or fails
  saying it did not.
* Signals are fed by the distributor as measurements arrive, so a value is never older than the
  instrument's last poll (issue 12), without a ``trigger()``. A value older than the one shown (a
  poll taken before a set's read-back but delivered after it) is not applied. Values arrive on the
  distributor's thread; subscribers (ophyd-async's caches, the IOC) are told on the device's loop.
* Nothing blocks the RunEngine's loop: a command goes to the instrument's legacy worker with
  ``LegacyRuntime.submit_future`` and is awaited (``asyncio.wrap_future``), so the only cost over
  the legacy call itself is one thread hand-over. A deadline is ``asyncio.timeout``; a command
  still queued when it passes (or when the plan is aborted) is withdrawn, never sent late.
* Legacy results are values (``CommandResult``); an ``ok=False`` becomes the driver's own typed
  error, so the RunEngine reports the instrument's words.
* ``bps.monitor(dev)`` records the legacy stream itself: ``subscribe_reading(cb)`` hands ``cb`` a
  readings dict for every measurement, from the distributor's delivery thread, with the
  measurement's own timestamp. Instruments publishing several channels per poll are coalesced into
  one event per complete set (a channel that repeats first flushes the set), so nothing is dropped
  and no value is invented.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import keyword
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from bluesky.protocols import Location, Reading
from event_model import DataKey
from ophyd_async.core import (
    CALCULATE_TIMEOUT,
    AsyncStatus,
    DeviceConnector,
    SignalBackend,
    SignalR,
    SignalRW,
    StandardReadable,
    StandardReadableFormat,
)

from daqbridge.devices._base import check_number, check_wire_text
from daqbridge.devices._registry import TwinField
from daqbridge.devices.core import RecordedAsV1
from daqbridge.errors import (
    ConfigError,
    DaqbridgeError,
    InstrumentError,
    InstrumentTimeout,
    ValueRejected,
)
from daqbridge.legacy import (
    ChannelInfo,
    Command,
    CommandResult,
    LegacyInstrumentError,
    LegacyRuntime,
    Measurement,
    ParameterInfo,
)

__all__ = [
    "Field",
    "LegacyDevice",
    "LegacyMovableDevice",
    "LegacySetpoint",
    "LegacySetting",
    "LegacySignal",
    "SetNotConfirmed",
]

log = logging.getLogger("daqbridge.bridge.legacy_adapter")

ReadMode = Literal["fresh", "latest"]

_RECORDED_DTYPES = ("number", "integer", "boolean", "string", "array")
"""What a signal can record (what ``_coerce`` makes of an instrument's value)."""

_KINDS = ("hinted", "normal", "config", "omitted")

_FORMATS = {
    "hinted": StandardReadableFormat.HINTED_UNCACHED_SIGNAL,
    "normal": StandardReadableFormat.UNCACHED_SIGNAL,
    "config": StandardReadableFormat.CONFIG_SIGNAL,
}
"""How each kind is read. Uncached: a signal's latest value is the backend's own (the stream
keeps it current), so a cache would only lag it by a loop hand-over."""

READBACK_INTERVAL_S = 0.05
"""Pause between read-backs of a set that is not yet within tolerance (``settle_timeout``)."""


class SetNotConfirmed(InstrumentError):
    """The legacy driver accepted a set, but the instrument's read-back does not show the value."""


Field = TwinField
"""How one channel or parameter is shown (see :class:`daqbridge.devices.TwinField`: each native
driver declares its twin's fields beside its own signals)."""


def _error_of(result: CommandResult, instrument: str, what: str) -> DaqbridgeError:
    if result.error is not None:
        return result.error
    return LegacyInstrumentError(
        f"{what} failed: {result.message or 'no reason given'}", instrument=instrument
    )


def _initial_value(dtype: str, shape: tuple[int, ...]) -> Any:
    if dtype == "number":
        return math.nan
    if dtype == "integer":
        return 0
    if dtype == "boolean":
        return False
    if dtype == "array":
        return np.full(shape, np.nan) if shape else np.zeros(0)
    return ""


def _coerce(value: Any, dtype: str) -> Any:
    """A legacy value as the declared dtype; raises ValueError when it cannot be one."""
    if isinstance(value, np.generic):
        value = value.item()
    if dtype == "number":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{value!r} is not a number")
        return float(value)
    if dtype == "integer":
        if isinstance(value, bool):
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if not isinstance(value, int):
            raise ValueError(f"{value!r} is not an integer")
        return value
    if dtype == "boolean":
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        raise ValueError(f"{value!r} is not a boolean")
    if dtype == "array":
        return np.asarray(value)
    if isinstance(value, str):
        return value
    return str(value)


# --- signals -----------------------------------------------------------------------------------

_PY_TYPES: dict[str, type | None] = {
    "number": float,
    "integer": int,
    "boolean": bool,
    "string": str,
    "array": np.ndarray,
}


class LegacyBackend(SignalBackend[Any]):
    """A signal backend holding what the legacy instrument last reported for one parameter.

    Reports arrive from other threads (the distributor's, the legacy workers'); the value is kept
    at once (a read on the loop right after a trigger sees it), and the subscriber (ophyd-async's
    cache, the IOC) is told on the loop its callback was set from.
    """

    def __init__(self, device: LegacyDevice, part: _Part) -> None:
        super().__init__(_PY_TYPES.get(part.dtype))
        self.device = device
        self.part = part
        self._reading: Reading[Any] = {
            "value": _initial_value(part.dtype, part.shape),
            "timestamp": 0.0,
            "alarm_severity": 0,
        }
        self._reported = False
        self._callback: Callable[[Reading[Any]], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def source(self, name: str, read: bool) -> str:
        return self.part.source

    async def connect(self, timeout: float) -> None:
        """Nothing per signal: the device's connector waited for the instrument."""

    async def get_datakey(self, source: str) -> DataKey:
        # By hand, as the native wire signals do: no ``dtype_numpy`` on scalars (the catalog
        # takes it from dtype; shadow mode compares descriptors key by key). The description
        # never depends on the value (a channel starts as NaN): only on what the driver declares.
        part = self.part
        key = DataKey(source=source, dtype=part.dtype, shape=list(part.shape))  # type: ignore[typeddict-item]
        if part.dtype == "array" and part.shape:
            key["dtype_numpy"] = "<f8"
        if part.units is not None:
            key["units"] = part.units
        if part.precision is not None:
            key["precision"] = part.precision
        limits = self.device.limits_shown(part)
        if limits is not None:
            key["limits"] = {"control": {"low": limits[0], "high": limits[1]}}
        return key

    @property
    def last_reading(self) -> Reading[Any] | None:
        """The instrument's latest report (None before the first): what a synchronous front end
        (the IOC) shows without asking the instrument."""
        return self._reading if self._reported else None

    @property
    def timestamp(self) -> float:
        return self._reading["timestamp"]

    def reading(self) -> Reading[Any]:
        return self._reading

    def update(self, value: Any, timestamp: float) -> None:
        """Keep a report (from any thread) and tell the subscriber on its loop."""
        reading: Reading[Any] = {"value": value, "timestamp": timestamp, "alarm_severity": 0}
        self._reading = reading
        self._reported = True
        callback, loop = self._callback, self._loop
        if callback is None or loop is None:
            return
        if _on_loop(loop):
            callback(reading)
            return
        try:
            loop.call_soon_threadsafe(self._deliver, reading)
        except RuntimeError:  # that loop is closed: nobody is left to tell
            self._callback = self._loop = None

    def _deliver(self, reading: Reading[Any]) -> None:
        if self._callback is not None and reading is self._reading:
            self._callback(reading)

    async def get_reading(self) -> Reading[Any]:
        return self._reading

    async def get_value(self) -> Any:
        return self._reading["value"]

    async def get_setpoint(self) -> Any:
        """A legacy setting's read-back is the value the instrument holds: that is its setpoint."""
        return self._reading["value"]

    async def put(self, value: Any) -> None:
        """Only a ``LegacySetting`` (a ``SignalW``) can put: measured channels have no put."""
        await self.device.set_parameter(self.part.parameter, value)

    def set_callback(self, callback: Callable[[Reading[Any]], None] | None) -> None:
        if callback is not None and self._callback is not None:
            raise RuntimeError(f"{self.part.source}: a callback is already set")
        self._loop = asyncio.get_running_loop() if callback is not None else None
        self._callback = callback
        if callback is not None:
            callback(self._reading)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class LegacySignal(RecordedAsV1, SignalR[Any]):
    """A measured channel (or a read-only parameter) of a legacy instrument: read-only, so a
    plan cannot move it and the IOC serves it read-only."""

    def __init__(self, backend: LegacyBackend, name: str = "") -> None:
        super().__init__(backend, timeout=None, name=name)
        self.parameter = backend.part.parameter
        """The instrument's own name of this channel or parameter."""
        self.__doc__ = backend.part.doc

    @property
    def backend(self) -> LegacyBackend:
        return self._connector.backend  # type: ignore[return-value]


class LegacySetpoint(LegacySignal):
    """The target of the last set of ``parameter`` that the instrument accepted (the native
    positioners' ``setpoint``), or its first read-back before any set: a value the instrument
    was commanded to and confirmed, never one typed by hand. Read-only like a measurement."""


class LegacySetting(RecordedAsV1, SignalRW[Any]):
    """A settable parameter of a legacy instrument as a read-write signal.

    ``set(value)`` refuses a bad value at once (before anything is sent), then commands the
    instrument through the legacy runtime (set, then read back): the status finishes only when
    the instrument reports the target within tolerance, and fails with the instrument's own
    error, or :class:`SetNotConfirmed`, otherwise. The signal then holds what the instrument
    reported.
    """

    def __init__(self, backend: LegacyBackend, name: str = "") -> None:
        super().__init__(backend, timeout=None, name=name)
        self.parameter = backend.part.parameter
        self.__doc__ = backend.part.doc
        object.__setattr__(self, "setpoint_signal", None)
        self.setpoint_signal: LegacySetpoint | None
        """The signal holding the target of this setting's last accepted set, if the device
        shows one (a motor record's VAL shows it, so the IOC serves it there and nowhere else)."""

    @property
    def backend(self) -> LegacyBackend:
        return self._connector.backend  # type: ignore[return-value]

    def set(self, value: Any, timeout: Any = CALCULATE_TIMEOUT) -> AsyncStatus:  # type: ignore[override]
        self.check_value(value)
        return super().set(value, timeout=timeout)

    def check_value(self, value: Any) -> Any:
        """Validate against the parameter's limits or choices before anything is sent."""
        return self.backend.device.check_parameter(self.parameter, value)

    @property
    def limits(self) -> tuple[float, float]:
        """What a set accepts (the driver's limits narrowed by the lab's), in ophyd's
        convention ((0, 0): none), so plans check a target before moving, on either stack."""
        limits = self.backend.device.parameter_limits(self.parameter)
        return limits if limits is not None else (0, 0)

    def stop(self, success: bool = False) -> None:
        """A long set (a wavelength tune) is interrupted on the instrument, as for the device."""
        self.backend.device.stop(success=success)


# --- the device --------------------------------------------------------------------------------


class _LegacyConnector(DeviceConnector):
    """Connect = wait for the legacy instrument to run, then ask for everything shown."""

    async def connect_real(self, device: Any, timeout: float, force_reconnect: bool) -> None:
        await device.connect_legacy(timeout)
        await super().connect_real(device, timeout, force_reconnect)


@dataclass
class _StreamWaiter:
    """A fresh trigger waiting for the next measurement of channels it cannot query."""

    channels: set[str]
    since: float
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class LegacyDevice(StandardReadable):
    """A legacy instrument as an ophyd-async device: Readable, Triggerable, Configurable,
    Stoppable, Subscribable (``bps.monitor``), and Movable when it has a settable parameter
    (then it is a :class:`LegacyMovableDevice`).

    ``read_mode='fresh'``: ``trigger()`` asks the instrument now (``Command.query`` of each channel
    that is a queryable parameter; other channels wait for their next published measurement).
    ``read_mode='latest'``: the latest published measurement of each channel, no traffic.
    ``settable`` names the parameter ``set()`` changes (default: the one read channel that is
    settable, if exactly one; ``False``: never movable). ``channels`` selects what is read (e.g.
    one Elliptec mount ``['position_2']``). Every settable parameter among the signals is a
    :class:`LegacySetting` (``bps.mv(laser.shutter, 0)``), whatever ``settable`` says.
    ``tolerance`` is how far a numeric read-back may be from the target: one number for every
    parameter, or ``{parameter: number}`` (default 1e-4 of the parameter's limit span; a laser
    that reports whole nm needs ``{"wavelength": 1.0}``). ``<parameter>_limits`` set on the
    device (the runtime sets ``wavelength_limits`` from the lab profile) narrow the driver's
    limits. ``timeout`` bounds every command; ``set_timeout`` a set and its read-back (moves can
    be long). A read-back not yet within tolerance is asked again (every ``READBACK_INTERVAL_S``)
    for up to ``settle_timeout`` seconds before the set fails: a driver may call a move done a
    moment before the instrument reports it settled (the MaiTai driver, within 1 nm).
    """

    driver_stack = "legacy"
    """Which driver stack reads this device (run metadata and the legacy-only plans ask this,
    not the class)."""

    def __new__(cls, legacy_runtime: LegacyRuntime, instrument_id: str, **kwargs: Any):
        name = kwargs.get("name") or instrument_id
        layout = _Layout.build(
            legacy_runtime,
            instrument_id,
            kwargs.get("channels"),
            kwargs.get("settable"),
            kwargs.get("configuration"),
            str(name),
            kwargs.get("fields"),
        )
        if cls is LegacyDevice and layout.settable is not None:
            cls = LegacyMovableDevice
        self = super().__new__(cls)
        object.__setattr__(self, "_new_layout", layout)
        return self

    def __init__(
        self,
        legacy_runtime: LegacyRuntime,
        instrument_id: str,
        *,
        name: str | None = None,
        channels: list[str] | None = None,
        read_mode: ReadMode = "fresh",
        settable: str | bool | None = None,
        configuration: list[str] | None = None,
        timeout: float = 10.0,
        set_timeout: float | None = None,
        tolerance: float | Mapping[str, float] | None = None,
        settle_timeout: float = 1.0,
        stop_command: str | None = None,
        queue_size: int = 1000,
        fields: Mapping[str, Field] | None = None,
    ) -> None:
        name = name or instrument_id
        layout: _Layout = self.__dict__.pop("_new_layout")
        if read_mode not in ("fresh", "latest"):
            raise ConfigError(
                f"read_mode {read_mode!r} is not 'fresh' or 'latest'.",
                instrument=name,
                key="read_mode",
                fix="'fresh' asks the instrument at each trigger; 'latest' uses its last "
                "published measurement.",
            )
        self._timeout = check_number(timeout, instrument=name, what="timeout (s)", low=1e-3)
        self._set_timeout = (
            max(self._timeout, 60.0)
            if set_timeout is None
            else check_number(set_timeout, instrument=name, what="set_timeout (s)", low=1e-3)
        )
        self._tolerance, self._tolerances = _tolerances(tolerance, layout, name)
        self._settle_timeout = check_number(
            settle_timeout, instrument=name, what="settle_timeout (s)", low=0.0
        )
        self.legacy_runtime = legacy_runtime
        self.instrument_id = instrument_id
        self.read_mode: ReadMode = read_mode
        self.stop_command = stop_command
        self.last_stop_result: CommandResult | None = None
        self.connected_loop: asyncio.AbstractEventLoop | None = None
        """The loop the device was connected on (``daqbridge.devices.core.call_sync`` runs
        synchronous callers' work there)."""
        self._layout = layout

        # Instrument name -> the signal showing it (a channel, the settable, a setting).
        self._shown: dict[str, LegacySignal | LegacySetting] = {}
        self._setpoints: dict[str, LegacySetpoint] = {}
        self._config_names: list[str] = list(layout.config)
        self._read_signals: list[LegacySignal | LegacySetting] = []
        for part in layout.parts():
            backend = LegacyBackend(self, part)
            if part.role == "setting":
                sig: Any = LegacySetting(backend)
            elif part.role == "setpoint":
                sig = LegacySetpoint(backend)
            else:
                sig = LegacySignal(backend)
            setattr(self, part.attr, sig)
            if part.role == "setpoint":
                self._setpoints[part.parameter] = sig
            else:
                self._shown[part.parameter] = sig
            # One at a time, in the fields' order: it orders the descriptor's keys (and a CSV
            # export's columns) as the native device's are, whatever each one's kind.
            if part.kind in _FORMATS:
                self.add_readables([sig], _FORMATS[part.kind])
            if part.kind in ("hinted", "normal"):
                self._read_signals.append(sig)
        for n, sp in self._setpoints.items():
            # A plain attribute, not a child: the setpoint is the device's, not the setting's.
            object.__setattr__(self._shown[n], "setpoint_signal", sp)
        # Channels read at every point; a channel shown as configuration (the MaiTai's warm-up)
        # or not recorded at all is kept current by the stream but not waited for by a trigger.
        self._read_channels = [
            c for c in layout.channels if layout.kind_of(c, "normal") not in ("config", "omitted")
        ]
        # queryable channels are asked in 'fresh' mode; the others wait for the stream
        params = layout.parameters
        self._queried = [c for c in self._read_channels if c in params and params[c].queryable]
        # Channels that cannot be queried are taken from the stream: a fresh trigger waits for
        # their next measurement, unless the instrument is not polled (it may never publish
        # again), where the latest one is used.
        rate = legacy_runtime.health().get(instrument_id, {}).get("polling_rate_hz") or 0
        self._streamed = [c for c in self._read_channels if c not in self._queried and rate > 0]
        self._unpolled = [
            c for c in self._read_channels if c not in self._queried and c not in self._streamed
        ]
        self._shown_at: dict[str, float] = {}
        self._setpoint_shown = False
        self._show_lock = threading.RLock()
        self._lock = threading.Lock()
        self._latest: dict[str, Measurement] = {}
        self._waiters: list[_StreamWaiter] = []
        self._monitors: dict[int, Callable[..., Any]] = {}
        self._monitor_ids = itertools.count(1)
        self._monitor_lock = threading.RLock()
        self._pending: dict[str, Measurement] = {}
        self._connected = False
        super().__init__(name=name, connector=_LegacyConnector())
        self._subscription = legacy_runtime.distributor.subscribe(
            self._on_measurement,
            maxsize=queue_size,
            name=f"legacy-adapter:{name}:{uuid.uuid4().hex[:8]}",
            instrument_ids=[instrument_id],
            channels=list(layout.channels),
        )
        self._refresh_settings_async()

    def set_name(self, name: str, *, child_name_separator: str | None = None) -> None:
        """Children joined with ``_`` (the native devices' keys, ``laser_power``), and the
        fields' own keys (a mount's read-back is the device's name, as ``EpicsMotor``'s is)."""
        super().set_name(name, child_name_separator="_")
        for f in self._layout.fields.values():
            if f.key is not None:
                getattr(self, f.attr).set_name(f"{name}_{f.key}" if f.key else name)

    # --- introspection ----------------------------------------------------------------------

    @property
    def channel_names(self) -> list[str]:
        return list(self._layout.channels)

    @property
    def settable(self) -> str | None:
        """The parameter ``set()`` changes, or None for a read-only device."""
        s = self._layout.settable
        return s.name if s is not None else None

    @property
    def settable_parameters(self) -> list[str]:
        """The parameters among the signals that ``bps.mv`` can set (LegacySetting)."""
        return [n for n, sig in self._shown.items() if isinstance(sig, LegacySetting)]

    @property
    def dropped(self) -> int:
        """Measurements discarded because this device's stream queue was full."""
        return self._subscription.dropped

    def signal_for(self, channel: str) -> LegacySignal | LegacySetting:
        """The signal holding ``channel`` (or the settable parameter, or a setting)."""
        try:
            return self._shown[channel]
        except KeyError:
            raise KeyError(f"{self.name} has no channel or setting {channel!r}") from None

    def latest(self, channel: str) -> Any:
        """The value the instrument last reported for ``channel`` (no command sent): for
        synchronous code (a scientist's prompt, a status page); plans read the device."""
        return self.signal_for(channel).backend.reading()["value"]

    # --- lifecycle ---------------------------------------------------------------------------

    async def connect_legacy(self, timeout: float) -> None:
        """Wait for the legacy instrument to run, then ask for everything shown, so no signal
        shows its placeholder (a shutter 0 that nobody measured) once connected."""
        self.connected_loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        while True:
            health = self.legacy_runtime.health().get(self.instrument_id, {})
            state = health.get("state")
            if state == "running":
                break
            if state in ("failed", "stopped", "stopping") or time.monotonic() >= deadline:
                raise InstrumentError(
                    f"legacy instrument is {state} (last error: {health.get('last_error')}).",
                    instrument=self.name,
                    resource=f"legacy:{self.instrument_id}",
                    fix="start the legacy runtime and check the instrument's connection; "
                    "LegacyRuntime.health() says what went wrong.",
                )
            await asyncio.sleep(0.01)  # the legacy runtime has no start event to await
        settings = set(self._config_names)
        if self._layout.settable is not None:
            settings.add(self._layout.settable.name)
        for p in self._queried_at_start():
            left = max(0.1, deadline - time.monotonic())
            try:
                async with asyncio.timeout(left):
                    result = await self._command(Command.query(p))
            except TimeoutError:
                result = CommandResult.failure(f"no answer within {left:.1f} s")
            if result.ok:
                self._store_setting(p, result.value)
            elif p in settings:
                raise _error_of(result, self.instrument_id, f"reading {p} at connect")
            else:  # a channel: its next poll or trigger reports it; no reason to refuse to start
                log.info("%s: reading %s at connect failed: %s", self.name, p, result.message)
        self._connected = True

    def _queried_at_start(self) -> list[str]:
        """Everything shown that the instrument can be asked for; the settings come last:
        whoever waits for them has every answer."""
        params = self._layout.parameters
        config = self._config_names
        names = [n for n in self._shown if n not in config and n in params and params[n].queryable]
        return names + [n for n in config if n not in names]

    def _refresh_settings_async(self) -> None:
        """Ask for the settings without waiting, so they are filled in even when nobody
        connects the device (a builder that only constructs it). Failures are left to
        ``connect()``/the next set to report: the instrument may not be running yet."""

        def store(name: str, fut: Any) -> None:
            if fut.cancelled():
                return
            result = fut.result()
            if result.ok:
                self._store_setting(name, result.value)
            else:
                log.debug("%s: reading %s failed: %s", self.name, name, result.message)

        for p in self._queried_at_start():
            fut = self.legacy_runtime.submit_future(self.instrument_id, Command.query(p))
            fut.add_done_callback(lambda f, p=p: store(p, f))

    @property
    def connected(self) -> bool:
        return self._connected and not self._subscription.closed

    def close(self) -> None:
        """Stop listening to the instrument's stream (the legacy runtime keeps running it)."""
        self._subscription.close()
        self._connected = False

    destroy = close

    # --- commands ----------------------------------------------------------------------------

    def _submit(self, command: Command) -> concurrent.futures.Future[CommandResult]:
        return self.legacy_runtime.submit_future(self.instrument_id, command)

    async def _command(self, command: Command) -> CommandResult:
        """One legacy command, awaited without blocking the loop; cancelled (an abort, a
        deadline) while still queued, it is withdrawn, never sent late."""
        return await asyncio.wrap_future(self._submit(command))

    async def _within(self, seconds: float, what: str, work: Awaitable[Any]) -> Any:
        """``work``, failed with the instrument's activity if it takes longer than ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                return await work
        except TimeoutError:
            busy = self.legacy_runtime.health().get(self.instrument_id, {})
            doing = (
                f"busy in {busy['activity']} for {busy['busy_for']} s"
                if busy.get("activity")
                else f"state {busy.get('state')}"
            )
            raise InstrumentTimeout(
                f"{what} did not finish within {seconds:g} s (legacy instrument "
                f"{self.instrument_id!r}: {doing}).",
                instrument=self.name,
                resource=f"legacy:{self.instrument_id}",
                fix="check that the instrument answers; give long actions a longer "
                "timeout/set_timeout.",
            ) from None

    # --- reading -----------------------------------------------------------------------------

    @AsyncStatus.wrap
    async def trigger(self) -> None:
        """Fresh readings: each queryable channel asked now, each streamed one's next
        measurement; done when every channel is new."""
        if self.read_mode == "latest":
            self._apply_latest()
            return
        if self._unpolled:
            with self._lock:
                latest = [self._latest[c] for c in self._unpolled if c in self._latest]
            for m in latest:
                self._store_measurement(m)
        await self._within(self._timeout, "trigger", self._fresh())

    async def _fresh(self) -> None:
        waiter = None
        if self._streamed:
            loop = asyncio.get_running_loop()
            waiter = _StreamWaiter(set(self._streamed), time.time(), loop.create_future(), loop)
            with self._lock:
                self._waiters.append(waiter)
        try:
            work = [self._query_channel(ch) for ch in self._queried]
            if waiter is not None:
                work.append(waiter.future)
            if len(work) == 1:
                await work[0]
            else:
                await _all(work)
        finally:
            if waiter is not None:
                with self._lock:
                    if waiter in self._waiters:
                        self._waiters.remove(waiter)

    async def _query_channel(self, channel: str) -> None:
        result = await self._command(Command.query(channel))
        if not result.ok:
            raise _error_of(result, self.instrument_id, f"query {channel}")
        try:
            value = self._recorded(channel, result.value)
        except ValueError as exc:
            raise LegacyInstrumentError(
                f"query {channel} returned {result.value!r}: {exc}",
                instrument=self.instrument_id,
                fix="the driver's query and its ChannelInfo dtype disagree; report it.",
            ) from None
        self._show(channel, value, time.time())

    async def read(self) -> dict[str, Reading]:
        """The signals' latest reports, taken together (one snapshot, no command sent)."""
        if self.read_mode == "latest":
            self._apply_latest()
        return {sig.name: sig.backend.reading() for sig in self._read_signals}

    def _apply_latest(self) -> None:
        with self._lock:
            latest = list(self._latest.values())
        for m in latest:
            self._store_measurement(m)

    def _recorded(self, name: str, value: Any) -> Any:
        """An instrument's value as its signal records it: through the field's codes (the
        instrument's own code for the same state), then as the signal's dtype. Raises
        ValueError when it cannot be one."""
        f = self._layout.fields.get(name)
        if f is not None and f.codes is not None:
            value = f.codes.get(value, value)
        sig = self._shown.get(name)
        return _coerce(value, sig.backend.part.dtype if sig is not None else "string")

    def _instrument_value(self, name: str, value: Any) -> Any:
        """A recorded value as the instrument's (the inverse of the field's codes)."""
        f = self._layout.fields.get(name)
        if f is None or f.codes is None or isinstance(value, bool | str):
            return value  # a name is the instrument's own; True is no code
        for ours, recorded in f.codes.items():
            if recorded == value:
                return ours
        return value

    def _store_measurement(self, m: Measurement) -> None:
        try:
            value = self._recorded(m.channel, m.value)
        except ValueError:
            log.warning(
                "%s: measurement %s=%r does not match its declared dtype; kept as published",
                self.name,
                m.channel,
                m.value,
            )
            value = m.value
        self._show(m.channel, value, m.timestamp)

    def _store_setting(self, name: str, value: Any) -> None:
        """Show a value the instrument answered to a query (or a set) just now."""
        if name not in self._shown:
            return
        try:
            value = self._recorded(name, value)
        except ValueError:
            value = str(value)
        self._show(name, value, time.time())

    def _show(self, name: str, value: Any, timestamp: float) -> None:
        """The one place a signal's value changes: only to something the instrument reported,
        and never back to an older report (a poll taken before a set's read-back can be
        delivered after it). The lock covers the update so two reports cannot cross."""
        sig = self._shown.get(name)
        if sig is None:
            return
        with self._show_lock:
            if timestamp < self._shown_at.get(name, -math.inf):
                return
            self._shown_at[name] = timestamp
            sig.backend.update(value, timestamp)
            sp = self._setpoints.get(name)
            if sp is not None and sp.backend.last_reading is None:
                # Before any set the target is where the instrument is (as the native
                # positioners start), so the first event's setpoint is a reported value.
                sp.backend.update(value, timestamp)

    def _show_setpoint(self, name: str, target: Any, timestamp: float) -> None:
        """The target of a set the instrument has just accepted (its set command succeeded)."""
        sp = self._setpoints.get(name)
        if sp is None:
            return
        try:
            value = self._recorded(name, target)
        except ValueError:
            return
        with self._show_lock:
            sp.backend.update(value, timestamp)

    # --- the measurement stream ------------------------------------------------------------

    def _on_measurement(self, m: Measurement) -> None:
        """Runs on the distributor's delivery thread of this device. The signal is updated
        first, so a trigger this measurement completes reads it."""
        self._store_measurement(m)
        done: list[_StreamWaiter] = []
        with self._lock:
            self._latest[m.channel] = m
            for w in self._waiters:
                if m.channel in w.channels and m.timestamp >= w.since:
                    w.channels.discard(m.channel)
                    if not w.channels:
                        done.append(w)
            for w in done:
                self._waiters.remove(w)
        for w in done:
            w.loop.call_soon_threadsafe(_resolve, w.future)
        if self._monitors:
            self._monitor_measurement(m)

    # --- monitors (bps.monitor) -------------------------------------------------------------

    def subscribe_reading(self, function: Callable[[dict[str, Reading]], None]) -> None:
        """``function(readings)`` for every measurement of the stream, from the stream's thread
        (bluesky's ``Subscribable``: ``bps.monitor(dev)``), starting with the latest known."""
        with self._monitor_lock:
            if not self._monitors:
                self._pending = {}
            self._monitors[next(self._monitor_ids)] = function
            with self._lock:
                have = dict(self._latest)
            if have:
                function(self._readings(have))

    subscribe = subscribe_reading
    """bluesky before 1.16 calls ``subscribe``."""

    def clear_sub(self, function: Callable[..., Any]) -> None:
        with self._monitor_lock:
            mine = [cid for cid, f in self._monitors.items() if f == function]
            if mine and self._pending and len(self._monitors) == len(mine):
                self._emit(dict(self._pending))  # the last partial set is not lost
                self._pending = {}
            for cid in mine:
                del self._monitors[cid]

    def _monitor_measurement(self, m: Measurement) -> None:
        with self._monitor_lock:
            if not self._monitors or m.channel not in self._read_channels:
                return
            if m.channel in self._pending:
                self._emit(dict(self._pending))
                self._pending = {}
            self._pending[m.channel] = m
            if len(self._pending) == len(self._read_channels):
                self._emit(dict(self._pending))
                self._pending = {}

    def _emit(self, measurements: dict[str, Measurement]) -> None:
        readings = self._readings(measurements)
        for cb in list(self._monitors.values()):
            try:
                cb(readings)
            except Exception:
                log.exception("%s: monitor callback %r raised", self.name, cb)

    def _readings(self, measurements: dict[str, Measurement]) -> dict[str, Reading]:
        """A readings dict with the keys of ``describe()``: the measurements given, and the
        latest known value (with its own, older, timestamp) of everything else."""
        with self._lock:
            latest = dict(self._latest)
        readings: dict[str, Reading] = {
            sig.name: dict(sig.backend.reading())  # type: ignore[misc]
            for sig in self._read_signals
        }
        for ch in self._read_channels:
            m = measurements.get(ch) or latest.get(ch)
            if m is None:
                continue
            try:
                value = self._recorded(ch, m.value)
            except ValueError:
                value = m.value
            readings[self._shown[ch].name] = {"value": value, "timestamp": m.timestamp}
        return readings

    # --- configuration -----------------------------------------------------------------------

    async def refresh_configuration(self) -> None:
        """Ask for every setting again (the baseline does, at the start and end of a run)."""
        for p in self._config_names:
            result = await self._within(
                self._timeout, f"query {p}", self._command(Command.query(p))
            )
            if not result.ok:
                raise _error_of(result, self.instrument_id, f"query {p}")
            self._store_setting(p, result.value)

    # --- setting parameters -------------------------------------------------------------------

    def parameter_limits(self, name: str) -> tuple[float, float] | None:
        """The driver's limits of ``name``, narrowed by ``<name>_limits`` on this device."""
        info = self._layout.parameters.get(name)
        limits = info.limits if info is not None else None
        narrowed = self.__dict__.get(f"{name}_limits")
        if narrowed is not None:
            low, high = (float(v) for v in narrowed)
            if limits is not None:
                low, high = max(low, limits[0]), min(high, limits[1])
            limits = (low, high)
        return limits

    def described_limits(self, name: str) -> tuple[float, float] | None:
        """The limits the descriptor of ``name`` shows: all of them, or only those the lab
        narrowed when its field says so (the native drivers describe only the profile's)."""
        f = self._layout.fields.get(name)
        if f is not None and not f.describe_limits and self.__dict__.get(f"{name}_limits") is None:
            return None
        return self.parameter_limits(name)

    def limits_shown(self, part: _Part) -> tuple[float, float] | None:
        """The limits a signal's descriptor shows: a setting's and its setpoint's."""
        if part.role == "channel" and not self._layout.is_setting(part.parameter):
            return None
        return self.described_limits(part.parameter)

    def check_parameter(self, name: str, value: Any) -> Any:
        """Validate against the parameter's ParameterInfo before anything is sent; ``value``
        is as recorded (a code of the field) or as the instrument takes it."""
        info = self._layout.parameters[name]
        value = self._instrument_value(name, value)
        what = f"{info.name}{f' ({info.unit})' if info.unit else ''}"
        if info.choices is not None:
            if value not in info.choices:
                raise ValueRejected(
                    f"{what} = {value!r} is not one of {list(info.choices)}.",
                    instrument=self.name,
                    value=value,
                    limit=info.choices,
                    fix=f"choose one of {list(info.choices)}.",
                )
            return value
        if info.dtype in ("number", "integer"):
            low, high = self.parameter_limits(name) or (None, None)
            return check_number(
                value,
                instrument=self.name,
                what=what,
                low=low,
                high=high,
                integer=info.dtype == "integer",
            )
        if info.dtype == "boolean":
            if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
                return bool(value)
            raise ValueRejected(
                f"{what} must be true or false, got {value!r}.", instrument=self.name, value=value
            )
        if info.dtype == "string":
            return check_wire_text(value, instrument=self.name, what=what)
        return value

    async def set_parameter(self, name: str, value: Any, timeout: float | None = None) -> None:
        """Command ``name`` on the instrument; done when the instrument reports the target.
        Values are validated before anything is sent."""
        target = self.check_parameter(name, value)
        info = self._layout.parameters[name]
        seconds = self._set_timeout if timeout is None else timeout
        await self._within(seconds, f"set {info.name}={target!r}", self._set(info, target))

    async def _set(self, info: ParameterInfo, target: Any) -> None:
        # The read-back is queued with the set: the legacy worker runs them back to back (what
        # it would do anyway), and the loop waits for the worker once instead of twice.
        setting = self._submit(Command.set(info.name, target))
        readback = self._submit(Command.query(info.name)) if info.queryable else None
        try:
            result = await asyncio.wrap_future(setting)
            if not result.ok:
                error = _error_of(result, self.instrument_id, f"set {info.name}={target!r}")
                if readback is not None:
                    # The instrument may have done part of it (a move stopped half way): show
                    # what it reports now before failing, so a plan's next read is the truth.
                    now = await asyncio.wrap_future(readback)
                    if now.ok:
                        self._store_setting(info.name, now.value)
                raise error
            self._show_setpoint(info.name, target, time.time())
            if readback is None:
                # Nothing to read back: the driver's own confirmation is the only report.
                # Without one the signal keeps the instrument's last report, never the
                # commanded value.
                if result.value is not None:
                    self._store_setting(info.name, result.value)
                return
            settle_until = time.monotonic() + self._settle_timeout
            while True:
                result = await asyncio.wrap_future(readback)
                if not result.ok:
                    raise _error_of(result, self.instrument_id, f"read-back of {info.name}")
                got = result.value
                self._store_setting(info.name, got)  # what the instrument reports, reached or not
                if self._matches(info, target, got):
                    return
                if time.monotonic() + READBACK_INTERVAL_S > settle_until:
                    note = f" ({result.message})" if result.message else ""
                    raise SetNotConfirmed(
                        f"set {info.name} to {target!r}{info.unit and ' ' + info.unit}, but the "
                        f"instrument reports {got!r}{note}",
                        instrument=self.name,
                        resource=f"legacy:{self.instrument_id}",
                        fix="the instrument may be in local mode, interlocked or unable to reach "
                        f"the value; check it, or give the adapter a tolerance for {info.name!r} "
                        "if the difference is expected (the instrument's resolution).",
                    )
                await asyncio.sleep(READBACK_INTERVAL_S)  # the instrument is still settling
                readback = self._submit(Command.query(info.name))
        finally:
            setting.cancel()  # still queued (an abort, a deadline): never sent late
            if readback is not None:
                readback.cancel()

    def _matches(self, info: ParameterInfo, target: Any, got: Any) -> bool:
        if info.dtype in ("number", "integer") and info.choices is None:
            try:
                got_f, target_f = float(got), float(target)
            except (TypeError, ValueError):
                return False
            tol = self._tolerances.get(info.name, self._tolerance)
            if tol is None:
                if info.dtype == "integer":
                    tol = 0.0
                elif info.limits is not None:
                    tol = 1e-4 * (info.limits[1] - info.limits[0])
                else:
                    tol = 1e-6 * max(abs(target_f), 1e-12)
            return abs(got_f - target_f) <= tol
        return bool(got == target)

    # --- stopping ----------------------------------------------------------------------------

    def stop(self, success: bool = False) -> None:
        """Interrupt what the instrument is doing (a long move) from outside its busy worker.

        ``LegacyRuntime.halt`` waits for the driver's ``stop()``; that wait happens on a helper
        thread because bluesky calls ``stop`` on the RunEngine's loop.
        """

        def halt() -> None:
            try:
                self.last_stop_result = self.legacy_runtime.halt(self.instrument_id)
            except KeyError as exc:
                self.last_stop_result = CommandResult.failure(
                    LegacyInstrumentError(str(exc), instrument=self.instrument_id)
                )
            if not self.last_stop_result.ok:
                log.warning("%s: stop failed: %s", self.name, self.last_stop_result.message)
            if self.stop_command:
                self.legacy_runtime.submit_future(
                    self.instrument_id, Command.execute(self.stop_command)
                )

        threading.Thread(target=halt, name=f"legacy-stop-{self.name}", daemon=True).start()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.name!r} legacy:{self.instrument_id} "
            f"channels={self.channel_names} settable={self.settable!r} mode={self.read_mode}>"
        )


class LegacyMovableDevice(LegacyDevice):
    """A legacy device with a settable parameter: ``set``/``locate`` move that parameter (made
    by ``LegacyDevice(...)`` when the instrument has one, so Movable is true exactly then)."""

    def check_value(self, value: Any) -> Any:
        """Validate against the parameter's ParameterInfo before anything is sent."""
        return self.check_parameter(self._settable_name, value)

    @property
    def _settable_name(self) -> str:
        assert self._layout.settable is not None
        return self._layout.settable.name

    def set(self, value: Any, timeout: float | None = None) -> AsyncStatus:
        """Refuse a bad target at once; the status finishes when the instrument has confirmed
        the set (result ok and, if it can be queried, the read-back matches)."""
        self.check_value(value)
        return AsyncStatus(self.set_parameter(self._settable_name, value, timeout=timeout))

    @property
    def limits(self) -> tuple[float, float]:
        """The lab's soft limits of the settable parameter in ophyd's convention ((0, 0):
        none), as the native positioners give them; the driver's are enforced on every set."""
        limits = self.described_limits(self._settable_name)
        return limits if limits is not None else (0, 0)

    @property
    def position(self) -> Any:
        """The last value of the settable parameter the instrument reported."""
        return self.latest(self._settable_name)

    async def locate(self) -> Location[Any]:
        value = self.latest(self._settable_name)
        sp = self._setpoints.get(self._settable_name)
        setpoint = sp.backend.reading()["value"] if sp is not None else value
        return Location(setpoint=setpoint, readback=value)


def _resolve(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def _all(work: list[Awaitable[Any]]) -> None:
    """Every awaitable done; the first failure cancels the rest (withdrawing queued commands)
    and is raised as it is (not in an ExceptionGroup: the RunEngine shows the instrument's
    words)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()


# --- layout: what one adapter exposes ----------------------------------------------------------


_RESERVED = {name for name in dir(StandardReadable) if not name.startswith("__")} | {
    "set",
    "position",
    "locate",
    "check_value",
    "close",
    "limits",
    "instrument_id",
    "legacy_runtime",
    "read_mode",
    "channel_names",
    "settable",
    "settable_parameters",
    "dropped",
    "stop_command",
    "last_stop_result",
    "connected_loop",
}


def _attr_for(name: str, taken: set[str]) -> str:
    attr = re.sub(r"\W", "_", name)
    if not attr or attr[0].isdigit() or keyword.iskeyword(attr) or attr in _RESERVED:
        attr = f"ch_{attr}"
    base, n = attr, 2
    while attr in taken:
        attr, n = f"{base}_{n}", n + 1
    taken.add(attr)
    return attr


@dataclass(frozen=True)
class _Layout:
    instrument_id: str
    channels: dict[str, ChannelInfo]  # the channels this device reads, in order
    channel_attrs: dict[str, str]  # channel -> component attribute
    config: dict[str, ParameterInfo]  # settings read once per run
    config_attrs: dict[str, str]
    settable: ParameterInfo | None
    settable_attr: str | None  # the component holding the settable's read-back
    main: str  # the hinted channel
    parameters: dict[str, ParameterInfo]  # everything the instrument declares settable/queryable
    fields: dict[str, Field]  # instrument name -> how it is shown (empty: the driver's names)

    @classmethod
    def build(
        cls,
        runtime: Any,
        instrument_id: Any,
        channels: Iterable[str] | None,
        settable: str | bool | None,
        configuration: Iterable[str] | None,
        name: str,
        fields: Mapping[str, Field] | None = None,
    ) -> _Layout:
        if not isinstance(runtime, LegacyRuntime):
            raise ConfigError(
                f"LegacyDevice {name!r} needs a LegacyRuntime, got {type(runtime).__name__}.",
                instrument=name,
                fix="pass the runtime that runs the legacy instrument (LegacyRuntime.from_config).",
            )
        instrument = runtime.instruments.get(instrument_id)
        if instrument is None:
            raise ConfigError(
                f"no legacy instrument named {instrument_id!r} in this runtime "
                f"(known: {sorted(runtime.instruments) or 'none'}).",
                instrument=name,
                key="instrument_id",
                fix="use the id of an instrument of the legacy configuration.",
            )
        offered = dict(instrument.channels())
        params = dict(instrument.parameters())
        if fields is not None:
            fields = dict(fields)
            _check_fields(fields, offered, params, instrument_id, name, channels, configuration)
            channels = [n for n in fields if n in offered]
            configuration = [n for n in fields if n not in offered]
        if channels is None:
            chosen = list(offered)
        else:
            if isinstance(channels, str):
                raise ConfigError(
                    f"channels takes a list of channel names, got the string {channels!r}.",
                    instrument=name,
                    key="channels",
                    fix=f"write channels=[{channels!r}].",
                )
            chosen = list(channels)
            unknown = [c for c in chosen if c not in offered]
            if unknown or not chosen or len(set(chosen)) != len(chosen):
                raise ConfigError(
                    f"channels {chosen!r} of {instrument_id!r}: "
                    + (f"unknown {unknown}" if unknown else "empty or repeated")
                    + f"; the instrument publishes {sorted(offered)}.",
                    instrument=name,
                    key="channels",
                    fix="choose among the instrument's channels, each once.",
                )
        if not chosen:
            raise ConfigError(
                f"legacy instrument {instrument_id!r} declares no channels; nothing to read.",
                instrument=name,
                fix="fix the driver's channels(), or drive it with LegacyRuntime.submit.",
            )
        chan_infos = {c: offered[c] for c in chosen}

        settable_info: ParameterInfo | None = None
        if settable is None:
            # Automatic only when unambiguous: exactly one read channel is also a setting.
            candidates = [c for c in chosen if c in params and params[c].settable]
            if len(candidates) == 1:
                settable_info = params[candidates[0]]
        elif settable is not False:
            info = params.get(settable) if isinstance(settable, str) else None
            if info is None or not info.settable:
                settables = sorted(p for p, i in params.items() if i.settable)
                raise ConfigError(
                    f"{settable!r} is not a settable parameter of {instrument_id!r} "
                    f"(settable: {settables or 'none'}).",
                    instrument=name,
                    key="settable",
                    fix="name one of the settable parameters, or leave settable unset.",
                )
            settable_info = info

        if configuration is None:
            # Settings: settable and queryable parameters that are not published as channels
            # (read-only queries such as identity strings are not settings, and their values
            # are not guaranteed to be event-model scalars).
            conf_names = [
                p
                for p, i in params.items()
                if i.settable
                and i.queryable
                and p not in offered
                and p != getattr(settable_info, "name", None)
            ]
        else:
            conf_names = list(configuration)
            bad = [p for p in conf_names if p not in params or not params[p].queryable]
            if bad:
                raise ConfigError(
                    f"configuration {bad} of {instrument_id!r} are not queryable parameters "
                    f"(queryable: {sorted(p for p, i in params.items() if i.queryable)}).",
                    instrument=name,
                    key="configuration",
                    fix="list queryable parameters only, or leave configuration unset.",
                )
        fields = fields or {}
        taken = {f.attr for f in fields.values()}
        channel_attrs = {c: fields[c].attr if c in fields else _attr_for(c, taken) for c in chosen}
        settable_attr = None
        if settable_info is not None:
            settable_attr = channel_attrs.get(settable_info.name) or _attr_for(
                settable_info.name, taken
            )
        conf = {p: params[p] for p in conf_names if p not in chan_infos}
        config_attrs = {p: fields[p].attr if p in fields else _attr_for(p, taken) for p in conf}
        main = (
            settable_info.name
            if settable_info is not None and settable_info.name in chan_infos
            else chosen[0]
        )
        return cls(
            instrument_id=instrument_id,
            channels=chan_infos,
            channel_attrs=channel_attrs,
            config=conf,
            config_attrs=config_attrs,
            settable=settable_info,
            settable_attr=settable_attr,
            main=main,
            parameters=params,
            fields=fields,
        )

    def is_setting(self, name: str) -> bool:
        info = self.parameters.get(name)
        return info is not None and info.settable

    def kind_of(self, name: str, default: str) -> str:
        f = self.fields.get(name)
        return f.kind if f is not None else default

    def parts(self) -> list[_Part]:
        """What the device shows, in the order its readings are recorded: the fields' order
        (the native device's component order, which also orders a CSV export's columns), then
        the rest."""
        parts: dict[str, _Part] = {}

        def add(name: str, role: str, default_kind: str, **kw: Any) -> None:
            f = self.fields.get(name)
            attr = self.attr_of(name)
            dtype = (f.dtype if f is not None else None) or kw.pop("data_type")
            kw.pop("data_type", None)
            common = dict(
                parameter=name,
                dtype=dtype,
                shape=tuple(kw.pop("shape", ())),
                precision=f.precision if f is not None else None,
                units=kw.pop("units"),
            )
            parts[attr] = _Part(
                attr=attr,
                role=role,
                kind=self.kind_of(name, default_kind),
                source=f"legacy:{self.instrument_id}/{name}",
                **common,
                **kw,
            )
            if f is not None and f.setpoint:
                parts[f.setpoint] = _Part(
                    attr=f.setpoint,
                    role="setpoint",
                    kind="normal",
                    source=f"legacy:{self.instrument_id}/{name} (setpoint)",
                    doc=f"target of the last set of {name} the instrument accepted",
                    **common,
                )

        for ch, info in self.channels.items():
            setting = self.parameters.get(ch) if self.is_setting(ch) else None
            add(
                ch,
                "setting" if setting is not None else "channel",
                "hinted" if ch == self.main else "normal",
                data_type=info.dtype,
                shape=info.shape,
                units=info.unit or None,
                doc=info.doc or f"channel {ch} of legacy instrument {self.instrument_id}",
            )
        s = self.settable
        if s is not None and s.name not in self.channels:
            add(
                s.name,
                "setting",
                "hinted",
                data_type=s.dtype,
                units=s.unit or None,
                doc=s.doc or f"setting {s.name} of legacy instrument {self.instrument_id}",
            )
        for p, info in self.config.items():
            add(
                p,
                "setting" if info.settable else "channel",
                "config",
                data_type=info.dtype,
                units=info.unit or None,
                doc=info.doc or f"setting {p} of legacy instrument {self.instrument_id}",
            )
        order = [a for f in self.fields.values() for a in (f.attr, f.setpoint) if a in parts]
        return [parts[a] for a in [*order, *(a for a in parts if a not in order)]]

    def attr_of(self, name: str) -> str:
        if name in self.channel_attrs:
            return self.channel_attrs[name]
        if name in self.config_attrs:
            return self.config_attrs[name]
        assert self.settable_attr is not None
        return self.settable_attr


@dataclass(frozen=True)
class _Part:
    """One signal of the device: a measured channel, a setting, or a setting's setpoint."""

    attr: str
    role: str  # "channel" (read-only), "setting" (read-write), "setpoint" (read-only)
    kind: str  # "hinted", "normal", "config", "omitted"
    parameter: str  # the instrument's own name
    dtype: str
    shape: tuple[int, ...]
    precision: int | None
    units: str | None
    source: str
    doc: str


def _check_fields(
    fields: dict[str, Field],
    offered: Mapping[str, ChannelInfo],
    params: Mapping[str, ParameterInfo],
    instrument_id: str,
    name: str,
    channels: Any,
    configuration: Any,
) -> None:
    """``fields`` names what is shown, so it cannot be combined with channels/configuration,
    and each name must be a channel or a queryable parameter shown under a free attribute."""
    if channels is not None or configuration is not None:
        raise ConfigError(
            "fields already says which channels and settings are shown; channels and "
            "configuration cannot be given with it.",
            instrument=name,
            key="fields",
            fix="give fields alone (or channels/configuration alone).",
        )
    problems = []
    for n, f in fields.items():
        if not isinstance(f, Field):
            problems.append(f"{n!r} maps to {f!r}, not a Field")
        elif n not in offered and (n not in params or not params[n].queryable):
            problems.append(f"{n!r} is neither a channel nor a queryable parameter")
        elif f.kind not in _KINDS or f.dtype not in (None, *_RECORDED_DTYPES):
            problems.append(f"{n!r}: kind {f.kind!r} or dtype {f.dtype!r} is not known")
    attrs = [a for f in fields.values() if isinstance(f, Field) for a in (f.attr, f.setpoint) if a]
    clash = sorted(
        {a for a in attrs if attrs.count(a) > 1 or a in _RESERVED or not a.isidentifier()}
    )
    if clash:
        problems.append(f"attributes {clash} are repeated, reserved or not identifiers")
    if problems or not fields:
        raise ConfigError(
            f"fields of {instrument_id!r}: {'; '.join(problems) or 'empty'} (channels: "
            f"{sorted(offered)}; queryable: "
            f"{sorted(p for p, i in params.items() if i.queryable)}).",
            instrument=name,
            key="fields",
            fix="map the instrument's channels and parameters to distinct component names.",
        )


def _tolerances(
    tolerance: Any, layout: _Layout, name: str
) -> tuple[float | None, dict[str, float]]:
    """``tolerance`` as (one for every parameter, per parameter); each checked to be >= 0."""
    if tolerance is None:
        return None, {}
    if not isinstance(tolerance, Mapping):
        return check_number(tolerance, instrument=name, what="tolerance", low=0.0), {}
    unknown = [p for p in tolerance if not layout.is_setting(p)]
    if unknown:
        settable = sorted(p for p, i in layout.parameters.items() if i.settable)
        raise ConfigError(
            f"tolerance names {unknown}, which are not settable parameters of "
            f"{layout.instrument_id!r} (settable: {settable or 'none'}).",
            instrument=name,
            key="tolerance",
            fix="give tolerances only for settable parameters, e.g. {'wavelength': 1.0}.",
        )
    return None, {
        p: check_number(v, instrument=name, what=f"tolerance of {p}", low=0.0)
        for p, v in tolerance.items()
    }
