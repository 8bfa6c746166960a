"""What a plan needs from a device, found on whichever driver stack the device comes from.

Why this layer: during the migration the same instrument is a native ophyd device in one lab
profile and a legacy driver behind :class:`~daqbridge.devices.legacy_adapter.LegacyDevice` in
another (in ``profiles/sim.toml`` the MaiTai is legacy). A plan written against one class breaks
on the other, so the plans ask for *capabilities* ("something that tunes the wavelength and
reports when it settled", "a shutter that is read back") and this module finds them:

* native devices: components by attribute (``laser.wavelength``, ``laser.shutter``,
  ``meter.wavelength``) that are bluesky ``Movable`` and really command the instrument;
* legacy devices: the instrument's settable parameters (``parameters()``). Each one the device
  shows is a ``LegacySetting`` component that commands the instrument and holds its read-back
  (``laser.shutter``, ``meter.wavelength``), so plans move those directly. Only where a plan
  needs a read-back tolerance the device was not built with (the MaiTai reports whole nm) does
  it get a small companion LegacyDevice with that tolerance, closed when the plan ends. A
  read-only legacy component is never taken for something a plan can move.

Anything missing is a :class:`PlanArgumentError` naming the plan, the argument and what the
device lacks, raised before the first message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bluesky.protocols import Movable, Readable, Triggerable

from daqbridge.plans._checks import plan_error, positioner_limits, require_device
from daqbridge.plans._metadata import device_name, hinted_fields

__all__ = [
    "LASER_TUNING_RANGE_NM",
    "METER_WAVELENGTH_RANGE_NM",
    "LaserControls",
    "MeterControls",
    "is_legacy_device",
    "laser_controls",
    "meter_controls",
]

LASER_TUNING_RANGE_NM = (690.0, 1040.0)
"""What a MaiTai accepts at all (INSTRUMENTS.md); profiles may only narrow it."""
METER_WAVELENGTH_RANGE_NM = (300.0, 1100.0)
"""The 1830-C's ``Wnnnn`` calibration wavelength range (4-digit nm)."""

LEGACY_WAVELENGTH_TOLERANCE_NM = 1.0
"""A MaiTai reports whole nm (``820nm``) and the legacy driver calls a tune done within 1 nm, so
the read-back check of a companion accepts that much (the adapter's default is 1e-4 of the
parameter span, 0.035 nm, which a target such as 833.33 nm could never meet)."""


def _legacy_device_class() -> type | None:
    try:
        from daqbridge.devices.legacy_adapter import LegacyDevice
    except Exception:  # noqa: BLE001 - adapter missing or broken: no legacy devices exist
        return None
    return LegacyDevice


def is_legacy_device(obj: Any) -> bool:
    cls = _legacy_device_class()
    return cls is not None and isinstance(obj, cls)


def _is_read_only_legacy_signal(obj: Any) -> bool:
    """A measured legacy channel: it has a ``set`` (ophyd's Signal API) that only refuses."""
    try:
        from daqbridge.devices.legacy_adapter import LegacySetting, LegacySignal
    except Exception:  # noqa: BLE001
        return False
    return isinstance(obj, LegacySignal) and not isinstance(obj, LegacySetting)


def _legacy_setting(dev: Any, parameter: str) -> Any | None:
    """The component of ``dev`` that sets ``parameter`` on the instrument, if it shows one."""
    try:
        from daqbridge.devices.legacy_adapter import LegacySetting
    except Exception:  # noqa: BLE001
        return None
    try:
        sig = dev.signal_for(parameter)
    except (AttributeError, KeyError):
        return None
    return sig if isinstance(sig, LegacySetting) else None


def _legacy_parameters(dev: Any) -> dict[str, Any]:
    try:
        return dict(dev.legacy_runtime.instruments[dev.instrument_id].parameters())
    except Exception:  # noqa: BLE001 - an instrument that cannot say: treat as no parameters
        return {}


def _legacy_channels(dev: Any) -> dict[str, Any]:
    try:
        return dict(dev.legacy_runtime.instruments[dev.instrument_id].channels())
    except Exception:  # noqa: BLE001
        return {}


@dataclass
class Companions:
    """Companion devices a plan created; ``close()`` when the plan ends."""

    devices: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for dev in self.devices:
            try:
                dev.close()
            except Exception:  # noqa: BLE001 - closing a subscription must not mask the plan
                pass
        self.devices.clear()


def _legacy_setter(
    dev: Any,
    parameter: str,
    companions: Companions,
    *,
    tolerance: float | None = None,
) -> Any:
    """A Movable that sets ``parameter`` of the legacy instrument behind ``dev``."""
    if tolerance is None:
        if getattr(dev, "settable", None) == parameter:
            return dev
        setting = _legacy_setting(dev, parameter)
        if setting is not None:
            return setting
    cls = _legacy_device_class()
    assert cls is not None
    channels = _legacy_channels(dev)
    read = [parameter] if parameter in channels else [next(iter(channels))]
    companion = cls(
        dev.legacy_runtime,
        dev.instrument_id,
        name=dev.name,
        channels=read,
        settable=parameter,
        configuration=[],
        tolerance=tolerance,
    )
    companions.devices.append(companion)
    return companion


def _legacy_limits(dev: Any, parameter: str) -> tuple[float, float] | None:
    info = _legacy_parameters(dev).get(parameter)
    limits = getattr(info, "limits", None)
    return (float(limits[0]), float(limits[1])) if limits else None


