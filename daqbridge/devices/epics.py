"""Client-side devices for instruments served by ``daqbridge ioc`` on another machine.

A profile entry ``driver = "epics"`` with ``prefix = "DAQ:sim_stage_x"`` names one device the
IOC serves (``<IOC prefix><device id>``). :func:`build_epics_devices` turns such an entry into
ophyd devices; the classes can also be used directly::

    motor = DaqbridgeEpicsMotor("DAQ:sim_stage_x", name="stage_x")
    meter = EpicsPowerMeter("DAQ:sim_meter", name="meter")
    RE(bp.scan([meter], motor, -1, 1, 5))

Why it is built this way:

* Motors are stock ``ophyd.EpicsMotor``s: the IOC serves real motor records, so anything that
  drives an EPICS motor (ophyd, pyepics, CSS panels, other labs' tools) drives daqbridge axes.
  :class:`DaqbridgeEpicsMotor` only makes EpicsMotor robust to a monitor update delivered twice
  (the caproto client can call DMOV callbacks from two threads; EpicsMotor would then finish
  its move status twice and log an InvalidState error).
* Detectors take a fresh reading for each point: ``trigger()`` puts 1 to ``<prefix>:Trigger``
  with put-completion, and the IOC completes the put only after the new value is stored, so a
  scan never records the previous point's reading. A failed trigger fails the status with the
  IOC's ``:Status`` text.
* The IOC describes every plain-PV device in ``<prefix>:Layout`` (JSON); ``kind="device"``
  builds a matching ophyd device from it, so SCPI instruments with profile-defined signals need
  no client-side code.
* The CA client itself starts at the first PV, not at ``import ophyd``
  (:func:`defer_epics_client`, installed by :mod:`daqbridge.devices`): a lab with no EPICS
  device neither starts nor tears down caproto's threads.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

from ophyd import Component as Cpt
from ophyd import Device, EpicsMotor, EpicsSignal, EpicsSignalRO, Kind
from ophyd.status import Status

from daqbridge.devices._epics_layer import defer_epics_client
from daqbridge.errors import ConfigError, InstrumentError

__all__ = [
    "EPICS_KINDS",
    "DaqbridgeEpicsMotor",
    "EpicsCamera",
    "EpicsDetector",
    "EpicsLaser",
    "EpicsPowerMeter",
    "build_epics_devices",
    "defer_epics_client",
    "epics_device_class",
    "read_layout",
]

log = logging.getLogger("daqbridge.devices.epics")


class DaqbridgeEpicsMotor(EpicsMotor):
    """``ophyd.EpicsMotor`` for a daqbridge IOC motor record (or any motor record).

    Identical PVs and behaviour; DMOV updates are processed one at a time and a repeated value
    is ignored (only DMOV transitions carry information).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._dmov_lock = threading.Lock()
        self._last_dmov: Any = None
        super().__init__(*args, **kwargs)

    def _move_changed(self, timestamp=None, value=None, sub_type=None, **kwargs):  # noqa: ANN001
        with self._dmov_lock:
            if value is not None and value == self._last_dmov:
                return
            self._last_dmov = value
            super()._move_changed(timestamp=timestamp, value=value, sub_type=sub_type, **kwargs)


class EpicsDetector(Device):
    """Base of the IOC's plain-PV devices: ``trigger()`` asks the IOC for a fresh reading."""

    trigger_signal = Cpt(EpicsSignal, ":Trigger", put_complete=True, kind=Kind.omitted)
    status_text = Cpt(EpicsSignalRO, ":Status", string=True, kind=Kind.omitted)

    trigger_timeout = 30.0
    """Seconds a reading may take before the trigger status fails."""

    def trigger(self) -> Status:
        return self._put_and_check(self.trigger_signal)

    def _put_and_check(self, command: Any) -> Status:
        """Put 1 with put-completion; then the IOC's verdict decides the status.

        The IOC completes the put even when the reading failed (caproto's client would never
        hear of a failed put-completion) and says why in ``:Status``; that one extra read per
        point is the price of knowing.
        """
        status = Status(obj=self, timeout=self.trigger_timeout)

        def check() -> None:
            try:
                result = command.get(use_monitor=False, timeout=5)
                why = "" if result != -1 else self.status_text.get(use_monitor=False, timeout=5)
            except Exception as exc:  # noqa: BLE001 - any CA failure fails the reading
                why = f"{type(exc).__name__}: {exc}"
            if not why:
                status.set_finished()
                return
            status.set_exception(
                InstrumentError(
                    f"the IOC could not take a reading: {why}",
                    instrument=self.name,
                    resource=self.prefix,
                    fix="see the IOC's log and <P>ioc:LastError; check the instrument on the "
                    "IOC's machine.",
                )
            )

        def done(st: Any) -> None:
            if status.done:
                return
            if not st.success:
                status.set_exception(st.exception() or InstrumentError("the put failed."))
                return
            # not on the CA callback thread: a CA read from there would wait for itself
            threading.Thread(target=check, name=f"{self.name}-trigger", daemon=True).start()

        command.set(1).add_callback(done)
        return status


