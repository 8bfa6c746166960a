"""Any legacy ("V2") instrument as an ophyd device, so legacy and native drivers share plans.

Why it is built this way:

* It knows nothing about our drivers: everything comes from the ``LegacyInstrument`` interface
  (``channels()``, ``parameters()``, commands through ``LegacyRuntime`` and the measurement
  stream of the ``DataDistributor``). A driver written next year works without touching this file.
* The device class is made per instrument (one ophyd component per channel and per setting),
  because ophyd describes, reads and hints components; a generic "values" dict would lose units,
  dtypes and hints in the descriptor. The ``set``/``position`` part is mixed in only when the
  instrument has a settable parameter, so ``isinstance(dev, bluesky.protocols.Movable)`` is true
  exactly when a plan can move it.
* Every component shows only what the instrument reported (issue 18): a component of a settable
  parameter is a :class:`LegacySetting` whose ``set``/``put`` commands the instrument (set, then
  query the read-back; done only when the read-back is within tolerance of the target) and then
  holds the read-back, never the commanded value; a measured channel is a :class:`LegacySignal`
  that refuses ``put``/``set`` (:class:`ReadOnlyChannel`) instead of caching a number nobody
  measured. ``bps.mv(laser.shutter, 0)`` therefore closes the shutter or fails saying it did not.
* Components are fed by the distributor as measurements arrive, so ``.get()`` is never older
  than the instrument's last poll (issue 12), without a ``trigger()``. A value older than the one
  shown (a poll taken before a set's read-back but delivered after it) is not applied.
* Nothing blocks the RunEngine's loop: commands go to the instrument's legacy worker with
  ``LegacyRuntime.submit_future`` and their results finish the ophyd status from that worker
  (a done-callback, never a wait), so the only extra cost over the legacy call itself is one
  thread hand-over. Deadlines are kept by one shared watcher thread instead of a timer thread per
  status (ophyd's ``timeout=`` starts a thread for every status: too slow per point).
* Legacy results are values (``CommandResult``); an ``ok=False`` becomes a failed status carrying
  the driver's own typed error, so the RunEngine reports the instrument's words.
* ``bps.monitor(dev)`` records the legacy stream itself: ``subscribe(cb)`` (no event type) hands
  ``cb`` a readings dict for every measurement, from the distributor's delivery thread, with the
  measurement's own timestamp. Instruments publishing several channels per poll are coalesced into
  one event per complete set (a channel that repeats first flushes the set), so nothing is dropped
  and no value is invented.
"""

from __future__ import annotations

import heapq
import itertools
import keyword
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Kind
from ophyd.status import DeviceStatus, StatusBase
from ophyd.utils import ReadOnlyError

from daqbridge.bridge._signals import InstrumentSignal, fail_status, finish_status
from daqbridge.devices._base import check_number, check_wire_text
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
    "SUB_READINGS",
    "Field",
    "LegacyDevice",
    "LegacySetting",
    "LegacySignal",
    "ReadOnlyChannel",
    "SetNotConfirmed",
]

log = logging.getLogger("daqbridge.bridge.legacy_adapter")

ReadMode = Literal["fresh", "latest"]
SUB_READINGS = "readings"
"""Event type of the monitor subscription (the default of ``subscribe``)."""

_RECORDED_DTYPES = ("number", "integer", "boolean", "string", "array")
"""What a component can record (what ``_coerce`` makes of an instrument's value)."""

READBACK_INTERVAL_S = 0.05
"""Pause between read-backs of a set that is not yet within tolerance (``settle_timeout``)."""


class SetNotConfirmed(InstrumentError):
    """The legacy driver accepted a set, but the instrument's read-back does not show the value."""


class ReadOnlyChannel(InstrumentError, ReadOnlyError):
    """A put/set on something the instrument measures (power, warm-up): there is nothing to
    command, and storing the value would record a number the instrument never reported.
    Also an ophyd ``ReadOnlyError``, for code that checks writability the ophyd way."""


@dataclass(frozen=True)
class Field:
    """How one channel or parameter of a legacy instrument is shown: under the native driver's
    name, kind, dtype and precision, so a run records the same keys on either stack (issue 18)
    and analysis written for one stack reads the other's runs.

    ``attr``: the component ("status_byte" for the driver's "status", "readback" for a mount's
    position). ``kind``: "hinted", "normal", "config" (read once per run) or "omitted" (kept
    current, never recorded: a bus whose mounts are the devices). ``key``: the data
    key's suffix; "" makes the key the device's own name (a positioner's read-back, as ophyd's
    ``EpicsMotor`` does). ``dtype``: the recorded dtype when the instrument's differs ("integer"
    for the 1830-C's boolean attenuator). ``codes``: instrument value -> recorded value (the
    1830-C's filter "medium" is its ``F2`` code, 2); a set maps back, so nothing is recorded
    that the instrument did not report. ``setpoint``: the attribute of a component holding the
    target of the last set the instrument accepted (the native ``_setpoint`` key).
    ``describe_limits``: False describes only the limits the lab narrowed (``<name>_limits``),
    as the native drivers do; the driver's own limits are enforced either way.
    """

    attr: str
    kind: Literal["hinted", "normal", "config", "omitted"] = "normal"
    key: str | None = None
    dtype: str | None = None
    precision: int | None = None
    codes: Mapping[Any, Any] | None = None
    setpoint: str | None = None
    describe_limits: bool = True


