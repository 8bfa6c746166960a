"""A motor record over any positioner, so a stock ``ophyd.EpicsMotor`` drives it over CA.

Why it is built this way:

* caproto's record support (``record='motor'``) gives every field of the EPICS motor record
  (``<P>x.RBV``, ``.DMOV``, ``.HLM`` ... about 150 of them) with the right types, enum strings and
  ``RTYP``; this module only gives the fields that matter a meaning. ``EpicsMotor`` connects to
  VAL, RBV, OFF, DIR, FOFF, SET, VELO, ACCL, EGU, MOVN, DMOV, HLS, LLS, HLM, LLM, TDIR, STOP, HOMF
  and HOMR: every one of them is served.
* The record talks to the device only through the ophyd positioner interface (``set``, ``stop``,
  ``position``, ``limits``, ``egu``, ``moving``, an optional ``readback`` signal and ``home``),
  so ESP300 axes, Elliptec mounts, the MaiTai wavelength and legacy adapters all work unchanged.
  A read-write signal can be the positioner too (the legacy MaiTai's ``wavelength`` setting): it
  is its own read-back, and its descriptor's control limits are the record's soft limits.
  Every device call runs on the IOC's threads (:class:`~daqbridge.ioc._link.Bridge`), never on
  the loop; hardware access still goes through the device, hence through the port leases a local
  plan uses too.
* A put to VAL completes (put-callback) when the move ends, like a real motor record; DMOV goes
  to 0 before the device is asked to move, so a client never sees "done" for a move that has not
  started. A move the device refuses up front (a soft limit, a bad value) fails the put with the
  device's message; a move that fails later (a controller fault) ends with DMOV=1, MSTA's PROBLEM
  bit and a MAJOR alarm on RBV, which ``EpicsMotor`` reports as a failed status. A target outside
  HLM/LLM is refused before the device is asked (caproto checks VAL's control limits) and sets
  LVIO, like a real motor record.
* Fields the record cannot honour (offsets, direction reversal, raw steps, jogging) refuse
  writes instead of storing a number that does nothing: a scientist who sets ``.OFF`` expects
  the coordinates to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from caproto import AlarmSeverity, AlarmStatus, ChannelAlarm
from caproto._data import CannotExceedLimits
from caproto.server import PVGroup, PvpropertyDouble, pvproperty

from daqbridge.errors import DaqbridgeError, ValueRejected
from daqbridge.ioc._async import AsyncSignalAdapter
from daqbridge.ioc._link import Bridge, Pusher

log = logging.getLogger("daqbridge.ioc")

# MSTA bits (motor record documentation, 1-based bit numbers minus one)
MSTA_DIRECTION = 1 << 0
MSTA_DONE = 1 << 1
MSTA_PROBLEM = 1 << 9
MSTA_MOVING = 1 << 10
MSTA_COMM_ERR = 1 << 12
MSTA_HOMED = 1 << 14

REFRESH_PERIOD = 0.25
"""Seconds between refreshes of RBV from the device's cached position (no wire traffic)."""


class RecordRefused(DaqbridgeError):
    """A write to a motor record field that daqbridge's record does not support."""


def _field_refused(field: str, why: str, getter: Any = None) -> Any:
    """A putter refusing every write; for a field computed by ``getter`` (PREC, HOPR ...),
    writing its current value is let through, because caproto stores a getter's result through
    the putter on every read."""

    async def refuse(fields: Any, instance: Any, value: Any) -> Any:
        if getter is not None and value == await getter(fields, instance):
            return value
        name = fields.parent.pvname
        raise RecordRefused(
            f"{name}.{field} = {value!r} refused: {why}",
            resource=name,
            fix="drive the axis with VAL (or RLV, TWF/TWR) and STOP; see docs/across_machines.md.",
        )

    return refuse