class EpicsPowerMeter(EpicsDetector):
    """A power meter served by the IOC (``<P><id>:power`` in W, settings as config)."""

    power = Cpt(EpicsSignalRO, ":power", kind=Kind.hinted)
    wavelength = Cpt(EpicsSignal, ":wavelength", kind=Kind.config)
    range = Cpt(EpicsSignal, ":range", kind=Kind.config)
    filter = Cpt(EpicsSignal, ":filter", kind=Kind.config)
    attenuator = Cpt(EpicsSignal, ":attenuator", kind=Kind.config)


class EpicsLaser(EpicsDetector):
    """A tunable laser: ``wavelength`` is a motor record, ``shutter`` a writable PV."""

    wavelength = Cpt(DaqbridgeEpicsMotor, ":wavelength", kind=Kind.hinted)
    power = Cpt(EpicsSignalRO, ":power", kind=Kind.hinted)
    shutter = Cpt(EpicsSignal, ":shutter", kind=Kind.normal)
    warmup = Cpt(EpicsSignalRO, ":warmup", kind=Kind.config)


class EpicsCamera(EpicsDetector):
    """A camera: each point is acquired on the IOC's machine into an HDF5 file there.

    The client records the frame statistics (``sum``, ``max``) and the file's path; the frames
    stay with the IOC (its catalog can serve them).
    """

    acquire = Cpt(EpicsSignal, ":Acquire", put_complete=True, kind=Kind.omitted)
    acquire_time = Cpt(EpicsSignal, ":AcquireTime", kind=Kind.config)
    array_counter = Cpt(EpicsSignalRO, ":ArrayCounter", kind=Kind.normal)
    file_name = Cpt(EpicsSignalRO, ":FileName", string=True, kind=Kind.normal)
    sum = Cpt(EpicsSignalRO, ":sum", kind=Kind.hinted)
    max = Cpt(EpicsSignalRO, ":max", kind=Kind.hinted)

    trigger_timeout = 120.0

    def trigger(self) -> Status:
        return self._put_and_check(self.acquire)


_KINDS = {"hinted": Kind.hinted, "normal": Kind.normal, "config": Kind.config}


def epics_device_class(layout: Mapping[str, Any], *, name: str = "EpicsDevice") -> type[Device]:
    """An :class:`EpicsDetector` subclass with one component per signal of an IOC layout.

    ``layout`` is what the IOC serves in ``<prefix>:Layout``: ``{"signals": {attr: {"pv":
    ":attr", "dtype": ..., "kind": ..., "writable": ...}}, "motors": {attr: ":attr"}}``.
    """
    signals = layout.get("signals") or {}
    motors = layout.get("motors") or {}
    if not isinstance(signals, Mapping) or not isinstance(motors, Mapping):
        raise ConfigError(
            "the IOC layout has no 'signals'/'motors' tables.",
            key="layout",
            fix="read it with read_layout(prefix) from a daqbridge IOC.",
        )
    body: dict[str, Any] = {"__module__": __name__}
    for attr, spec in signals.items():
        cls = EpicsSignal if spec.get("writable") else EpicsSignalRO
        kwargs: dict[str, Any] = {"kind": _KINDS.get(spec.get("kind"), Kind.normal)}
        if spec.get("dtype") == "string":
            kwargs["string"] = True
        body[attr] = Cpt(cls, spec.get("pv", f":{attr}"), **kwargs)
    for attr, suffix in motors.items():
        body[attr] = Cpt(DaqbridgeEpicsMotor, suffix, kind=Kind.hinted)
    ident = "".join(c if c.isalnum() else "_" for c in name)
    return type(f"EpicsDevice_{ident}", (EpicsDetector,), body)


