"""ophyd-async devices seen through the ophyd v1 interface the IOC serves.

Why an adapter: the IOC builds its PVs from ophyd v1 devices (``component_names``, ``kind``,
``describe()``, ``get()``, ``subscribe()``, ``set()`` returning a status) and calls them from its
own asyncio loop and threads. An ophyd-async device (the Newport 1830-C) reads in coroutines
that belong to the RunEngine's loop. The adapter runs them there
(:func:`daqbridge.devices.core.call_sync`, always from an IOC thread or at build time, never on
the RunEngine's loop), subscribes with ophyd-async's own ``subscribe_reading``/``clear_sub``, and
shows the same names, kinds, units and writability as the v1 device it replaced:

* ``get()`` never touches the wire: it is the instrument's latest reply through that signal
  (every read, every confirmed set, by anyone: a plan's reading shows on the PV too);
* ``trigger()`` (the IOC's ``:Trigger`` and its periodic reads) takes a fresh reading of the
  device's readings (the meter's ``C``, ``D?``, ``Q?``), settings stay as last reported;
* ``set()`` writes and reads back in one lease (the signal's own ``put``); the PV then shows the
  read-back, never the commanded value;
* writable exactly when the signal is read-write (``SignalW``), as ``write_access`` says for v1;
* a camera (the PVCAM camera) is served as the IOC's camera group serves one
  (:class:`AsyncCameraAdapter`): ``stage()``, ``trigger()`` (one point into the run's file),
  ``unstage()`` and ``file_path``, each blocking on the device's loop;
* a movable part (an ophyd-async ``StandardMovable``: the MaiTai's wavelength, an ESP300 axis) is
  a v1-shaped positioner for the motor record (:class:`AsyncPositionerAdapter`): ``set()`` refuses
  a bad target at once (the device's own synchronous check) and returns a status that ends with
  the move; ``position`` is the last position the controller reported, never the target.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection
from typing import Any

from daqbridge.devices.core import call_sync, is_async_device

__all__ = [
    "AsyncCameraAdapter",
    "AsyncDeviceAdapter",
    "AsyncPositionerAdapter",
    "AsyncSignalAdapter",
    "served_device",
]

CALL_TIMEOUT = 60.0
"""Seconds one call on the device's loop may take (a reading, a set with its read-back)."""


def served_device(device: Any, *, elsewhere: Collection[int] = ()) -> Any:
    """``device`` itself (ophyd v1), or its adapter (ophyd-async).

    ``elsewhere``: ids of devices the IOC serves under their own names (an ESP300's axes, the
    mounts of an Elliptec bus): a parent does not serve them a second time as its parts.
    """
    if not is_async_device(device):
        return device
    if is_async_movable(device):
        return AsyncPositionerAdapter(device)
    if callable(getattr(device, "collect_asset_docs", None)) and hasattr(device, "exposure"):
        return AsyncCameraAdapter(device, elsewhere=elsewhere)
    return AsyncDeviceAdapter(device, elsewhere=elsewhere)


def is_async_movable(device: Any) -> bool:
    """An ophyd-async device that moves to a target and reports where it is (a positioner)."""
    from ophyd_async.core import SignalR

    return (
        is_async_device(device)
        and callable(getattr(device, "set", None))
        and callable(getattr(device, "stop", None))
        and isinstance(getattr(device, "readback", None), SignalR)
    )


def _kinds_of(device: Any) -> dict[int, Any]:
    """Signal id -> its v1 kind: hinted for what the device hints, config for its
    configuration, normal for its other readings (ophyd-async keeps these per device)."""
    from ophyd import Kind

    def owners(attr: str) -> set[int]:
        return {id(getattr(f, "__self__", None)) for f in getattr(device, attr, ())}

    hinted = set((getattr(device, "hints", None) or {}).get("fields") or ())
    config = owners("_describe_config_funcs")
    readings = owners("_describe_funcs")
    kinds: dict[int, Any] = {}
    for _, child in device.children():
        if child.name in hinted:
            kinds[id(child)] = Kind.hinted
        elif id(child) in config:
            kinds[id(child)] = Kind.config
        elif id(child) in readings:
            kinds[id(child)] = Kind.normal
        else:
            kinds[id(child)] = Kind.omitted
    return kinds