def _intersect(*ranges: tuple[float, float] | None) -> tuple[float, float]:
    low, high = -math.inf, math.inf
    for r in ranges:
        if r is not None:
            low, high = max(low, r[0]), min(high, r[1])
    return (low, high)


def _native_setter(dev: Any, attr: str) -> Any | None:
    obj = getattr(dev, attr, None)
    if obj is None or not isinstance(obj, Movable) or _is_read_only_legacy_signal(obj):
        return None
    return obj


# --- laser -------------------------------------------------------------------------------------


@dataclass
class LaserControls:
    """What a wavelength scan drives on a laser, whatever its stack."""

    device: Any
    wavelength: Any
    """Movable; its status finishes when the wavelength has settled."""
    shutter: Any
    """Movable taking 1 (open) / 0 (closed), confirmed by read-back."""
    limits: tuple[float, float]
    wavelength_fields: list[str]
    """Data keys of the wavelength read-back in the laser's own readings (plot axis)."""
    readables: list[Any]
    """What to read each point: the laser itself (wavelength and power)."""
    companions: Companions


def laser_controls(plan: str, argument: str, laser: Any) -> LaserControls:
    """Find the wavelength positioner, the shutter and the tuning limits of ``laser``."""
    require_device(plan, argument, laser, "a laser device", Readable)
    companions = Companions()
    configured = getattr(laser, "wavelength_limits", None)
    configured = tuple(float(v) for v in configured) if configured else None
    if is_legacy_device(laser):
        params = _legacy_parameters(laser)
        missing = [
            p for p in ("wavelength", "shutter") if not getattr(params.get(p), "settable", 0)
        ]
        if missing:
            raise plan_error(
                plan,
                argument,
                laser,
                f"is a legacy device without the settable parameter(s) {missing} "
                f"(it has {sorted(p for p, i in params.items() if i.settable) or 'none'})",
                instrument=device_name(laser),
                fix="pass the laser (a MaiTai), not another instrument.",
            )
        wavelength = _legacy_setter(
            laser, "wavelength", companions, tolerance=LEGACY_WAVELENGTH_TOLERANCE_NM
        )
        shutter = _legacy_setter(laser, "shutter", companions)
        try:
            fields = [laser.signal_for("wavelength").name]
        except KeyError:
            fields = [f"{laser.name}_wavelength"]
        limits = _intersect(LASER_TUNING_RANGE_NM, _legacy_limits(laser, "wavelength"), configured)
        return LaserControls(laser, wavelength, shutter, limits, fields, [laser], companions)

    wavelength = _native_setter(laser, "wavelength")
    shutter = _native_setter(laser, "shutter")
    if wavelength is None or shutter is None:
        lacks = [n for n, o in (("wavelength", wavelength), ("shutter", shutter)) if o is None]
        raise plan_error(
            plan,
            argument,
            laser,
            f"is not a laser the plan can tune ({type(laser).__name__} has no movable "
            f"{' or '.join(repr(n) for n in lacks)} component)",
            instrument=device_name(laser),
            fix="pass a MaiTaiLaser, or a LegacyDevice wrapping the legacy MaiTai driver.",
        )
    limits = _intersect(LASER_TUNING_RANGE_NM, positioner_limits(wavelength), configured)
    return LaserControls(
        laser, wavelength, shutter, limits, hinted_fields(wavelength), [laser], companions
    )


# --- power meter -------------------------------------------------------------------------------


@dataclass
class MeterControls:
    """A power meter and the setting of its calibration wavelength."""

    device: Any
    wavelength: Any
    """Movable taking whole nm (the 1830-C's ``Wnnnn``)."""
    wavelength_reading: Any | None
    """A signal holding the wavelength setting, read with every point (or None)."""
    limits: tuple[float, float]
    companions: Companions


def meter_controls(plan: str, argument: str, meter: Any, companions: Companions) -> MeterControls:
    require_device(plan, argument, meter, "a power meter", Readable, Triggerable)
    if is_legacy_device(meter):
        info = _legacy_parameters(meter).get("wavelength")
        if info is None or not info.settable:
            raise plan_error(
                plan,
                argument,
                meter,
                "is a legacy device without a settable 'wavelength' parameter",
                instrument=device_name(meter),
                fix="pass the power meter (a Newport 1830-C).",
            )
        setter = _legacy_setter(meter, "wavelength", companions)
        # The setting's component holds the meter's read-back after every set; it is
        # configuration of the meter, so the plan reads it as data at each point.
        if setter is meter:
            reading = None
        elif is_legacy_device(setter):
            reading = setter.signal_for("wavelength")
        else:
            reading = setter
        limits = _intersect(METER_WAVELENGTH_RANGE_NM, _legacy_limits(meter, "wavelength"))
        return MeterControls(meter, setter, reading, limits, companions)
    setter = _native_setter(meter, "wavelength")
    if setter is None:
        raise plan_error(
            plan,
            argument,
            meter,
            f"is not a power meter the plan can calibrate ({type(meter).__name__} has no "
            "settable 'wavelength' component)",
            instrument=device_name(meter),
            fix="pass a Newport1830C, or a LegacyDevice wrapping the legacy 1830-C driver.",
        )
    limits = _intersect(METER_WAVELENGTH_RANGE_NM, positioner_limits(setter))
    return MeterControls(meter, setter, setter, limits, companions)