class PositionerLink:
    """What a motor record needs from a positioner, read defensively from its ophyd interface."""

    def __init__(
        self,
        device: Any,
        *,
        description: str = "",
        limits: tuple[float, float] | None = None,
    ) -> None:
        self.device = device
        self._limits = limits
        self.name = str(getattr(device, "name", "positioner"))
        self.description = description or self.name
        self.readback = self._readback_signal()
        self.velocity = self._velocity_signal()

    def _readback_signal(self) -> Any:
        from ophyd import Signal

        if isinstance(self.device, Signal | AsyncSignalAdapter):
            return self.device  # a setting moved as a positioner is its own read-back
        rb = getattr(self.device, "readback", None)
        if isinstance(rb, Signal | AsyncSignalAdapter):
            return rb
        signal_for = getattr(self.device, "signal_for", None)
        settable = getattr(self.device, "settable", None)
        if callable(signal_for) and isinstance(settable, str):
            with contextlib.suppress(KeyError):
                return signal_for(settable)
        return None

    def _velocity_signal(self) -> Any:
        """The device's velocity setting when it is in EGU/s (what VELO means), else None."""
        from ophyd import Signal

        sig = getattr(self.device, "velocity", None)
        if not isinstance(sig, Signal | AsyncSignalAdapter):
            return None
        units = (sig.describe().get(sig.name, {}) or {}).get("units")
        return sig if self.egu and units == f"{self.egu}/s" else None

    @property
    def position(self) -> float:
        try:
            if self.readback is self.device:
                value = self.device.get()
            else:
                value = self.device.position
        except Exception:  # noqa: BLE001 - a disconnected device has no position
            return math.nan
        try:
            return float(value)
        except (TypeError, ValueError):
            return math.nan

    @property
    def egu(self) -> str:
        egu = getattr(self.device, "egu", None)
        if not egu and self.readback is not None:
            egu = (self.readback.describe().get(self.readback.name, {}) or {}).get("units")
        return str(egu or "")

    @property
    def precision(self) -> int:
        for source in (self.device, self.readback):
            value = getattr(source, "precision", None)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return 3

    @property
    def limits(self) -> tuple[float, float] | None:
        """(low, high) soft limits, None when the device has none (ophyd's (0, 0))."""
        limits = self._limits or _given(getattr(self.device, "limits", None))
        if limits is None and self.readback is not None:
            desc = self.readback.describe().get(self.readback.name, {}) or {}
            control = (desc.get("limits") or {}).get("control") or {}
            if "low" in control and "high" in control:
                limits = (control["low"], control["high"])
        if limits is None:
            return None
        low, high = (float(v) for v in limits)
        if low == high == 0:
            return None
        return low, high

    @property
    def moving(self) -> bool:
        return bool(getattr(self.device, "moving", False))

    @property
    def can_home(self) -> bool:
        return callable(getattr(self.device, "home", None))

    def set(self, value: float) -> Any:
        return self.device.set(value)

    def stop(self) -> None:
        stop = getattr(self.device, "stop", None)
        if stop is None:
            return  # a plain signal's set ends by itself: nothing to interrupt
        try:
            stop(success=False)
        except TypeError:
            stop()

    def home(self) -> Any:
        return self.device.home()

    def subscribe(self, callback: Any) -> tuple[Any, Any] | None:
        """Readback updates from the device's threads; returns what unsubscribe needs."""
        from ophyd.positioner import PositionerBase

        if self.readback is not None:
            return self.readback, self.readback.subscribe(callback, run=False)
        if isinstance(self.device, PositionerBase):
            dev = self.device
            return dev, dev.subscribe(callback, event_type=dev.SUB_READBACK, run=False)
        return None


class _TargetValue(PvpropertyDouble):
    """VAL: caproto refuses a value outside the control limits (HLM/LLM) before the putter runs,
    so the refusal is reported here, with LVIO set as a motor record does."""

    async def verify_value(self, value: Any) -> Any:
        try:
            return await super().verify_value(value)
        except CannotExceedLimits as exc:
            raise await self.group.refuse_outside_limits(value) from exc