class AsyncSignalAdapter:
    """One ophyd-async signal as an ophyd v1 signal (``get``, ``subscribe``, ``set``...)."""

    def __init__(self, signal: Any, *, kind: Any, owner: Any, attr: str) -> None:
        from ophyd_async.core import SignalW

        self.signal = signal
        self.owner = owner
        self.name: str = signal.name
        self.attr_name = attr
        self.kind = kind
        self.parent = None
        self.write_access = isinstance(signal, SignalW)
        self.__doc__ = f"{owner.name} {attr}"
        # No wire traffic: a wire signal's datakey is declared, not asked.
        self._description = dict(
            call_sync(signal.describe(), device=owner, timeout=CALL_TIMEOUT).get(self.name, {})
        )
        self._last: dict[str, Any] | None = None
        self._ids = itertools.count(1)
        self._callbacks: dict[int, Callable[..., Any]] = {}
        self._listener: Callable[[dict[str, Any]], None] | None = None

    def __repr__(self) -> str:
        return f"<AsyncSignalAdapter {self.name}>"

    # --- values ------------------------------------------------------------------------------

    def _latest(self) -> dict[str, Any] | None:
        backend = getattr(getattr(self.signal, "_connector", None), "backend", None)
        reading = getattr(backend, "last_reading", None)
        return reading if reading is not None else self._last

    def describe(self) -> dict[str, dict[str, Any]]:
        return {self.name: dict(self._description)}

    def get(self) -> Any:
        """The latest value the instrument reported (no wire exchange); None before any."""
        reading = self._latest()
        return None if reading is None else reading["value"]

    @property
    def timestamp(self) -> float | None:
        reading = self._latest()
        return None if reading is None else reading["timestamp"]

    def store(self, reading: dict[str, Any]) -> None:
        self._last = reading

    # --- monitoring ----------------------------------------------------------------------------

    def subscribe(self, callback: Callable[..., Any], run: bool = True, **_: Any) -> int:
        """``callback(value=, timestamp=)`` for every value the instrument reports."""
        cid = next(self._ids)
        self._callbacks[cid] = callback
        if self._listener is None:

            def listener(readings: dict[str, Any]) -> None:
                reading = readings.get(self.name)
                if reading is None:
                    return
                self._last = reading
                for cb in list(self._callbacks.values()):
                    cb(value=reading["value"], timestamp=reading["timestamp"], obj=self)

            self._listener = listener
            call_sync(
                lambda: self.signal.subscribe_reading(listener),
                device=self.owner,
                timeout=CALL_TIMEOUT,
            )
        if run and (reading := self._latest()) is not None:
            callback(value=reading["value"], timestamp=reading["timestamp"], obj=self)
        return cid

    def unsubscribe(self, cid: int) -> None:
        self._callbacks.pop(cid, None)
        if self._callbacks or self._listener is None:
            return
        listener, self._listener = self._listener, None
        call_sync(lambda: self.signal.clear_sub(listener), device=self.owner, timeout=CALL_TIMEOUT)

    # --- writing -------------------------------------------------------------------------------

    def set(self, value: Any, **_: Any) -> Any:
        """Write and read back on the device's loop (blocking: the IOC calls it from its
        thread pool); a finished ophyd status, failed with the instrument's error."""
        from ophyd.status import Status

        status = Status(obj=self)
        try:
            call_sync(lambda: self.signal.set(value), device=self.owner, timeout=CALL_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the status carries it to the IOC
            status.set_exception(exc)
        else:
            status.set_finished()
        return status

    def put(self, value: Any, **kwargs: Any) -> None:
        status = self.set(value)
        if not status.success:
            raise status.exception()


class AsyncDeviceAdapter:
    """An ophyd-async StandardReadable as the ophyd v1 device the IOC serves.

    Components are its signals that it reads or configures, with v1 kinds: hinted for what the
    device hints (the meter's power), config for its configuration, normal for other readings.
    """

    def __init__(self, device: Any, *, elsewhere: Collection[int] = ()) -> None:
        from ophyd_async.core import SignalR

        self.device = device
        self.name: str = device.name
        self.parent = None
        kinds = _kinds_of(device)
        names = []
        for attr, child in device.children():
            if id(child) in elsewhere:
                continue
            if is_async_movable(child):
                part: Any = AsyncPositionerAdapter(child)
            elif isinstance(child, SignalR):
                part = AsyncSignalAdapter(child, kind=kinds[id(child)], owner=device, attr=attr)
            else:
                continue
            setattr(self, attr, part)
            names.append(attr)
        self.component_names = tuple(names)
        # A setting's setpoint signal (the legacy adapter's) is served in the setting's motor
        # record (its VAL), so the IOC must know which part shows it.
        parts = [getattr(self, attr) for attr in names]
        by_signal = {id(getattr(part, "signal", None)): part for part in parts}
        for part in parts:
            setpoint = getattr(getattr(part, "signal", None), "setpoint_signal", None)
            if setpoint is not None and id(setpoint) in by_signal:
                part.setpoint_signal = by_signal[id(setpoint)]

    def __repr__(self) -> str:
        return f"<AsyncDeviceAdapter {self.name}>"

    def describe(self) -> dict[str, dict[str, Any]]:
        from ophyd import Kind

        out: dict[str, dict[str, Any]] = {}
        for attr in self.component_names:
            sig = getattr(self, attr)
            if isinstance(sig, AsyncPositionerAdapter):
                out.update(sig.describe())
            elif sig.kind & Kind.normal:  # hinted includes normal
                out.update(sig.describe())
        return out

    def trigger(self) -> Any:
        """A fresh reading of the device's readings on its loop (blocking: the IOC calls it from
        its thread pool); a finished ophyd status, failed with the instrument's error."""
        from ophyd.status import Status

        device = self.device

        async def take() -> dict[str, Any]:
            trigger = getattr(device, "trigger", None)
            if callable(trigger):
                await trigger()
            return await device.read()

        status = Status(obj=self)
        try:
            readings = call_sync(take, device=device, timeout=CALL_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - the status carries it to the IOC
            status.set_exception(exc)
            return status
        for attr in self.component_names:
            part = getattr(self, attr)
            for sig in part.signals() if isinstance(part, AsyncPositionerAdapter) else [part]:
                if sig.name in readings:
                    sig.store(readings[sig.name])
        status.set_finished()
        return status


class AsyncCameraAdapter(AsyncDeviceAdapter):
    """An ophyd-async camera as the IOC's camera group drives one (``:Acquire``): stage, one
    point, unstage, each run on the camera's loop from an IOC thread; the statistics PVs show
    the point's readings."""

    def stage(self) -> list[Any]:
        call_sync(lambda: self.device.stage(), device=self.device, timeout=CALL_TIMEOUT)
        return [self]

    def unstage(self) -> list[Any]:
        call_sync(lambda: self.device.unstage(), device=self.device, timeout=CALL_TIMEOUT)
        return [self]

    @property
    def file_path(self) -> Any:
        """The HDF5 file of the current stage (None when not staged)."""
        return self.device.file_path

    def collect_asset_docs(self, index: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The StreamResource/StreamDatum documents of the points taken since the last call."""

        async def gather() -> list[tuple[str, dict[str, Any]]]:
            return [doc async for doc in self.device.collect_asset_docs(index)]

        return call_sync(gather, device=self.device, timeout=CALL_TIMEOUT)


class AsyncPositionerAdapter:
    """An ophyd-async movable (``StandardMovable``) as the v1 positioner a motor record drives.

    Components: ``readback`` (hinted), ``setpoint`` when the device has one, and its
    configuration signals (an ESP300 axis's velocity and acceleration), each an
    :class:`AsyncSignalAdapter`. Every call runs on the device's loop from the IOC's threads.
    """

    def __init__(self, device: Any) -> None:
        from ophyd import Kind
        from ophyd_async.core import SignalR

        self.device = device
        self.name: str = device.name
        self.parent = None
        kinds = _kinds_of(device)
        names = []
        for attr, child in device.children():
            if not isinstance(child, SignalR):
                continue
            kind = Kind.hinted if attr == "readback" else kinds[id(child)]
            setattr(self, attr, AsyncSignalAdapter(child, kind=kind, owner=device, attr=attr))
            names.append(attr)
        self.component_names = tuple(names)

    def __repr__(self) -> str:
        return f"<AsyncPositionerAdapter {self.name}>"

    def signals(self) -> list[AsyncSignalAdapter]:
        return [getattr(self, attr) for attr in self.component_names]

    def describe(self) -> dict[str, dict[str, Any]]:
        from ophyd import Kind

        out: dict[str, dict[str, Any]] = {}
        for sig in self.signals():
            if sig.kind & Kind.normal:
                out.update(sig.describe())
        return out

    # --- the positioner interface the motor record uses ---------------------------------------

    @property
    def position(self) -> Any:
        """The last position the controller reported (no wire exchange); None before any."""
        return self.readback.get()  # type: ignore[attr-defined]

    @property
    def egu(self) -> str:
        egu = getattr(self.device, "egu", None)
        if isinstance(egu, str) and egu:
            return egu
        readback: AsyncSignalAdapter = self.readback  # type: ignore[attr-defined]
        return str(readback.describe()[readback.name].get("units") or "")

    @property
    def precision(self) -> int | None:
        readback: AsyncSignalAdapter = self.readback  # type: ignore[attr-defined]
        value = readback.describe()[readback.name].get("precision")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def limits(self) -> tuple[float, float] | None:
        limits = getattr(self.device, "limits", None)
        if limits is None:
            return None
        low, high = limits
        return float(low), float(high)

    @property
    def moving(self) -> bool:
        logic = getattr(self.device, "movable_logic", None)
        return bool(getattr(logic, "moving", False))

    def set(self, value: Any, **_: Any) -> Any:
        """Start the move on the device's loop; a target the device refuses raises here, at
        once (its synchronous check); the returned ophyd status ends when the move does."""
        from ophyd.status import Status

        status = Status(obj=self)

        def finished(moved: Any) -> None:
            exc = moved.exception()
            if exc is None:
                status.set_finished()
            else:
                status.set_exception(exc)

        def start() -> None:
            self.device.set(value).add_callback(finished)

        call_sync(start, device=self.device, timeout=CALL_TIMEOUT)
        return status

    def stop(self, *, success: bool = False) -> None:
        device = self.device
        call_sync(lambda: device.stop(success=success), device=device, timeout=CALL_TIMEOUT)

    @property
    def home(self) -> Any:
        """The device's ``home`` as a blocking call, or None (the record's HOMF/HOMR refuse)."""
        home = getattr(self.device, "home", None)
        if not callable(home):
            return None

        def run() -> Any:
            from ophyd.status import Status

            status = Status(obj=self)
            try:
                call_sync(lambda: home(), device=self.device, timeout=None)
            except Exception as exc:  # noqa: BLE001 - the status carries it to the IOC
                status.set_exception(exc)
            else:
                status.set_finished()
            return status

        return run