# --- deadlines ---------------------------------------------------------------------------------


class _Deadlines:
    """One thread that fails statuses whose legacy command took too long.

    A ``threading.Timer`` per status (what ophyd's ``timeout=`` does) costs a thread start per
    trigger; a heap served by one thread costs a push and a notify. A cancelled deadline drops
    its action at once (the action holds the operation and its status): only its (due, handle)
    entry waits in the heap until it falls due, so a fast scan does not keep every finished
    point's status alive for the whole timeout.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []
        self._actions: dict[int, Callable[[], None]] = {}
        self._cond = threading.Condition()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def schedule(self, delay: float, action: Callable[[], None]) -> int:
        with self._cond:
            handle = next(self._ids)
            due = time.monotonic() + delay
            earliest = not self._heap or due < self._heap[0][0]
            heapq.heappush(self._heap, (due, handle))
            self._actions[handle] = action
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="legacy-adapter-deadlines", daemon=True
                )
                self._thread.start()
            if earliest:  # the watcher sleeps until the old head: wake it only if that changed
                self._cond.notify()
            return handle

    def cancel(self, handle: int) -> None:
        with self._cond:
            self._actions.pop(handle, None)

    def pending(self) -> int:
        """Deadlines whose action may still run (for tests and status)."""
        with self._cond:
            return len(self._actions)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][1] not in self._actions:
                        heapq.heappop(self._heap)  # cancelled: its action is gone already
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        _, handle = heapq.heappop(self._heap)
                        action = self._actions.pop(handle)
                        break
                    self._cond.wait(wait)
            try:
                action()
            except Exception:  # pragma: no cover - an action must never kill the watcher
                log.exception("deadline action failed")


_DEADLINES = _Deadlines()


def _error_of(result: CommandResult, instrument: str, what: str) -> DaqbridgeError:
    if result.error is not None:
        return result.error
    return LegacyInstrumentError(
        f"{what} failed: {result.message or 'no reason given'}", instrument=instrument
    )


# --- signals -----------------------------------------------------------------------------------


class LegacySignal(InstrumentSignal):
    """A measured channel (or a read-only setting) of a legacy instrument, described from its
    ChannelInfo/ParameterInfo. Read-only: ``put``/``set`` raise :class:`ReadOnlyChannel`.

    The description never depends on the current value (a channel starts as NaN before its first
    measurement; ophyd would then guess its dtype), only on what the instrument declares.
    """

    def __init__(
        self,
        *,
        data_type: str = "number",
        data_shape: tuple[int, ...] = (),
        parameter: str = "",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._data_type = data_type
        self._data_shape = tuple(data_shape)
        self.parameter = parameter or self.attr_name
        """The instrument's own name of this channel or parameter."""
        self._metadata.update(write_access=self.writable)

    writable = False

    def describe(self) -> dict[str, dict[str, Any]]:
        entry: dict[str, Any] = {
            "source": self.source_name,
            "dtype": self._data_type,
            "shape": list(self._data_shape),
        }
        # Scalars carry no dtype_numpy, as in the native drivers' descriptors (the catalog
        # takes it from dtype); an array's element type cannot be guessed from a NaN start.
        if self._data_type == "array" and self._data_shape:
            entry["dtype_numpy"] = "<f8"
        if self._units is not None:
            entry["units"] = self._units
        if self._precision is not None:
            entry["precision"] = self._precision
        limits = self._control_limits()
        if limits is not None:
            entry["limits"] = {"control": {"low": limits[0], "high": limits[1]}}
        return {self.name: entry}

    def _control_limits(self) -> tuple[float, float] | None:
        return self._limits

    def put(self, value: Any, *, force: bool = False, **kwargs: Any) -> None:
        """``force=True`` is how the device stores what the instrument reported; anything else
        would pass a value off as a measurement, so it is refused."""
        if force:
            super().put(value, force=True, **kwargs)
            return
        raise self._refusal(value)

    def set(self, value: Any, **kwargs: Any) -> StatusBase:
        raise self._refusal(value)

    def _refusal(self, value: Any) -> ReadOnlyChannel:
        device = self.parent
        instrument = getattr(device, "instrument_id", None) or "?"
        settable = getattr(device, "settable_parameters", None) or []
        return ReadOnlyChannel(
            f"{self.name} ({self.parameter!r} of legacy instrument {instrument!r}) is measured "
            f"by the instrument and cannot be set (asked to set it to {value!r}).",
            instrument=getattr(device, "name", None) or self.name,
            resource=f"legacy:{instrument}",
            fix=(
                f"set one of its settable parameters instead ({', '.join(settable)})"
                if settable
                else "this instrument has no settable parameter here; read the channel instead"
            )
            + ".",
        )


