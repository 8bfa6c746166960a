"""The lab's devices as caproto PV groups: one IOC serving every configured instrument.

Why it is built this way:

* The PV layout is derived from the ophyd interfaces of the devices the runtime built, not from
  per-driver tables: a positioner becomes a motor record (``<P><id>``) and its settings plain PVs
  beside it (``<P><id>:<setting>``); the signals of any other device become plain PVs
  (``<P><id>:<component>``) with the units, precision and limits of their descriptors; a
  sub-positioner (the native MaiTai's ``wavelength``), or a device's hinted read-write number with
  limits (the legacy MaiTai's ``wavelength``), becomes a motor record at ``<P><id>:<component>``.
  So a new driver is served without touching the IOC, and the names do not depend on the stack.
* Writability is the signal's type, never its class name: a PV is writable exactly when its
  signal is read-write (ophyd's ``write_access``: the drivers' settings and the legacy adapter's
  ``LegacySetting``), so a client cannot "write" a power reading, and a renamed setting class
  stays writable. A write shows what the instrument reported afterwards (the signal's read-back),
  never the commanded value.
* A signal is served once: when a device's signal is the position of another device's motor
  record (the legacy Elliptec bus and its per-mount adapters), only the motor record serves it,
  so the bus is not served on either stack and the mounts are the same motors on both.
* Fresh values come from two places: the IOC's own periodic ``trigger()`` of each detector (the
  ``--poll-period``), and any value the device stores from its worker thread (pushed to the PV at
  once, see :class:`~daqbridge.ioc._link.Pusher`). A client that wants a reading taken for it
  puts 1 to ``<P><id>:Trigger`` with put-completion (what :mod:`daqbridge.devices.epics` does in
  ``trigger()``), like areaDetector's ``Acquire``.
* Every device call goes through the device, hence through the port leases of the resource
  managers: a CA client and the IOC's own polling never interleave bytes on a shared port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from caproto import AlarmSeverity, AlarmStatus, ChannelAlarm, ChannelType
from caproto.server import PVGroup, pvproperty

from daqbridge.errors import ConfigError, DaqbridgeError, InstrumentError
from daqbridge.ioc._async import (
    AsyncDeviceAdapter,
    AsyncPositionerAdapter,
    AsyncSignalAdapter,
    served_device,
)
from daqbridge.ioc._link import Bridge, Pusher
from daqbridge.ioc._motor import MotorRecord, PositionerLink

log = logging.getLogger("daqbridge.ioc")

DEFAULT_PREFIX = "DAQ:"
DEFAULT_POLL_PERIOD = 1.0
STRING_LENGTH = 256
"""Text PVs are CHAR waveforms of this length (areaDetector's convention for long strings):
DBR_STRING would cut them at 40 characters. Clients read them with ``string=True``."""
LAYOUT_LENGTH = 8192
WRITE_TIMEOUT = 60.0
"""Seconds a settings write (wavelength of the meter, SCPI source level) may take."""


# --- what is served ------------------------------------------------------------------------


@dataclass
class SignalPV:
    """One plain PV: a device signal (or a legacy parameter) at ``<P><id><suffix>``."""

    attr: str
    suffix: str
    signal: Any
    dtype: str
    units: str = ""
    precision: int | None = None
    limits: tuple[float, float] | None = None
    shape: tuple[int, ...] = ()
    kind: str = "normal"
    writable: bool = False
    """Clients may write it: the signal is read-write (:func:`is_writable`)."""
    doc: str = ""
    source: str = ""

    @property
    def length(self) -> int:
        if self.dtype == "string":
            return STRING_LENGTH
        if self.dtype == "array":
            n = 1
            for d in self.shape:
                n *= max(1, int(d))
            return max(1, n)
        return 1

    def to_pv(self, value: Any) -> Any:
        """A device value as this PV's type (NaN/0/'' when the device has none yet)."""
        if hasattr(value, "item") and getattr(value, "shape", None) == ():
            value = value.item()
        if self.dtype == "number":
            try:
                return float(value)
            except (TypeError, ValueError):
                return math.nan
        if self.dtype in ("integer", "boolean"):
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0
        if self.dtype == "string":
            return "" if value is None else str(value)[: STRING_LENGTH - 1]
        try:
            items = [float(v) for v in list(value)[: self.length]]
        except (TypeError, ValueError):
            items = []
        return items or [0.0]

    def from_pv(self, value: Any) -> Any:
        """A client's value as the device expects it."""
        if isinstance(value, list | tuple) and len(value) == 1 and self.dtype != "array":
            value = value[0]
        if hasattr(value, "item") and getattr(value, "shape", None) == ():
            value = value.item()
        if self.dtype == "boolean":
            return bool(value)
        if self.dtype == "integer":
            return int(value)
        return value

    def layout(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "pv": self.suffix,
            "dtype": self.dtype,
            "kind": self.kind,
            "writable": self.writable,
        }
        if self.units:
            entry["units"] = self.units
        if self.limits is not None:
            entry["limits"] = list(self.limits)
        if self.source:
            entry["source"] = self.source
        return entry


def _kind_name(kind: Any) -> str:
    from ophyd import Kind

    if (kind & Kind.hinted) == Kind.hinted:
        return "hinted"
    if kind & Kind.normal:
        return "normal"
    if kind & Kind.config:
        return "config"
    return "omitted"


def _describe(sig: Any) -> dict[str, Any]:
    try:
        return dict(sig.describe().get(sig.name, {}) or {})
    except Exception:  # noqa: BLE001 - a signal that cannot describe itself is served as text
        return {"dtype": "string"}


def is_writable(sig: Any) -> bool:
    """Whether clients may write ``sig``: its type is read-write (ophyd's ``write_access``).

    Read-only are ``SignalRO``, the drivers' readings and identities (``InstrumentSignal``
    unless ``writable``) and the legacy adapter's measured channels; read-write are the drivers'
    settings and every ``LegacySetting``.
    """
    return bool(getattr(sig, "write_access", False))


def source_of(sig: Any) -> str:
    """The descriptor's ``source`` (instrument, port, command): what identifies a signal across
    the devices that show it (a legacy bus and its per-mount adapters)."""
    return str(_describe(sig).get("source") or "")


def signal_pv(attr: str, sig: Any, *, suffix: str) -> SignalPV:
    desc = _describe(sig)
    dtype = desc.get("dtype", "number")
    if dtype not in ("number", "integer", "boolean", "string", "array"):
        dtype = "string"
    control = (desc.get("limits") or {}).get("control") or {}
    limits = None
    if "low" in control and "high" in control:
        with contextlib.suppress(TypeError, ValueError):
            limits = (float(control["low"]), float(control["high"]))
    shape = tuple(desc.get("shape") or ())
    if dtype == "array" and not shape:
        with contextlib.suppress(TypeError):
            shape = (len(sig.get()),)
    return SignalPV(
        attr=attr,
        suffix=suffix,
        signal=sig,
        dtype=dtype,
        units=str(desc.get("units") or ""),
        precision=desc.get("precision"),
        limits=limits,
        shape=shape,
        kind=_kind_name(sig.kind),
        writable=is_writable(sig),
        doc=str(getattr(sig, "__doc__", "") or "")[:100],
        source=str(desc.get("source") or ""),
    )


def _is_moved_quantity(spec: SignalPV) -> bool:
    """A device's hinted read-write number with limits is what the device moves (the legacy
    MaiTai's wavelength): a motor record, like the native driver's positioner."""
    return (
        spec.writable
        and spec.kind == "hinted"
        and spec.dtype in ("number", "integer")
        and spec.limits is not None
    )


# --- plain PV groups -----------------------------------------------------------------------


class DeviceGroup(PVGroup):
    """The plain PVs of one (non-positioner) device, plus ``:Trigger``, ``:Status``, ``:Layout``."""

    trigger_pv = pvproperty(
        name=":Trigger",
        value=0,
        dtype=ChannelType.LONG,
        doc="Put 1 (with put-completion) to take a fresh reading; completes when it is stored; "
        "reads -1 after a failed reading (see :Status)",
    )
    status_pv = pvproperty(
        name=":Status",
        value="OK",
        dtype=ChannelType.CHAR,
        max_length=STRING_LENGTH,
        read_only=True,
        doc="OK, or the last error of this device",
    )
    layout_pv = pvproperty(
        name=":Layout",
        value="{}",
        dtype=ChannelType.CHAR,
        max_length=LAYOUT_LENGTH,
        read_only=True,
        doc="JSON: this device's PVs, their types, units and writability",
    )

    specs: tuple[SignalPV, ...] = ()
    spec_attrs: dict[str, SignalPV] = {}  # noqa: RUF012 - set per generated subclass

    def __init__(
        self,
        *args: Any,
        device: Any,
        device_id: str,
        bridge: Bridge,
        pusher: Pusher,
        poll_period: float = 0.0,
        errors: Callable[[str, BaseException], None] | None = None,
        layout: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.device = device
        self.device_id = device_id
        self.bridge = bridge
        self.pusher = pusher
        self.poll_period = poll_period
        self.errors = errors
        self.layout = layout or {}
        self.channels: dict[str, Any] = {}  # attr -> ChannelData
        for pv_attr, spec in self.spec_attrs.items():
            channel = getattr(self, pv_attr)
            # each reading its own alarm: a group's PVs share one otherwise, reset by any write
            channel.alarm = ChannelAlarm()
            self.channels[spec.attr] = channel
        self._busy = asyncio.Lock()
        self._subscriptions: list[tuple[Any, Any]] = []
        self.triggerable = _overrides(device, "trigger")
        self.triggers = 0

    def spec_of(self, channel: Any) -> SignalPV:
        for spec in self.specs:
            if self.channels.get(spec.attr) is channel:
                return spec
        raise KeyError(channel.pvname)

    # --- values --------------------------------------------------------------------------

    async def prime(self) -> None:
        await self.layout_pv.write(json.dumps(self.layout)[: LAYOUT_LENGTH - 1])
        for spec in self.specs:
            channel = self.channels[spec.attr]
            with contextlib.suppress(Exception):
                await channel.write(spec.to_pv(spec.signal.get()), verify_value=False)

    def subscribe(self) -> None:
        """Values the device stores (from any thread) reach the PVs at once."""
        for spec in self.specs:
            channel = self.channels[spec.attr]

            def changed(
                value: Any = None, timestamp: float | None = None, _s=spec, _c=channel, **_
            ):
                self.pusher.push(_c, _s.to_pv(value), timestamp)

            with contextlib.suppress(Exception):
                cid = spec.signal.subscribe(changed, run=False)
                self._subscriptions.append((spec.signal, cid))

    def unsubscribe(self) -> None:
        subs, self._subscriptions = self._subscriptions, []
        for sig, cid in subs:
            with contextlib.suppress(Exception):
                sig.unsubscribe(cid)

    async def refresh(self) -> None:
        """Trigger the device (off the loop) and wait until its fresh values are stored."""
        async with self._busy:
            if self.triggerable:
                status = await self.bridge.call(self.device.trigger)
                await self.bridge.wait(
                    status, timeout=WRITE_TIMEOUT, what=f"{self.device_id} trigger"
                )
                self.triggers += 1
            await self._publish_all()

    async def _publish_all(self) -> None:
        for spec in self.specs:
            channel = self.channels[spec.attr]
            value = spec.to_pv(spec.signal.get())
            ts = getattr(spec.signal, "timestamp", None)
            await channel.write(value, verify_value=False, **({"timestamp": ts} if ts else {}))

    async def refresh_reported(self, failure: str) -> int:
        """Refresh the device for a put: 0 when done, -1 with the reason in :Status on failure."""
        try:
            await self.refresh()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported in :Status and the alarms
            await self.report(exc, failure)
            return -1
        await self.report(None)
        return 0

    async def report(self, exc: BaseException | None, what: str = "") -> None:
        if exc is None:
            if self.status_pv.value != "OK":
                await self.status_pv.write("OK")
                await self._alarm_all(None)
            return
        text = f"{what}: {exc}" if what else str(exc)
        log.warning("%s: %s", self.device_id, text)
        if self.errors is not None:
            self.errors(self.device_id, exc)
        await self.status_pv.write(text[: STRING_LENGTH - 1])
        await self._alarm_all(exc)

    async def _alarm_all(self, exc: BaseException | None) -> None:
        for spec in self.specs:
            if spec.kind == "config":
                continue
            alarm = self.channels[spec.attr].alarm
            if exc is None:
                if alarm.severity != AlarmSeverity.NO_ALARM:
                    await alarm.write(status=AlarmStatus.NO_ALARM, severity=AlarmSeverity.NO_ALARM)
            else:
                await alarm.write(status=AlarmStatus.READ, severity=AlarmSeverity.INVALID_ALARM)

    async def write_setting(self, channel: Any, value: Any) -> Any:
        spec = self.spec_of(channel)
        target = spec.from_pv(value)
        try:
            status = await self.bridge.call(spec.signal.set, target)
            await self.bridge.wait(
                status, timeout=WRITE_TIMEOUT, what=f"{channel.pvname} = {target!r}"
            )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await self.report(exc, f"write {channel.pvname} = {target!r} failed")
            raise
        await self.report(None)
        # The PV shows what the instrument reported (the signal holds the read-back once the
        # set is done), never the commanded value: a shutter that did not close must not read 0.
        return spec.to_pv(spec.signal.get())

    # --- hooks -----------------------------------------------------------------------------

    @trigger_pv.putter
    async def trigger_pv(self, instance: Any, value: int) -> int:
        """Completes when the reading is stored: 0, or -1 when it failed (reason in :Status).

        A failure does not fail the put: caproto's client ignores a failed put-completion, so
        ophyd would wait forever; the client reads :Status instead (daqbridge.devices.epics).
        """
        if not value:
            return 0
        return await self.refresh_reported("trigger failed")

    @trigger_pv.startup
    async def trigger_pv(self, instance: Any, async_lib: Any) -> None:
        """The IOC's own periodic reads (``--poll-period``), skipped while a client's runs."""
        self.subscribe()
        try:
            if self.poll_period <= 0 or not self.triggerable:
                await asyncio.Event().wait()  # nothing to poll: stay until the server stops
            while True:
                await asyncio.sleep(self.poll_period)
                if self._busy.locked():
                    continue
                try:
                    await self.refresh()
                except asyncio.CancelledError:
                    raise
                except BaseException as exc:  # noqa: BLE001 - shown in :Status and the alarm
                    await self.report(exc, "periodic read failed")
                else:
                    await self.report(None)
        finally:
            self.unsubscribe()


def _overrides(device: Any, method: str) -> bool:
    """True when the device's class implements ``method`` itself (not ophyd's no-op default)."""
    from ophyd.device import BlueskyInterface

    impl = getattr(type(device), method, None)
    return impl is not None and impl is not getattr(BlueskyInterface, method, None)


def _setting_putter() -> Any:
    async def put(group: DeviceGroup, instance: Any, value: Any) -> Any:
        return await group.write_setting(instance, value)

    return put


def _pv_property(spec: SignalPV) -> pvproperty:
    kw: dict[str, Any] = {"name": spec.suffix, "read_only": not spec.writable, "doc": spec.doc}
    if spec.dtype == "number":
        kw.update(value=0.0, dtype=ChannelType.DOUBLE, precision=int(spec.precision or 6))
    elif spec.dtype in ("integer", "boolean"):
        kw.update(value=0, dtype=ChannelType.LONG)
    elif spec.dtype == "string":
        kw.update(value="", dtype=ChannelType.CHAR, max_length=STRING_LENGTH)
    else:
        kw.update(value=[0.0] * spec.length, dtype=ChannelType.DOUBLE, max_length=spec.length)
    if spec.units and spec.dtype in ("number", "integer", "array"):
        kw["units"] = spec.units[:7]  # DBR units are 8 bytes
    if spec.limits is not None and spec.dtype in ("number", "integer"):
        low, high = spec.limits
        kw.update(
            lower_ctrl_limit=low, upper_ctrl_limit=high, lower_disp_limit=low, upper_disp_limit=high
        )
    prop = pvproperty(**kw)
    if spec.writable:
        prop = prop.putter(_setting_putter())
    return prop


def device_group_class(
    device_id: str, specs: Iterable[SignalPV], base: type[DeviceGroup] = DeviceGroup
) -> type[DeviceGroup]:
    """A DeviceGroup subclass with one pvproperty per spec (caproto collects them per class)."""
    specs = tuple(specs)
    spec_attrs = {f"pv_{i}": spec for i, spec in enumerate(specs)}
    body: dict[str, Any] = {"specs": specs, "spec_attrs": spec_attrs, "__module__": __name__}
    for pv_attr, spec in spec_attrs.items():
        body[pv_attr] = _pv_property(spec)
    ident = "".join(c if c.isalnum() else "_" for c in device_id)
    return type(f"{base.__name__}_{ident}", (base,), body)


# --- cameras ----------------------------------------------------------------------------------


class CameraGroup(DeviceGroup):
    """A camera: areaDetector-like ``:Acquire``/``:AcquireTime`` plus its statistics PVs.

    ``Acquire`` (put 1) writes one point into a new HDF5 file in the camera's frames directory
    (stage, trigger, unstage: the same file rules as a local plan), completes when the frame is
    on disk, and leaves the file's path in ``:FileName``. ``AcquireTime`` is in seconds, like
    areaDetector's; the camera's own ``:exposure`` setting is in ms.
    """

    acquire = pvproperty(
        name=":Acquire", value=0, dtype=ChannelType.LONG, doc="Put 1: acquire one point"
    )
    acquire_time = pvproperty(
        name=":AcquireTime", value=0.0, dtype=ChannelType.DOUBLE, precision=4, units="s"
    )
    array_counter = pvproperty(
        name=":ArrayCounter", value=0, dtype=ChannelType.LONG, read_only=True
    )
    file_name = pvproperty(
        name=":FileName",
        value="",
        dtype=ChannelType.CHAR,
        max_length=STRING_LENGTH,
        read_only=True,
    )

    async def prime(self) -> None:
        await super().prime()
        exposure = getattr(self.device, "exposure", None)
        if exposure is not None:
            with contextlib.suppress(TypeError, ValueError):
                await self.acquire_time.write(float(exposure.get()) / 1000.0, verify_value=False)

    async def refresh(self) -> None:
        async with self._busy:
            path = await self.bridge.call(self._acquire_point)
            self.triggers += 1
            await self.array_counter.write(self.array_counter.value + 1)
            await self.file_name.write(str(path or "")[: STRING_LENGTH - 1])
            await self._publish_all()

    def _acquire_point(self) -> Any:
        """IOC thread: one point into its own file (stage/trigger/unstage, as a plan would)."""
        cam = self.device
        cam.stage()
        try:
            path = getattr(cam, "file_path", None)
            status = cam.trigger()
            exposure_s = float(cam.exposure.get()) / 1000.0
            status.wait(timeout=exposure_s * 10 + WRITE_TIMEOUT)
        finally:
            cam.unstage()
        return path

    @acquire.putter
    async def acquire(self, instance: Any, value: int) -> int:
        """Like :Trigger: completes when the frame is on disk; -1 and :Status when it failed."""
        if not value:
            return 0
        return await self.refresh_reported("acquisition failed")

    @acquire_time.putter
    async def acquire_time(self, instance: Any, value: float) -> float:
        exposure = getattr(self.device, "exposure", None)
        if exposure is None:
            raise InstrumentError("this camera has no exposure setting.", instrument=self.device_id)
        status = await self.bridge.call(exposure.set, float(value) * 1000.0)
        await self.bridge.wait(status, timeout=WRITE_TIMEOUT, what="exposure")
        return float(exposure.get()) / 1000.0


# --- the IOC's own PVs ----------------------------------------------------------------------


class IocGroup(PVGroup):
    """``<P>ioc:``: is the IOC alive, what failed, and (simulated labs) what the simulators saw."""

    heartbeat = pvproperty(name="Heartbeat", value=0, dtype=ChannelType.LONG, read_only=True)
    errors = pvproperty(
        name="Errors", value=0, dtype=ChannelType.LONG, read_only=True,
        doc="Failed device operations since start",
    )  # fmt: skip
    last_error = pvproperty(
        name="LastError",
        value="",
        dtype=ChannelType.CHAR,
        max_length=STRING_LENGTH,
        read_only=True,
    )
    protocol_errors = pvproperty(
        name="ProtocolErrors",
        value=-1,
        dtype=ChannelType.LONG,
        read_only=True,
        doc="Simulated labs: malformed commands the simulators received (-1: not simulated)",
    )
    protocol_error_text = pvproperty(
        name="ProtocolErrorText",
        value="",
        dtype=ChannelType.CHAR,
        max_length=1024,
        read_only=True,
    )
    devices = pvproperty(
        name="Devices",
        value="{}",
        dtype=ChannelType.CHAR,
        max_length=LAYOUT_LENGTH,
        read_only=True,
        doc="JSON: device id -> what is served for it",
    )

    def __init__(self, *args: Any, simulation: Any = None, summary: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.simulation = simulation
        self.summary = summary or {}
        self.error_count = 0
        self.pending: list[tuple[str, BaseException]] = []

    def record_error(self, device_id: str, exc: BaseException) -> None:
        self.pending.append((device_id, exc))

    def simulator_errors(self) -> tuple[int, str]:
        sims = getattr(self.simulation, "simulators", None)
        if not sims:
            return -1, ""
        lines: list[str] = []
        for iid, sim in list(sims.items()):
            for err in list(getattr(sim, "protocol_errors", []) or []):
                lines.append(f"{iid}: {err}")
        return len(lines), "\n".join(lines[-10:])[:1023]

    async def prime(self) -> None:
        await self.devices.write(json.dumps(self.summary)[: LAYOUT_LENGTH - 1])
        n, text = self.simulator_errors()
        await self.protocol_errors.write(n)
        await self.protocol_error_text.write(text)

    @heartbeat.scan(period=1.0)
    async def heartbeat(self, instance: Any, async_lib: Any) -> None:
        await instance.write(instance.value + 1)
        pending, self.pending = self.pending, []
        if pending:
            self.error_count += len(pending)
            device_id, exc = pending[-1]
            await self.errors.write(self.error_count)
            await self.last_error.write(f"{device_id}: {exc}"[: STRING_LENGTH - 1])
        n, text = self.simulator_errors()
        if n != self.protocol_errors.value:
            await self.protocol_errors.write(n)
            await self.protocol_error_text.write(text)


# --- the IOC ---------------------------------------------------------------------------------


def check_prefix(prefix: str) -> str:
    """A PV prefix must be non-empty printable text without spaces, quotes or dots."""
    if (
        not isinstance(prefix, str)
        or not prefix
        or not prefix.isprintable()
        or any(c.isspace() or c in "\"'." for c in prefix)
    ):
        raise ConfigError(
            f"PV prefix {prefix!r} is not usable: it must be non-empty, without spaces, quotes "
            "or dots (a dot starts a record field).",
            key="prefix",
            fix="use something like 'DAQ:' or 'LAB1:'.",
        )
    return prefix


def _is_positioner(device: Any) -> bool:
    from ophyd.positioner import PositionerBase

    if isinstance(device, PositionerBase):
        return True
    # movable with a position: legacy adapters with a settable parameter, ophyd.sim axes ...
    return callable(getattr(device, "set", None)) and hasattr(type(device), "position")


class LabIOC:
    """Every device of a runtime as PVs under one prefix.

    ``devices``: device id -> device (``Runtime.devices``). ``poll_period``: seconds between the
    IOC's own readings of each detector (0: only on ``:Trigger``). ``simulation``: the runtime's
    simulation, for ``<P>ioc:ProtocolErrors``. ``read_only``: every PV read-only over CA.
    ``write_from``: peer addresses allowed to write (None: every client that can connect).
    """

    def __init__(
        self,
        devices: Mapping[str, Any],
        *,
        prefix: str = DEFAULT_PREFIX,
        poll_period: float = DEFAULT_POLL_PERIOD,
        simulation: Any = None,
        read_only: bool = False,
        write_from: Iterable[str] | None = None,
    ) -> None:
        check_prefix(prefix)
        if poll_period < 0 or not math.isfinite(poll_period):
            raise ConfigError(
                f"poll period {poll_period!r} s must be >= 0 (0: no periodic reads).",
                key="poll_period",
                fix="give seconds, e.g. 1.0.",
            )
        self.prefix = prefix
        self.poll_period = poll_period
        self.bridge = Bridge()
        self.pusher = Pusher()
        self.groups: dict[str, PVGroup] = {}
        self.kinds: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.ioc_group = IocGroup(prefix=f"{prefix}ioc:", simulation=simulation)
        # ophyd-async devices (the 1830-C) through their v1-shaped adapter (daqbridge.ioc._async).
        # A device served under its own id is not served again as a part of its parent: the
        # runtime's devices hold the parts each driver declares (DriverSpec.parts, an ESP300's
        # axes), so what is served alone is what the lab addresses alone.
        top = {id(device) for device in devices.values()}
        devices = {
            device_id: served_device(device, elsewhere=top) for device_id, device in devices.items()
        }
        links: dict[str, PositionerLink] = {}
        for device_id, device in devices.items():
            if _is_positioner(device):
                links[device_id] = PositionerLink(
                    device, description=str(getattr(device, "name", device_id))
                )
        # source -> the device whose motor record shows it as its position
        self._positions: dict[str, str] = {}
        for device_id, link in links.items():
            if link.readback is not None and (source := source_of(link.readback)):
                self._positions.setdefault(source, device_id)
        for device_id, device in devices.items():
            try:
                if device_id in links:
                    self._serve_positioner(device_id, device, links[device_id])
                else:
                    self._serve(device_id, device)
            except DaqbridgeError as exc:
                self.skipped[device_id] = str(exc)
                log.error("%s is not served: %s", device_id, exc)
        self.ioc_group.summary = {
            "prefix": prefix,
            "devices": self.kinds,
            "skipped": self.skipped,
        }
        self.groups["ioc"] = self.ioc_group
        self.pvdb: dict[str, Any] = {}
        for name, group in self.groups.items():
            for pvname, channel in group.pvdb.items():
                if pvname in self.pvdb:
                    raise ConfigError(
                        f"two devices would serve the PV {pvname!r} ({name} and another).",
                        key="prefix",
                        fix="rename one of the devices in the profile.",
                    )
                self.pvdb[pvname] = channel
        if read_only or write_from is not None:
            restrict_writes(self.pvdb, read_only=read_only, write_from=write_from)

    @classmethod
    def from_runtime(cls, runtime: Any, **kwargs: Any) -> LabIOC:
        kwargs.setdefault("simulation", getattr(runtime, "simulation", None))
        return cls(runtime.devices, **kwargs)

    # --- building ------------------------------------------------------------------------

    def _record_error(self, device_id: str, exc: BaseException) -> None:
        self.ioc_group.record_error(device_id, exc)

    def _motor(self, pvname: str, link: PositionerLink) -> MotorRecord:
        return MotorRecord(
            prefix=pvname,
            link=link,
            bridge=self.bridge,
            pusher=self.pusher,
            errors=self._record_error,
        )

    def _record_signals(self, link: PositionerLink, suffix: str) -> dict[str, dict[str, Any]]:
        """Which record fields show the positioner's own signals (for :Layout)."""
        out: dict[str, dict[str, Any]] = {}
        if link.readback is not None:
            # a read-write read-back is a setting moved as a positioner: VAL writes it
            writable = is_writable(link.readback)
            out["readback"] = {
                "pv": suffix + ("" if writable else ".RBV"),
                "writable": writable,
                "source": source_of(link.readback),
            }
        setpoint = getattr(link.device, "setpoint", None)
        if setpoint is not None and setpoint is not link.readback and is_writable(setpoint):
            # an ophyd-async positioner's setpoint is read-write (a put starts the move): the
            # record's VAL is that write
            out["setpoint"] = {
                "pv": suffix,
                "writable": True,
                "source": source_of(setpoint),
            }
        if link.velocity is not None:
            out["velocity"] = {
                "pv": suffix + ".VELO",
                "writable": is_writable(link.velocity),
                "source": source_of(link.velocity),
            }
        return out

    def _settings_of(self, positioner: Any, link: PositionerLink, suffix: str) -> list[SignalPV]:
        """A positioner's configuration signals that no motor field shows (the ESP300's
        acceleration, an Elliptec mount's velocity in %), as plain PVs ``<record>:<name>``."""
        from ophyd import Device, Signal

        if not isinstance(positioner, Device | AsyncPositionerAdapter):
            return []
        shown = {id(link.readback), id(link.velocity)}
        specs = []
        for attr in positioner.component_names:
            sig = getattr(positioner, attr)
            if not isinstance(sig, Signal | AsyncSignalAdapter) or id(sig) in shown:
                continue
            if _kind_name(sig.kind) != "config":
                continue  # readback/setpoint: the record's RBV and VAL
            specs.append(signal_pv(attr, sig, suffix=f"{suffix}:{attr}"))
        return specs

    def _serve_positioner(self, device_id: str, device: Any, link: PositionerLink) -> None:
        base = f"{self.prefix}{device_id}"
        self.groups[device_id] = self._motor(base, link)
        self.kinds[device_id] = "motor"
        specs = self._settings_of(device, link, "")
        self._add_group(
            f"{device_id}:settings",
            device_id,
            device,
            specs,
            kind="motor",
            extra={"record": "", "record_signals": self._record_signals(link, "")},
        )

    def _serve(self, device_id: str, device: Any) -> None:
        base = f"{self.prefix}{device_id}"
        from ophyd import Device, Signal

        served_async = isinstance(device, AsyncDeviceAdapter)
        if not isinstance(device, Device) and not served_async:
            self.skipped[device_id] = (
                f"{type(device).__name__} is not an ophyd device (its parts are served)"
            )
            return
        specs: list[SignalPV] = []
        motors: dict[str, str] = {}
        record_signals: dict[str, dict[str, Any]] = {}
        elsewhere: set[str] = set()
        # The setpoint of a setting that becomes a motor record is that record's VAL (as a
        # native positioner's setpoint is), so it is not served again as a PV of its own.
        in_records: set[int] = set()
        for attr in device.component_names:
            obj = getattr(device, attr)
            suffix = f":{attr}"
            if _is_positioner(obj):
                link = PositionerLink(obj, description=f"{device_id} {attr}")
                self.groups[f"{device_id}:{attr}"] = self._motor(base + suffix, link)
                motors[attr] = suffix
                for role, entry in self._record_signals(link, suffix).items():
                    record_signals[f"{attr}.{role}"] = entry
                specs.extend(
                    replace(s, attr=f"{attr}.{s.attr}")
                    for s in self._settings_of(obj, link, suffix)
                )
                continue
            is_signal = isinstance(obj, Signal | AsyncSignalAdapter)
            if not is_signal or _kind_name(obj.kind) == "omitted":
                continue
            spec = signal_pv(attr, obj, suffix=suffix)
            owner = self._positions.get(spec.source) if spec.source else None
            if owner is not None:
                elsewhere.add(owner)  # shown as the position of that device's motor record
                continue
            if id(obj) in in_records:
                continue
            if _is_moved_quantity(spec):
                if (setpoint := getattr(obj, "setpoint_signal", None)) is not None:
                    in_records.add(id(setpoint))
                link = PositionerLink(obj, description=f"{device_id} {attr}")
                self.groups[f"{device_id}:{attr}"] = self._motor(base + suffix, link)
                motors[attr] = suffix
                record_signals[attr] = self._record_signals(link, suffix)["readback"]
                continue
            specs.append(spec)
        if elsewhere and not specs and not motors:
            self.skipped[device_id] = (
                f"every signal of {device_id} is the position of another device's motor record "
                f"({', '.join(sorted(elsewhere))}): served there"
            )
            return
        if not specs and not motors:
            # nothing recorded, nothing moved (a legacy bus whose mounts are the devices, as the
            # native bus is no ophyd device): no PVs, on either stack
            self.skipped[device_id] = f"{device_id} has no signal of its own (its parts are served)"
            return
        camera = hasattr(device, "collect_asset_docs") and hasattr(device, "exposure")
        kind = "camera" if camera else ("detector" if _overrides(device, "trigger") else "readable")
        self._add_group(
            device_id,
            device_id,
            device,
            specs,
            kind=kind,
            extra={"motors": motors, "record_signals": record_signals},
            camera=camera,
        )
        self.kinds[device_id] = kind

    def _add_group(
        self,
        key: str,
        device_id: str,
        device: Any,
        specs: list[SignalPV],
        *,
        kind: str,
        extra: dict[str, Any],
        camera: bool = False,
    ) -> None:
        base = f"{self.prefix}{device_id}"
        layout = {
            "id": device_id,
            "kind": kind,
            "prefix": base,
            "signals": {s.attr: s.layout() for s in specs},
            "motors": {},
            **extra,
        }
        cls = device_group_class(device_id, specs, CameraGroup if camera else DeviceGroup)
        self.groups[key] = cls(
            prefix=base,
            device=device,
            device_id=device_id,
            bridge=self.bridge,
            pusher=self.pusher,
            # cameras acquire only on request; a positioner's record follows its position
            poll_period=0.0 if camera or kind == "motor" else self.poll_period,
            errors=self._record_error,
            layout=layout,
        )

    # --- serving -------------------------------------------------------------------------

    def pv_names(self) -> list[str]:
        """Every PV name served, motor record fields included (``<P>x``, ``<P>x.RBV`` ...)."""
        names: list[str] = []
        for pvname, channel in self.pvdb.items():
            names.append(pvname)
            fields = getattr(channel, "fields", None) or {}
            if fields:
                names.append(f"{pvname}.VAL")  # the record itself, by its field name
            names.extend(f"{pvname}.{f}" for f in fields)
        return sorted(names)

    def record_names(self) -> list[str]:
        """The PVs without the motor records' fields (what a person looks for first)."""
        return sorted(self.pvdb)

    async def prime(self) -> None:
        """Bind to the running loop and write every initial value before clients connect."""
        self.pusher.attach(asyncio.get_running_loop())
        for group in self.groups.values():
            prime = getattr(group, "prime", None)
            if prime is not None:
                await prime()

    def close(self) -> None:
        """Unsubscribe and close what the IOC made; the runtime closes the devices after."""
        for group in self.groups.values():
            unsubscribe = getattr(group, "unsubscribe", None)
            if unsubscribe is not None:
                with contextlib.suppress(Exception):
                    unsubscribe()
        self.bridge.close()


# --- access ------------------------------------------------------------------------------------


def restrict_writes(
    pvdb: Mapping[str, Any], *, read_only: bool = False, write_from: Iterable[str] | None = None
) -> None:
    """Channel Access has no authentication; this is EPICS access security's job done here.

    ``read_only``: clients are told at connect time that they may only read. ``write_from``:
    writes are accepted only from these peer IP addresses (checked on the TCP connection, not
    the host name the client claims). Neither replaces a firewall (docs/across_machines.md).
    """
    from caproto import AccessRights

    allowed = None if write_from is None else frozenset(write_from)
    channels: list[Any] = []
    for channel in pvdb.values():
        channels.append(channel)
        channels.extend((getattr(channel, "fields", None) or {}).values())
    for channel in channels:
        if read_only:
            channel.check_access = lambda hostname, username: AccessRights.READ
        elif allowed is not None:
            channel.auth_write = _peer_checked(channel, channel.auth_write, allowed)


def _peer_checked(channel: Any, auth_write: Any, allowed: frozenset[str]) -> Any:
    async def auth_write_checked(hostname: str, username: str, *args: Any, **kwargs: Any) -> Any:
        from caproto._data import Forbidden

        peer = (kwargs.get("user_address") or ("?",))[0]
        if peer not in allowed:
            raise Forbidden(
                f"writes to {channel.pvname} are accepted only from {sorted(allowed)}; "
                f"{username}@{hostname} connected from {peer}."
            )
        return await auth_write(hostname, username, *args, **kwargs)

    return auth_write_checked