class MotorRecord(PVGroup):
    """One positioner as a motor record at the group's prefix (``<P><id>``, fields ``.RBV`` ...)."""

    motor = pvproperty(
        name="",
        value=0.0,
        dtype=_TargetValue,
        record="motor",
        precision=3,
        doc="Motor record: VAL is the target position in EGU",
    )

    # Fields whose writes have a meaning here; every other writable field refuses writes.
    _HANDLED = {
        "stop": "STOP",
        "stop_pause_move_go": "SPMG",
        "user_high_limit": "HLM",
        "user_low_limit": "LLM",
        "dial_high_limit": "DHLM",
        "dial_low_limit": "DLLM",
        "velocity": "VELO",
        "home_forward": "HOMF",
        "home_reverse": "HOMR",
        "relative_value": "RLV",
        "dial_desired_value": "DVAL",
        "tweak_motor_forward": "TWF",
        "tweak_motor_reverse": "TWR",
        "tweak_step_size": "TWV",
        "enable_control": "CNEN",
        "description": "DESC",
        "user_offset": "OFF",
        "user_direction": "DIR",
        "offset_freeze_switch": "FOFF",
        "set_use_switch": "SET",
        "alarm_acknowledge_severity": "ACKS",
        "alarm_acknowledge_transient": "ACKT",
    }

    def __init__(
        self,
        *args: Any,
        link: PositionerLink,
        bridge: Bridge,
        pusher: Pusher,
        errors: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.link = link
        self.bridge = bridge
        self.pusher = pusher
        self.errors = errors
        self._move_gen = 0
        self._stop_requested = False
        self._problem = False
        self._homed = False
        self._subscription: tuple[Any, Any] | None = None
        self._device_limits = link.limits
        # The record's fields share one alarm, which every field write resets; a failed move
        # must stay visible on RBV (EpicsMotor reads its severity when DMOV goes to 1).
        self.fields.user_readback_value.alarm = ChannelAlarm()

    # --- the record's fields ----------------------------------------------------------------

    @property
    def fields(self) -> Any:
        return self.motor.field_inst

    async def prime(self) -> None:
        """Initial values from the device, written before clients can connect."""
        f, link = self.fields, self.link
        prec = link.precision
        egu = link.egu[:7]  # DBR units hold 8 bytes
        await self.motor.write_metadata(precision=prec, units=egu)
        for prop in f.pvdb.values():
            if hasattr(prop, "precision") and prop.data_type.name == "DOUBLE":
                await prop.write_metadata(precision=prec)
        for prop in (
            f.user_readback_value,
            f.dial_readback_value,
            f.dial_desired_value,
            f.user_high_limit,
            f.user_low_limit,
            f.dial_high_limit,
            f.dial_low_limit,
            f.relative_value,
            f.tweak_step_size,
            f.difference_dval_drbv,
            f.user_offset,
        ):
            await prop.write_metadata(units=egu)
        await f.velocity.write_metadata(units=f"{egu}/s"[:7])
        # verify_value=False: these are the IOC's own writes, not clients' (no putter runs).
        await f.description.write(link.description[:40], verify_value=False)
        await f.engineering_units.write(link.egu[:15], verify_value=False)
        await f.done_moving_to_value.write(1)
        await f.motor_is_moving.write(0)
        await f.limit_violation.write(0)  # caproto's field starts at 1: no violation happened
        await f.enable_control.write("Enable", verify_value=False)
        await f.stop_pause_move_go.write("Go", verify_value=False)
        await self._write_limits(self._device_limits)
        if link.velocity is not None:
            velo = _finite(link.velocity.get())
            if velo is not None:
                await f.velocity.write(velo, verify_value=False)
        pos = link.position
        if math.isfinite(pos):
            await self.motor.write(pos, verify_value=False)
            await f.dial_desired_value.write(pos, verify_value=False)
        await self._write_readback(pos)
        await self._write_status()

    async def _write_limits(self, limits: tuple[float, float] | None) -> None:
        f = self.fields
        low, high = limits if limits is not None else (0.0, 0.0)
        await self.motor.write_metadata(
            lower_ctrl_limit=low, upper_ctrl_limit=high, lower_disp_limit=low, upper_disp_limit=high
        )
        for field, value in (
            (f.user_low_limit, low),
            (f.dial_low_limit, low),
            (f.user_high_limit, high),
            (f.dial_high_limit, high),
        ):
            await field.write(value, verify_value=False)

    async def _write_readback(self, pos: float, timestamp: float | None = None) -> None:
        f = self.fields
        ts = timestamp or time.time()
        # verify_value=False: no limit check, which would also clear RBV's alarm
        await f.user_readback_value.write(pos, timestamp=ts, verify_value=False)
        await f.dial_readback_value.write(pos, timestamp=ts, verify_value=False)
        if math.isfinite(pos) and math.isfinite(self.motor.value):
            diff = self.motor.value - pos
            await f.difference_dval_drbv.write(diff, timestamp=ts, verify_value=False)

    async def _write_status(self) -> None:
        f = self.fields
        moving = bool(f.motor_is_moving.value)
        msta = MSTA_MOVING if moving else MSTA_DONE
        if f.direction_of_travel.value:
            msta |= MSTA_DIRECTION
        if self._problem:
            msta |= MSTA_PROBLEM
        if self._homed:
            msta |= MSTA_HOMED
        await f.motor_status.write(msta)

    async def _set_alarm(self, failed: bool) -> None:
        rbv = self.fields.user_readback_value
        if failed:
            await rbv.alarm.write(status=AlarmStatus.STATE, severity=AlarmSeverity.MAJOR_ALARM)
        elif rbv.alarm.severity != AlarmSeverity.NO_ALARM:
            await rbv.alarm.write(status=AlarmStatus.NO_ALARM, severity=AlarmSeverity.NO_ALARM)

    # --- motion -----------------------------------------------------------------------------

    async def move_to(self, target: float) -> float:
        """Start a move, keep DMOV/MOVN/RBV current, and return when it has ended."""
        f = self.fields
        self._move_gen += 1
        gen = self._move_gen
        self._stop_requested = False
        await f.limit_violation.write(0)
        current = self.link.position
        up = not math.isfinite(current) or target >= current
        await f.direction_of_travel.write(1 if up else 0)
        await f.done_moving_to_value.write(0)
        await f.motor_is_moving.write(1)
        await self._write_status()
        try:
            spmg = f.stop_pause_move_go.value
            if spmg not in ("Go", "Move"):
                raise RecordRefused(
                    f"{self.motor.pvname} is in SPMG={spmg}: moves are held.",
                    resource=self.motor.pvname,
                    fix=f"write 'Go' to {self.motor.pvname}.SPMG first.",
                )
            status = await self.bridge.call(self.link.set, target)
        except BaseException as exc:
            # A refused move ends "done with a problem": EpicsMotor (which never sees the put's
            # error) then fails its status instead of reporting a move that did not happen.
            if isinstance(exc, ValueRejected):
                await f.limit_violation.write(1)
            await self._finish(gen, failed=True)
            self._report(exc, "refused the move")
            raise
        failed = False
        try:
            await self.bridge.wait(status, what=f"move of {self.link.name} to {target:g}")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - reported through the record's alarm
            failed = gen == self._move_gen and not self._stop_requested
            if failed:
                self._report(exc, "move failed")
        await self._finish(gen, failed=failed)
        return target

    async def refuse_outside_limits(self, value: Any) -> ValueRejected:
        """A target outside the soft limits: LVIO=1 and nothing is sent to the device; returns
        the error the put fails with (naming the positioner, the limits and what to do)."""
        f = self.fields
        low, high = self.motor.lower_ctrl_limit, self.motor.upper_ctrl_limit
        target = value[0] if isinstance(value, list | tuple) and len(value) == 1 else value
        refusal = ValueRejected(
            f"{self.motor.pvname} = {target!r} is outside the soft limits [{low:g}, {high:g}] "
            f"(LLM, HLM) of {self.link.name}; nothing was sent to the device.",
            instrument=self.link.name,
            resource=self.motor.pvname,
            value=target,
            limit=(low, high),
            fix=f"choose a target between {low:g} and {high:g}; the lab profile sets the "
            "widest limits.",
        )
        await f.limit_violation.write(1)
        self._report(refusal, "refused the move")
        return refusal

    async def _finish(self, gen: int, *, failed: bool) -> None:
        if gen != self._move_gen:
            return  # superseded by a newer move: that one reports the end
        f = self.fields
        await self._write_readback(self.link.position)
        self._problem = failed
        await self._set_alarm(failed)
        await f.motor_is_moving.write(0)
        await self._write_status()
        await f.done_moving_to_value.write(1)

    def _report(self, exc: BaseException, what: str) -> None:
        log.warning("%s: %s: %s", self.link.name, what, exc)
        if self.errors is not None:
            self.errors(self.link.name, exc)

    async def stop_motion(self) -> None:
        self._stop_requested = True
        await self.bridge.call(self.link.stop)

    # --- pv hooks ------------------------------------------------------------------------------

    @motor.putter
    async def motor(self, instance: Any, value: float) -> float:
        await self.move_to(float(value))
        return value

    @motor.startup
    async def motor(self, instance: Any, async_lib: Any) -> None:
        """Follow the device: pushed readbacks, plus a cheap refresh of the cached position."""

        def on_readback(value: Any = None, timestamp: float | None = None, **_: Any) -> None:
            pos = _finite(value)
            if pos is not None:
                self.pusher.push(self.fields.user_readback_value, pos, timestamp)
                self.pusher.push(self.fields.dial_readback_value, pos, timestamp)

        self._subscription = self.link.subscribe(on_readback)
        try:
            while True:
                await asyncio.sleep(REFRESH_PERIOD)
                pos = self.link.position
                rbv = self.fields.user_readback_value.value
                if math.isfinite(pos) and pos != rbv:
                    await self._write_readback(pos)
        finally:
            self.unsubscribe()

    def unsubscribe(self) -> None:
        sub, self._subscription = self._subscription, None
        if sub is not None:
            obj, cid = sub
            with contextlib.suppress(Exception):
                obj.unsubscribe(cid)

    # STOP: 1 stops the motion; the field returns to 0 like the real record's.
    @motor.fields.stop.putter
    async def motor(fields: Any, instance: Any, value: int) -> int:
        if value:
            await fields.parent.group.stop_motion()
        return 0

    @motor.fields.stop_pause_move_go.putter
    async def motor(fields: Any, instance: Any, value: str) -> str:
        if value in ("Stop", "Pause"):
            await fields.parent.group.stop_motion()
        return value

    @motor.fields.user_high_limit.putter
    async def motor(fields: Any, instance: Any, value: float) -> float:
        group = fields.parent.group
        await group.change_limit(high=value)
        return value

    @motor.fields.user_low_limit.putter
    async def motor(fields: Any, instance: Any, value: float) -> float:
        await fields.parent.group.change_limit(low=value)
        return value

    @motor.fields.dial_high_limit.putter
    async def motor(fields: Any, instance: Any, value: float) -> float:
        await fields.parent.group.change_limit(high=value)
        return value

    @motor.fields.dial_low_limit.putter
    async def motor(fields: Any, instance: Any, value: float) -> float:
        await fields.parent.group.change_limit(low=value)
        return value

    @motor.fields.velocity.putter
    async def motor(fields: Any, instance: Any, value: float) -> float:
        group = fields.parent.group
        sig = group.link.velocity
        if sig is None:
            await _field_refused(
                "VELO", "this positioner's speed is not settable in EGU/s from the IOC"
            )(fields, instance, value)
        status = await group.bridge.call(sig.set, value)
        await group.bridge.wait(status, what=f"velocity of {group.link.name}")
        return _finite(sig.get()) or value

    @motor.fields.home_forward.putter
    async def motor(fields: Any, instance: Any, value: int) -> int:
        if value:
            await fields.parent.group.home("HOMF")
        return 0

    @motor.fields.home_reverse.putter
    async def motor(fields: Any, instance: Any, value: int) -> int:
        if value:
            await fields.parent.group.home("HOMR")
        return 0

    @motor.fields.relative_value.putter
    async def motor(fields: Any, instance: Any, value: float) -> float:
        group = fields.parent.group
        await group.put_target(group.link.position + value)
        return 0.0

    @motor.fields.dial_desired_value.putter
    async def motor(fields: Any, instance: Any, value: float) -> float:
        await fields.parent.group.put_target(value)
        return value

    @motor.fields.tweak_motor_forward.putter
    async def motor(fields: Any, instance: Any, value: int) -> int:
        if value:
            group = fields.parent.group
            await group.put_target(group.link.position + fields.tweak_step_size.value)
        return 0

    @motor.fields.tweak_motor_reverse.putter
    async def motor(fields: Any, instance: Any, value: int) -> int:
        if value:
            group = fields.parent.group
            await group.put_target(group.link.position - fields.tweak_step_size.value)
        return 0

    @motor.fields.enable_control.putter
    async def motor(fields: Any, instance: Any, value: str) -> str:
        if value != "Enable":
            await _field_refused("CNEN", "the motor's power is managed by its driver")(
                fields, instance, value
            )
        return value

    @motor.fields.user_offset.putter
    async def motor(fields: Any, instance: Any, value: float) -> float:
        if value != 0:
            await _field_refused("OFF", "user and dial coordinates are the same here")(
                fields, instance, value
            )
        return value

    @motor.fields.user_direction.putter
    async def motor(fields: Any, instance: Any, value: str) -> str:
        if value != "Pos":
            await _field_refused("DIR", "the direction cannot be reversed here")(
                fields, instance, value
            )
        return value

    @motor.fields.set_use_switch.putter
    async def motor(fields: Any, instance: Any, value: str) -> str:
        if value != "Use":
            await _field_refused(
                "SET", "redefining the position is done on the controller, not over CA"
            )(fields, instance, value)
        return value

    # --- helpers for the field hooks --------------------------------------------------------

    async def put_target(self, target: float) -> None:
        """A move requested through another field: VAL follows, like the real record."""
        await self.motor.write(float(target))

    async def home(self, field: str) -> None:
        if not self.link.can_home:
            raise RecordRefused(
                f"{self.motor.pvname}.{field}: {self.link.name} has no homing routine.",
                resource=self.motor.pvname,
                fix="home it on the controller, or use a positioner with a home() method.",
            )
        f = self.fields
        self._move_gen += 1
        gen = self._move_gen
        self._stop_requested = False
        await f.done_moving_to_value.write(0)
        await f.motor_is_moving.write(1)
        failed = False
        try:
            status = await self.bridge.call(self.link.home)
            await self.bridge.wait(status, what=f"homing of {self.link.name}")
            self._homed = True
        except BaseException as exc:  # noqa: BLE001 - reported through the alarm
            if isinstance(exc, asyncio.CancelledError):
                raise
            failed = not self._stop_requested
            self._report(exc, "homing failed")
        await self._finish(gen, failed=failed)
        with contextlib.suppress(Exception):
            await self.motor.write(self.link.position, verify_value=False)

    async def change_limit(self, *, low: float | None = None, high: float | None = None) -> None:
        """Narrow (or restore) the soft limits; never beyond the profile's limits."""
        f = self.fields
        cur_low, cur_high = f.user_low_limit.value, f.user_high_limit.value
        new_low = cur_low if low is None else float(low)
        new_high = cur_high if high is None else float(high)
        dev = self._device_limits
        if dev is not None:
            dev_low, dev_high = dev
            if new_low < dev_low or new_high > dev_high:
                raise RecordRefused(
                    f"{self.motor.pvname}: limits [{new_low:g}, {new_high:g}] are outside the "
                    f"device's limits [{dev_low:g}, {dev_high:g}] set in the lab profile.",
                    resource=self.motor.pvname,
                    fix="choose limits inside the profile's, or change the profile and restart "
                    "the IOC.",
                )
        if not (new_low == new_high == 0) and new_low >= new_high:
            raise RecordRefused(
                f"{self.motor.pvname}: low limit {new_low:g} must be below high limit "
                f"{new_high:g}.",
                resource=self.motor.pvname,
                fix="write HLM and LLM so that LLM < HLM.",
            )
        await self.motor.write_metadata(
            lower_ctrl_limit=new_low,
            upper_ctrl_limit=new_high,
            lower_disp_limit=new_low,
            upper_disp_limit=new_high,
        )
        # Both spellings of each limit follow (user == dial here); the field being written
        # gets the same value from its putter's return.
        for field, value in (
            (f.user_low_limit, new_low),
            (f.dial_low_limit, new_low),
            (f.user_high_limit, new_high),
            (f.dial_high_limit, new_high),
        ):
            if field.value != value:
                await field.write(value, verify_value=False)


def _given(limits: Any) -> tuple[float, float] | None:
    """``limits`` unless it is ophyd's "none" ((0, 0), what every plain Signal reports), so the
    descriptor's control limits are used instead."""
    try:
        low, high = (float(v) for v in limits)
    except (TypeError, ValueError):
        return None
    return None if low == high == 0 else (low, high)


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _install_refusals() -> None:
    """Every writable motor field not handled above refuses writes (see module docstring)."""
    from caproto.server.records import MotorFields

    spec = MotorRecord.motor.fields
    handled = set(MotorRecord._HANDLED)
    for attr, prop in MotorFields._pvs_.items():
        if attr in handled or prop.pvspec.read_only:
            continue
        getattr(spec, attr).putter(
            _field_refused(
                prop.pvspec.name,
                "this field has no meaning for daqbridge's motor records",
                prop.pvspec.get,
            )
        )


_install_refusals()