class LegacySetting(LegacySignal):
    """A settable parameter of a legacy instrument as a read-write signal.

    ``set(value)`` commands the instrument through the legacy runtime (set, then read back) and
    the status finishes only when the instrument reports the target within tolerance; it fails
    with the instrument's own error, or :class:`SetNotConfirmed`, otherwise. The signal then
    holds what the instrument reported. ``put(value)`` is ``set(value)`` waited for.
    """

    writable = True

    def set(self, value: Any, *, timeout: float | None = None, **kwargs: Any) -> StatusBase:
        return self.parent._set_parameter(self.parameter, value, obj=self, timeout=timeout)

    def put(
        self, value: Any, *, force: bool = False, timeout: float | None = None, **kwargs: Any
    ) -> None:
        if force:
            super().put(value, force=True, **kwargs)
            return
        self.set(value, timeout=timeout).wait()  # the status carries its own deadline

    def check_value(self, value: Any) -> Any:
        """Validate against the parameter's limits or choices before anything is sent."""
        return self.parent._check_parameter(self.parameter, value)

    setpoint_signal: LegacySignal | None = None
    """The component holding the target of this setting's last accepted set, if the device
    shows one (a motor record's VAL shows it, so the IOC serves it there and nowhere else)."""

    def _control_limits(self) -> tuple[float, float] | None:
        parent = self.parent
        if parent is None or not hasattr(parent, "described_limits"):
            return self._limits
        return parent.described_limits(self.parameter)

    @property
    def limits(self) -> tuple[float, float]:
        """What a set accepts (the driver's limits narrowed by the lab's), in ophyd's
        convention ((0, 0): none), so plans check a target before moving, on either stack."""
        parent = self.parent
        limits = (
            parent.parameter_limits(self.parameter)
            if parent is not None and hasattr(parent, "parameter_limits")
            else self._limits
        )
        return limits if limits is not None else (0, 0)

    def stop(self, *, success: bool = False) -> None:
        """A long set (a wavelength tune) is interrupted on the instrument, as for the device."""
        self.parent.stop(success=success)


class LegacySetpoint(LegacySignal):
    """The target of the last set of ``parameter`` that the instrument accepted (the native
    positioners' ``setpoint``), or its first read-back before any set: a value the instrument
    was commanded to and confirmed, never one typed by hand. Read-only like a measurement."""

    def _control_limits(self) -> tuple[float, float] | None:
        parent = self.parent
        if parent is None or not hasattr(parent, "described_limits"):
            return self._limits
        return parent.described_limits(self.parameter)


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


# --- layout: what one adapter exposes ----------------------------------------------------------