def read_layout(prefix: str, *, timeout: float = 2.0) -> dict[str, Any]:
    """The IOC's description of the device at ``prefix`` (``<prefix>:Layout``)."""
    sig = EpicsSignalRO(f"{prefix}:Layout", string=True, name="layout")
    try:
        sig.wait_for_connection(timeout=timeout)
        text = sig.get(as_string=True, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - any CA failure means the same to the user
        raise InstrumentError(
            f"no IOC answers for {prefix}:Layout within {timeout:g} s ({type(exc).__name__}).",
            resource=prefix,
            fix="start `daqbridge ioc serve` on the instrument's machine, check the prefix and "
            "EPICS_CA_ADDR_LIST on this one.",
        ) from exc
    finally:
        sig.destroy()
    try:
        layout = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise InstrumentError(
            f"{prefix}:Layout is not JSON ({str(text)[:60]!r}).",
            resource=prefix,
            fix="is this a daqbridge IOC? Use kind='motor' or 'signal' for other IOCs.",
        ) from exc
    if not isinstance(layout, dict):
        raise InstrumentError(f"{prefix}:Layout is not a JSON object.", resource=prefix)
    return layout


EPICS_KINDS = ("motor", "signal", "power_meter", "laser", "camera", "device")
"""Kinds :func:`build_epics_devices` builds."""


def build_epics_devices(
    prefix: str,
    kind: str = "motor",
    *,
    name: str,
    read_pv: str = "",
    write_pv: str | None = None,
    units: str = "",
    layout: Mapping[str, Any] | None = None,
    timeout: float = 2.0,
) -> dict[str, Any]:
    """The ophyd device(s) of one profile entry ``driver = "epics"``: ``{name: device}``.

    ``kind``:

    * ``motor``: a motor record at ``prefix`` (:class:`DaqbridgeEpicsMotor`);
    * ``signal``: one PV ``prefix + read_pv`` (written at ``prefix + write_pv`` when given);
      ``units`` fills in when the IOC does not say;
    * ``power_meter``, ``laser``, ``camera``: the IOC's PVs for those instruments;
    * ``device``: any device the IOC serves as plain PVs, built from ``<prefix>:Layout`` (read
      now, over CA, unless ``layout`` is given).

    Nothing is connected here; call ``wait_for_connection(timeout)``.
    """
    if kind == "motor":
        device: Any = DaqbridgeEpicsMotor(prefix, name=name)
    elif kind == "signal":
        read = prefix + read_pv
        if write_pv is not None:
            device = EpicsSignal(read, write_pv=prefix + write_pv, name=name)
        else:
            device = EpicsSignalRO(read, name=name)
        if units:
            _default_units(device, units)
    elif kind == "power_meter":
        device = EpicsPowerMeter(prefix, name=name)
    elif kind == "laser":
        device = EpicsLaser(prefix, name=name)
    elif kind == "camera":
        device = EpicsCamera(prefix, name=name)
    elif kind == "device":
        layout = read_layout(prefix, timeout=timeout) if layout is None else layout
        device = epics_device_class(layout, name=name)(prefix, name=name)
    else:
        raise ConfigError(
            f"unknown epics kind {kind!r}.",
            instrument=name,
            key="epics.kind",
            fix=f"use one of: {', '.join(EPICS_KINDS)}.",
        )
    return {name: device}


def _default_units(signal: Any, units: str) -> None:
    """Record ``units`` in the descriptor when the IOC's metadata has none."""
    describe = signal.describe

    def describe_with_units() -> dict[str, dict[str, Any]]:
        desc = describe()
        for entry in desc.values():
            if not entry.get("units"):
                entry["units"] = units
        return desc

    signal.describe = describe_with_units