_RESERVED = {name for name in dir(Device) if not name.startswith("__")} | {
    "set",
    "position",
    "locate",
    "check_value",
    "close",
    "instrument_id",
    "legacy_runtime",
    "read_mode",
    "channel_names",
    "settable",
    "dropped",
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

    def kind_of(self, name: str, default: Kind) -> Kind:
        f = self.fields.get(name)
        return Kind[f.kind] if f is not None else default

    def components(self) -> dict[str, Cpt]:
        cpts: dict[str, Cpt] = {}

        def add(attr: str, name: str, cls: type, default_kind: Kind, **kw: Any) -> None:
            f = self.fields.get(name)
            instrument_dtype = kw.pop("data_type")
            dtype = (f.dtype if f is not None else None) or instrument_dtype
            shape = kw.pop("data_shape", ())
            common = dict(
                data_type=dtype,
                parameter=name,
                precision=f.precision if f is not None else None,
                source=f"legacy:{self.instrument_id}/{name}",
            )
            cpts[attr] = Cpt(
                cls,
                kind=self.kind_of(name, default_kind),
                value=_initial_value(dtype, shape),
                data_shape=shape,
                **common,
                **kw,
            )
            if f is not None and f.setpoint:
                cpts[f.setpoint] = Cpt(
                    LegacySetpoint,
                    kind=Kind.normal,
                    value=_initial_value(dtype, shape),
                    data_shape=shape,
                    units=kw.get("units"),
                    doc=f"target of the last set of {name} the instrument accepted",
                    **{**common, "source": f"legacy:{self.instrument_id}/{name} (setpoint)"},
                )

        for ch, info in self.channels.items():
            setting = self.parameters.get(ch) if self.is_setting(ch) else None
            add(
                self.channel_attrs[ch],
                ch,
                LegacySetting if setting is not None else LegacySignal,
                Kind.hinted if ch == self.main else Kind.normal,
                data_type=info.dtype,
                data_shape=info.shape,
                units=info.unit or None,
                limits=setting.limits if setting is not None else None,
                doc=info.doc or f"channel {ch} of legacy instrument {self.instrument_id}",
            )
        s = self.settable
        if s is not None and s.name not in self.channels:
            assert self.settable_attr is not None
            add(
                self.settable_attr,
                s.name,
                LegacySetting,
                Kind.hinted,
                data_type=s.dtype,
                units=s.unit or None,
                limits=s.limits,
                doc=s.doc or f"setting {s.name} of legacy instrument {self.instrument_id}",
            )
        for p, info in self.config.items():
            add(
                self.config_attrs[p],
                p,
                LegacySetting if info.settable else LegacySignal,
                Kind.config,
                data_type=info.dtype,
                units=info.unit or None,
                limits=info.limits,
                doc=info.doc or f"setting {p} of legacy instrument {self.instrument_id}",
            )
        # The fields' order is the native device's component order, which orders its readings
        # (and a CSV export's columns).
        order = [a for f in self.fields.values() for a in (f.attr, f.setpoint) if a in cpts]
        return {a: cpts[a] for a in [*order, *(a for a in cpts if a not in order)]}


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
        elif f.kind not in Kind.__members__ or f.dtype not in (None, *_RECORDED_DTYPES):
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


# --- the device --------------------------------------------------------------------------------


class LegacyDevice(Device):
    """A legacy instrument as an ophyd device: Readable, Triggerable, Configurable, Stoppable,
    Subscribable (``bps.monitor``), and Movable when it has a settable parameter.

    ``read_mode='fresh'``: ``trigger()`` asks the instrument now (``Command.query`` of each channel
    that is a queryable parameter; other channels wait for their next published measurement).
    ``read_mode='latest'``: the latest published measurement of each channel, no traffic.
    ``settable`` names the parameter ``set()`` changes (default: the one read channel that is
    settable, if exactly one; ``False``: never movable). ``channels`` selects what is read (e.g.
    one Elliptec mount ``['position_2']``). Every settable parameter among the components is a
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

    _legacy_layout: _Layout | None = None
    driver_stack = "legacy"
    """Which driver stack reads this device (run metadata and the legacy-only plans ask this,
    not the class)."""

    def __new__(cls, legacy_runtime: LegacyRuntime, instrument_id: str, **kwargs: Any):
        if cls._legacy_layout is not None:  # already a per-instrument class
            return super().__new__(cls)
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
        bases: tuple[type, ...] = (_Movable, cls) if layout.settable is not None else (cls,)
        attrs: dict[str, Any] = {
            "_legacy_layout": layout,
            "__module__": cls.__module__,
            "__qualname__": f"{cls.__qualname__}[{instrument_id}]",
            "__doc__": cls.__doc__,
            **layout.components(),
        }
        ident = re.sub(r"\W", "_", str(instrument_id))
        sub = type(f"{cls.__name__}_{ident}", bases, attrs)
        return super().__new__(sub)

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
        **kwargs: Any,
    ) -> None:
        name = name or instrument_id
        layout = type(self)._legacy_layout
        assert layout is not None
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
        super().__init__("", name=name, **kwargs)
        self.legacy_runtime = legacy_runtime
        self.instrument_id = instrument_id
        self.read_mode: ReadMode = read_mode
        self.stop_command = stop_command
        self._layout = layout
        # Not ``_signals``: ophyd keeps its components by attribute there, and replacing it made
        # every access to a component whose attribute differs from its channel a new object.
        self._channel_signals = {ch: getattr(self, a) for ch, a in layout.channel_attrs.items()}
        self._config_signals = {p: getattr(self, a) for p, a in layout.config_attrs.items()}
        self._settable_signal = (
            getattr(self, layout.settable_attr) if layout.settable_attr else None
        )
        for f in layout.fields.values():
            if f.key is not None:
                getattr(self, f.attr).name = f"{name}_{f.key}" if f.key else name
        # parameter -> the component holding the target of its last accepted set
        self._setpoints: dict[str, LegacySignal] = {
            n: getattr(self, f.setpoint) for n, f in layout.fields.items() if f.setpoint
        }

        # Instrument name -> the component showing it (a channel, the settable, a setting).
        self._shown: dict[str, LegacySignal] = {**self._channel_signals, **self._config_signals}
        if layout.settable is not None and self._settable_signal is not None:
            self._shown.setdefault(layout.settable.name, self._settable_signal)
        for n, sp in self._setpoints.items():
            self._shown[n].setpoint_signal = sp
        # Channels read at every point; a channel shown as configuration (the MaiTai's warm-up)
        # or not recorded at all is kept current by the stream but not waited for by a trigger.
        self._read_channels = [
            c
            for c in layout.channels
            if layout.kind_of(c, Kind.normal) not in (Kind.config, Kind.omitted)
        ]
        self._shown_at: dict[str, float] = {}
        self._setpoint_at: dict[str, float] = {}
        self._show_lock = threading.RLock()
        # queryable channels are asked in 'fresh' mode; the others wait for the stream
        params = legacy_runtime.instruments[instrument_id].parameters()
        self._queried = [c for c in self._read_channels if c in params and params[c].queryable]
        # Channels that cannot be queried are taken from the stream: a fresh trigger waits for
        # their next measurement, unless the instrument is not polled (it may never publish
        # again), where the latest one is used.
        rate = legacy_runtime.health().get(instrument_id, {}).get("polling_rate_hz") or 0
        self._streamed = [c for c in self._read_channels if c not in self._queried and rate > 0]
        self._unpolled = [
            c for c in self._read_channels if c not in self._queried and c not in self._streamed
        ]
        self._lock = threading.Lock()
        self._latest: dict[str, Measurement] = {}
        self._waiters: list[_StreamWaiter] = []
        self._monitors: dict[int, Callable[..., Any]] = {}
        self._monitor_ids = itertools.count(1_000_000)
        self._monitor_lock = threading.RLock()
        self._pending: dict[str, Measurement] = {}
        self._connected = False
        self.last_stop_result: CommandResult | None = None
        self._subscription = legacy_runtime.distributor.subscribe(
            self._on_measurement,
            maxsize=queue_size,
            name=f"legacy-adapter:{name}:{uuid.uuid4().hex[:8]}",
            instrument_ids=[instrument_id],
            channels=list(layout.channels),
        )
        self._refresh_settings_async()

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
        """The parameters among the components that ``bps.mv`` can set (LegacySetting)."""
        return [n for n, sig in self._shown.items() if isinstance(sig, LegacySetting)]

    @property
    def dropped(self) -> int:
        """Measurements discarded because this device's stream queue was full."""
        return self._subscription.dropped

    def signal_for(self, channel: str) -> LegacySignal:
        """The component holding ``channel`` (or the settable parameter)."""
        if channel in self._channel_signals:
            return self._channel_signals[channel]
        if self._layout.settable is not None and channel == self._layout.settable.name:
            assert self._settable_signal is not None
            return self._settable_signal
        if channel in self._config_signals:
            return self._config_signals[channel]
        raise KeyError(f"{self.name} has no channel or setting {channel!r}")

    # --- lifecycle ---------------------------------------------------------------------------

    def connect(self, timeout: float | None = None) -> None:
        """Wait for the legacy instrument to run, then read its settings (blocking: call it when
        building devices, never inside a plan)."""
        timeout = self._timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        state = None
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
            time.sleep(0.01)
        settings = set(self._config_signals)
        if self._layout.settable is not None:
            settings.add(self._layout.settable.name)
        for p in self._queried_at_start():
            result = self.legacy_runtime.submit(
                self.instrument_id, Command.query(p), timeout=max(0.1, deadline - time.monotonic())
            )
            if result.ok:
                self._store_setting(p, result.value)
            elif p in settings:
                raise _error_of(result, self.instrument_id, f"reading {p} at connect")
            else:  # a channel: its next poll or trigger reports it; no reason to refuse to start
                log.info("%s: reading %s at connect failed: %s", self.name, p, result.message)
        self._connected = True

    def _queried_at_start(self) -> list[str]:
        """Everything shown that the instrument can be asked for, so no component shows its
        placeholder (a shutter 0 that nobody measured) once the device is connected. The
        settings come last: whoever waits for them has every answer."""
        params = self._layout.parameters
        names = [
            n
            for n in self._shown
            if n not in self._config_signals and n in params and params[n].queryable
        ]
        return names + [n for n in self._config_signals if n not in names]

    def _refresh_settings_async(self) -> None:
        """Ask for the settings without waiting, so configuration is filled in even when nobody
        calls ``connect()`` (a builder that only constructs devices). Failures are left to
        ``connect()``/the next set to report: the instrument may not be running yet."""

        def store(name: str, fut: Future) -> None:
            try:
                result = fut.result()
            except CancelledError:
                return
            if result.ok:
                self._store_setting(name, result.value)
            else:
                log.debug("%s: reading %s failed: %s", self.name, name, result.message)

        for p in self._queried_at_start():
            fut = self.legacy_runtime.submit_future(self.instrument_id, Command.query(p))
            fut.add_done_callback(lambda f, p=p: store(p, f))

    @property
    def connected(self) -> bool:  # type: ignore[override]
        return self._connected and not self._subscription.closed

    def close(self) -> None:
        """Stop listening to the instrument's stream (the legacy runtime keeps running it)."""
        self._subscription.close()
        self._connected = False

    def destroy(self) -> None:
        self.close()
        super().destroy()

    # --- reading -----------------------------------------------------------------------------

    def trigger(self) -> StatusBase:
        """Refresh the readings off the loop; the status finishes when every channel is new."""
        status = DeviceStatus(self)
        if self.read_mode == "latest":
            self._apply_latest()
            finish_status(status)
            return status
        if self._unpolled:
            with self._lock:
                latest = [self._latest[c] for c in self._unpolled if c in self._latest]
            for m in latest:
                self._store_measurement(m)
        op = _Operation(self, status, len(self._queried) + len(self._streamed), "trigger")
        if self._streamed:
            since = time.time()
            with self._lock:
                self._waiters.append(_StreamWaiter(op, set(self._streamed), since))
        for ch in self._queried:
            fut = self.legacy_runtime.submit_future(self.instrument_id, Command.query(ch))
            op.futures.append(fut)
            fut.add_done_callback(lambda f, ch=ch: self._queried_done(op, ch, f))
        op.arm(self._timeout)
        return status

    def read(self) -> dict[str, dict[str, Any]]:
        if self.read_mode == "latest":
            self._apply_latest()
        return super().read()

    def _queried_done(self, op: _Operation, channel: str, fut: Future) -> None:
        result = op.result_of(fut, f"query {channel}")
        if result is None:
            return
        try:
            value = self._recorded(channel, result.value)
        except ValueError as exc:
            op.fail(
                LegacyInstrumentError(
                    f"query {channel} returned {result.value!r}: {exc}",
                    instrument=self.instrument_id,
                    fix="the driver's query and its ChannelInfo dtype disagree; report it.",
                )
            )
            return
        self._show(channel, value, time.time())
        op.one_done()

    def _apply_latest(self) -> None:
        with self._lock:
            latest = list(self._latest.values())
        for m in latest:
            self._store_measurement(m)

    def _recorded(self, name: str, value: Any) -> Any:
        """An instrument's value as its component records it: through the field's codes (the
        instrument's own code for the same state), then as the component's dtype. Raises
        ValueError when it cannot be one."""
        f = self._layout.fields.get(name)
        if f is not None and f.codes is not None:
            value = f.codes.get(value, value)
        sig = self._shown.get(name)
        return _coerce(value, sig._data_type if sig is not None else "string")

    def _instrument_value(self, name: str, value: Any) -> Any:
        """A recorded value as the instrument's (the inverse of the field's codes)."""
        f = self._layout.fields.get(name)
        if f is None or f.codes is None or isinstance(value, bool | str):
            return value  # a name is the instrument's own; True is no code
        for ours, recorded in f.codes.items():
            if recorded == value:
                return ours
        return value

    def _store_measurement(self, m: Measurement) -> bool:
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
        return True

    def _store_setting(self, name: str, value: Any) -> None:
        """Show a value the instrument answered to a query (or a set) just now."""
        sig = self._shown.get(name)
        if sig is None:
            return
        try:
            value = self._recorded(name, value)
        except ValueError:
            value = str(value)
        self._show(name, value, time.time())

    def _show(self, name: str, value: Any, timestamp: float) -> None:
        """The one place a component's value changes: only to something the instrument
        reported, and never back to an older report (a poll taken before a set's read-back
        can be delivered after it). The lock covers the update so two reports cannot cross."""
        sig = self._shown.get(name)
        if sig is None:
            return
        with self._show_lock:
            if timestamp < self._shown_at.get(name, -math.inf):
                return
            self._shown_at[name] = timestamp
            sig.update(value, timestamp=timestamp)
            if name in self._setpoints and name not in self._setpoint_at:
                # Before any set the target is where the instrument is (as the native
                # positioners start), so the first event's setpoint is a reported value.
                self._setpoint_at[name] = timestamp
                self._setpoints[name].update(value, timestamp=timestamp)

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
            self._setpoint_at[name] = timestamp
            sp.update(value, timestamp=timestamp)

    # --- the measurement stream ------------------------------------------------------------

    def _on_measurement(self, m: Measurement) -> None:
        """Runs on the distributor's delivery thread of this device. The component is updated
        first, so a trigger this measurement completes reads it."""
        self._store_measurement(m)
        done: list[_StreamWaiter] = []
        with self._lock:
            self._latest[m.channel] = m
            for w in self._waiters:
                if m.channel in w.channels and m.timestamp >= w.since and not w.op.done:
                    w.channels.discard(m.channel)
                    w.got.append(m)
                    if not w.channels:
                        done.append(w)
            for w in done:
                self._waiters.remove(w)
        for w in done:
            w.op.one_done(len(w.got))
        if self._monitors:
            self._monitor_measurement(m)

    def _drop_waiters(self, op: _Operation) -> None:
        with self._lock:
            self._waiters = [w for w in self._waiters if w.op is not op]

    # --- monitors (bps.monitor) -------------------------------------------------------------

    def subscribe(self, callback: Callable[..., Any], event_type: str | None = None, run=True):
        """``event_type`` None (what ``bps.monitor`` uses): ``callback(readings)`` for every
        measurement of the stream, from the stream's thread. Other event types: ophyd's own."""
        if event_type not in (None, SUB_READINGS):
            return super().subscribe(callback, event_type=event_type, run=run)
        if not callable(callback):
            raise ValueError("callback must be callable")
        with self._monitor_lock:
            cid = next(self._monitor_ids)
            if not self._monitors:
                self._pending = {}
            self._monitors[cid] = callback
            if run:
                with self._lock:
                    have = dict(self._latest)
                if have:
                    callback(self._readings(have))
        return cid

    def subscribe_reading(self, function: Callable[[dict[str, Any]], None]) -> None:
        """bluesky's ``Subscribable`` as bluesky 1.16 names it (``bps.monitor`` calls it when it
        is there): the same readings as ``subscribe(function)``."""
        self.subscribe(function)

    def clear_sub(self, cb: Callable[..., Any], event_type: str | None = None) -> None:
        if event_type in (None, SUB_READINGS):
            with self._monitor_lock:
                mine = [cid for cid, f in self._monitors.items() if f == cb]
                if mine and self._pending and len(self._monitors) == len(mine):
                    self._emit(dict(self._pending))  # the last partial set is not lost
                    self._pending = {}
                for cid in mine:
                    del self._monitors[cid]
        if event_type != SUB_READINGS:
            super().clear_sub(cb, event_type=event_type)

    def unsubscribe(self, cid: int) -> None:
        with self._monitor_lock:
            if self._monitors.pop(cid, None) is not None:
                return
        super().unsubscribe(cid)

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

    def _readings(self, measurements: dict[str, Measurement]) -> dict[str, dict[str, Any]]:
        """A readings dict with the keys of ``describe()``: the measurements given, and the
        latest known value (with its own, older, timestamp) of every other channel."""
        with self._lock:
            latest = dict(self._latest)
        readings = {}
        for key, reading in super().read().items():
            readings[key] = dict(reading)
        for ch in self._read_channels:
            sig = self._channel_signals[ch]
            m = measurements.get(ch) or latest.get(ch)
            if m is None:
                continue
            try:
                value = self._recorded(ch, m.value)
            except ValueError:
                value = m.value
            readings[sig.name] = {"value": value, "timestamp": m.timestamp}
        return readings

    # --- configuration -----------------------------------------------------------------------

    def refresh_configuration(self, timeout: float | None = None) -> None:
        """Query every setting again (blocking: between plans, not inside one)."""
        for p in self._config_signals:
            result = self.legacy_runtime.submit(
                self.instrument_id, Command.query(p), timeout=timeout or self._timeout
            )
            if not result.ok:
                raise _error_of(result, self.instrument_id, f"query {p}")
            self._store_setting(p, result.value)

    # --- setting parameters -------------------------------------------------------------------

    def parameter_limits(self, name: str) -> tuple[float, float] | None:
        """The driver's limits of ``name``, narrowed by ``<name>_limits`` on this device."""
        info = self._layout.parameters.get(name)
        limits = info.limits if info is not None else None
        # The instance dict, not getattr: a miss through ophyd's Device.__getattr__ costs 1 us
        # on every set, and the runtime sets these as plain attributes.
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

    def _check_parameter(self, name: str, value: Any) -> Any:
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

    def _set_parameter(
        self, name: str, value: Any, *, obj: Any, timeout: float | None = None
    ) -> StatusBase:
        """Command ``name`` on the instrument; the status of ``obj`` finishes when the
        instrument reports the target. Values are validated before anything is sent."""
        target = self._check_parameter(name, value)
        info = self._layout.parameters[name]
        status = DeviceStatus(obj)
        what = f"set {info.name}={target!r}"
        op = _Operation(self, status, 1, what)
        fut = self.legacy_runtime.submit_future(self.instrument_id, Command.set(info.name, target))
        op.futures.append(fut)
        fut.add_done_callback(lambda f: self._set_done(op, info, target, f))
        op.arm(self._set_timeout if timeout is None else timeout)
        return status

    def _set_done(self, op: _Operation, info: ParameterInfo, target: Any, fut: Future) -> None:
        if op.done:
            return
        try:
            result = fut.result()
        except CancelledError:
            return
        if not result.ok:
            # The instrument may have done part of it (a move stopped half way): show what it
            # reports now before the status fails, so a plan's next read is the truth.
            self._fail_after_readback(
                op, info, _error_of(result, self.instrument_id, f"set {info.name}={target!r}")
            )
            return
        self._show_setpoint(info.name, target, time.time())
        if not info.queryable:
            # Nothing to read back: the driver's own confirmation is the only report. Without
            # one the component keeps the instrument's last report, never the commanded value.
            if result.value is not None:
                self._store_setting(info.name, result.value)
            op.one_done()
            return
        op.settle_until = time.monotonic() + self._settle_timeout
        self._ask_readback(op, info, target)

    def _ask_readback(self, op: _Operation, info: ParameterInfo, target: Any) -> None:
        if op.done:
            return
        query = self.legacy_runtime.submit_future(self.instrument_id, Command.query(info.name))
        op.futures.append(query)
        query.add_done_callback(lambda f: self._readback_done(op, info, target, f))

    def _fail_after_readback(self, op: _Operation, info: ParameterInfo, error: Any) -> None:
        if not info.queryable:
            op.fail(error)
            return

        def show_then_fail(fut: Future) -> None:
            try:
                result = fut.result()
            except CancelledError:
                result = None
            if result is not None and result.ok:
                self._store_setting(info.name, result.value)
            op.fail(error)

        query = self.legacy_runtime.submit_future(self.instrument_id, Command.query(info.name))
        op.futures.append(query)
        query.add_done_callback(show_then_fail)

    def _readback_done(self, op: _Operation, info: ParameterInfo, target: Any, fut: Future) -> None:
        result = op.result_of(fut, f"read-back of {info.name}")
        if result is None:
            return
        got = result.value
        note = f" ({result.message})" if result.message else ""
        self._store_setting(info.name, got)  # what the instrument reports, reached or not
        if not self._matches(info, target, got):
            if time.monotonic() + READBACK_INTERVAL_S <= op.settle_until:
                # Asked again from the shared deadline thread: no thread, no wait on a worker.
                _DEADLINES.schedule(
                    READBACK_INTERVAL_S, lambda: self._ask_readback(op, info, target)
                )
                return
            op.fail(
                SetNotConfirmed(
                    f"set {info.name} to {target!r}{info.unit and ' ' + info.unit}, but the "
                    f"instrument reports {got!r}{note}",
                    instrument=self.name,
                    resource=f"legacy:{self.instrument_id}",
                    fix="the instrument may be in local mode, interlocked or unable to reach the "
                    f"value; check it, or give the adapter a tolerance for {info.name!r} if the "
                    "difference is expected (the instrument's resolution).",
                )
            )
            return
        op.one_done()

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

    def stop(self, *, success: bool = False) -> None:
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


class _Movable:
    """``set``/``position``/``locate`` of a LegacyDevice whose instrument has a settable
    parameter (mixed in only then, so Movable is true exactly when moving is possible)."""

    def check_value(self: Any, value: Any) -> Any:
        """Validate against the parameter's ParameterInfo before anything is sent."""
        return self._check_parameter(self._layout.settable.name, value)

    def set(self: Any, value: Any, *, timeout: float | None = None, **kwargs: Any) -> StatusBase:
        """Set the parameter on the legacy worker; the status finishes when the instrument has
        confirmed it (result ok and, if it can be queried, the read-back matches)."""
        return self._set_parameter(self._layout.settable.name, value, obj=self, timeout=timeout)

    @property
    def limits(self: Any) -> tuple[float, float]:
        """The lab's soft limits of the settable parameter in ophyd's convention ((0, 0):
        none), as the native positioners give them; the driver's are enforced on every set."""
        limits = self.described_limits(self._layout.settable.name)
        return limits if limits is not None else (0, 0)

    @property
    def position(self: Any) -> Any:
        """The last value of the settable parameter the instrument reported."""
        return self._settable_signal.get()

    def locate(self: Any) -> dict[str, Any]:
        value = self._settable_signal.get()
        return {"setpoint": value, "readback": value}


# --- one operation (trigger or set) in flight ---------------------------------------------------


class _Operation:
    """Counts the parts of one trigger/set, fails it once, and keeps its deadline."""

    __slots__ = (
        "device",
        "status",
        "remaining",
        "what",
        "futures",
        "done",
        "settle_until",
        "_lock",
        "_deadline",
    )

    def __init__(self, device: LegacyDevice, status: StatusBase, parts: int, what: str) -> None:
        self.device = device
        self.status = status
        self.remaining = parts
        self.what = what
        self.futures: list[Future] = []
        self.done = parts == 0
        self.settle_until = 0.0
        self._lock = threading.Lock()
        self._deadline: int | None = None
        if self.done:
            finish_status(status)

    def arm(self, timeout: float) -> None:
        if self.done:
            return
        self._deadline = _DEADLINES.schedule(timeout, lambda: self._expire(timeout))
        if self.done:  # finished while arming
            _DEADLINES.cancel(self._deadline)

    def _expire(self, timeout: float) -> None:
        dev = self.device
        busy = dev.legacy_runtime.health().get(dev.instrument_id, {})
        doing = (
            f"busy in {busy['activity']} for {busy['busy_for']} s"
            if busy.get("activity")
            else f"state {busy.get('state')}"
        )
        self.fail(
            InstrumentTimeout(
                f"{self.what} did not finish within {timeout:g} s (legacy instrument "
                f"{dev.instrument_id!r}: {doing}).",
                instrument=dev.name,
                resource=f"legacy:{dev.instrument_id}",
                fix="check that the instrument answers; give long actions a longer "
                "timeout/set_timeout.",
            )
        )
        for f in self.futures:
            f.cancel()  # still queued: withdrawn, never sent late

    def result_of(self, fut: Future, what: str) -> CommandResult | None:
        """The command's result if the operation is still on, else None (already failed)."""
        if self.done:
            return None
        try:
            result = fut.result()
        except CancelledError:
            return None
        if not result.ok:
            self.fail(_error_of(result, self.device.instrument_id, what))
            return None
        return result

    def one_done(self, n: int = 1) -> None:
        with self._lock:
            if self.done:
                return
            self.remaining -= n
            finished = self.remaining <= 0
            if finished:
                self.done = True
        if finished:
            if self._deadline is not None:
                _DEADLINES.cancel(self._deadline)
            finish_status(self.status)

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.done:
                return
            self.done = True
        if self._deadline is not None:
            _DEADLINES.cancel(self._deadline)
        self.device._drop_waiters(self)
        fail_status(self.status, exc)


@dataclass
class _StreamWaiter:
    op: _Operation
    channels: set[str]
    since: float
    got: list[Measurement] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.got = []
