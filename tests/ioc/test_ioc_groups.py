"""The PV groups in-process (no network): naming, writability, failures and their reporting."""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from caproto import AlarmSeverity
from ophyd import Component as Cpt
from ophyd import Device, Kind, Signal, SignalRO
from ophyd.sim import SynAxis
from ophyd.status import Status

from daqbridge.bridge.legacy_adapter import LegacyDevice
from daqbridge.devices.core import call_sync
from daqbridge.errors import ConfigError, InstrumentFault, ValueRejected
from daqbridge.ioc import LabIOC, RecordRefused, SignalPV
from daqbridge.ioc._server import is_writable
from daqbridge.legacy import (
    ChannelInfo,
    Command,
    CommandResult,
    LegacyInstrument,
    LegacyRuntime,
    Measurement,
    ParameterInfo,
)


class Axis(SynAxis):
    """A positioner with soft limits that refuses and fails like a real driver can."""

    fail_next = False

    @property
    def limits(self):
        return (-10.0, 10.0)

    def set(self, value, **kwargs):
        if value > 8:
            raise ValueRejected(f"{value} is beyond the hardware stop", instrument=self.name)
        if self.fail_next:
            self.fail_next = False
            st = Status()
            st.set_exception(InstrumentFault("following error", code=7, instrument=self.name))
            return st
        return super().set(value, **kwargs)


class Measured(Signal):
    """A reading its device refreshes: read-only to everyone else (ophyd's write_access)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._metadata["write_access"] = False

    def update(self, value):
        self.put(value, force=True)


class Meter(Device):
    power = Cpt(Measured, value=1.5, kind=Kind.hinted)  # a reading: read-only type
    wavelength = Cpt(Signal, value=800, kind=Kind.config)  # ophyd's Signal: read-write
    identity = Cpt(SignalRO, value="METER 1.0", kind=Kind.config)
    hidden = Cpt(Signal, value=0, kind=Kind.omitted)
    broken = False

    def trigger(self):
        st = Status(obj=self)
        if self.broken:
            st.set_exception(InstrumentFault("detector saturated", code=3, instrument=self.name))
        else:
            self.power.update(self.power.get() + 1)
            st.set_finished()
        return st


def _run(coro):
    return asyncio.run(coro)


async def _primed(ioc: LabIOC) -> asyncio.Task:
    await ioc.prime()
    return asyncio.create_task(ioc.pusher.run())


@pytest.fixture
def lab():
    axis = Axis(name="stage_x", egu="mm")
    meter = Meter(name="meter")
    ioc = LabIOC({"stage_x": axis, "meter": meter}, prefix="T:", poll_period=0)
    yield ioc, axis, meter
    ioc.close()


def test_names_kinds_and_layout(lab):
    ioc, _, _ = lab
    assert ioc.kinds == {"stage_x": "motor", "meter": "detector"}
    records = ioc.record_names()
    assert "T:stage_x" in records
    assert {"T:meter:power", "T:meter:wavelength", "T:meter:identity"} <= set(records)
    assert "T:meter:hidden" not in records  # omitted signals are not served
    names = ioc.pv_names()
    assert {"T:stage_x.RBV", "T:stage_x.VAL", "T:stage_x.DMOV", "T:stage_x.HLM"} <= set(names)
    layout = ioc.groups["meter"].layout
    assert layout["signals"]["wavelength"]["writable"] is True
    assert layout["signals"]["power"]["writable"] is False
    assert json.loads(json.dumps(layout)) == layout


def test_bad_prefixes_and_poll_periods_are_refused():
    for prefix in ("", "A B", "A.B", 'A"'):
        with pytest.raises(ConfigError, match="not usable"):
            LabIOC({}, prefix=prefix)
    with pytest.raises(ConfigError, match=">= 0"):
        LabIOC({}, poll_period=-1)


def test_writability_is_the_signal_type_not_its_class_name():
    meter = Meter(name="m")
    assert is_writable(meter.wavelength)
    assert not is_writable(meter.power) and not is_writable(meter.identity)

    class _Renamed(Signal):  # a setting under any class name
        pass

    class _RenamedReading(Measured):  # a reading under any class name
        pass

    assert is_writable(_Renamed(name="v"))
    assert not is_writable(_RenamedReading(name="r"))


def test_signal_pv_conversions():
    spec = SignalPV("a", ":a", None, "number")
    assert spec.to_pv(None) != spec.to_pv(None)  # NaN
    assert spec.to_pv(2) == 2.0
    text = SignalPV("t", ":t", None, "string")
    assert text.to_pv("x" * 500) == "x" * 255
    arr = SignalPV("r", ":r", None, "array", shape=(4,))
    assert arr.to_pv([1, 2, 3, 4, 5]) == [1.0, 2.0, 3.0, 4.0]
    flag = SignalPV("f", ":f", None, "boolean")
    assert flag.from_pv([1]) is True


def test_move_updates_readback_and_done_flags(lab):
    ioc, axis, _ = lab

    async def scenario():
        pusher = await _primed(ioc)
        rec = ioc.groups["stage_x"]
        f = rec.fields
        assert f.done_moving_to_value.value == 1
        assert f.user_high_limit.value == 10.0 and f.engineering_units.value == "mm"
        await rec.motor.write(3.0)  # the putter runs the move and returns at its end
        assert axis.position == 3.0
        assert f.user_readback_value.value == 3.0
        assert f.done_moving_to_value.value == 1 and f.motor_is_moving.value == 0
        assert f.motor_status.value & (1 << 1) and not f.motor_status.value & (1 << 9)
        pusher.cancel()

    _run(scenario())


def test_refused_and_failed_moves_are_reported(lab):
    ioc, axis, _ = lab

    async def scenario():
        pusher = await _primed(ioc)
        rec = ioc.groups["stage_x"]
        f = rec.fields
        with pytest.raises(ValueRejected, match="hardware stop"):
            await rec.motor.write(9.0)
        assert f.limit_violation.value == 1 and f.done_moving_to_value.value == 1
        assert f.user_readback_value.alarm.severity == AlarmSeverity.MAJOR_ALARM
        axis.fail_next = True
        await rec.motor.write(2.0)  # fails after it started: DMOV=1 with a problem
        assert f.done_moving_to_value.value == 1
        assert f.motor_status.value & (1 << 9)
        assert f.user_readback_value.alarm.severity == AlarmSeverity.MAJOR_ALARM
        await rec.motor.write(1.0)  # a good move clears the alarm
        assert f.user_readback_value.alarm.severity == AlarmSeverity.NO_ALARM
        assert not f.motor_status.value & (1 << 9)
        await asyncio.sleep(0)
        assert len(ioc.ioc_group.pending) == 2  # both counted for <P>ioc:Errors
        pusher.cancel()

    _run(scenario())


def test_spmg_stop_holds_moves_and_limits_stay_inside_the_profile(lab):
    ioc, axis, _ = lab

    async def scenario():
        await ioc.prime()
        rec = ioc.groups["stage_x"]
        f = rec.fields
        await f.stop_pause_move_go.write("Stop")
        with pytest.raises(RecordRefused, match="SPMG"):
            await rec.motor.write(1.0)
        await f.stop_pause_move_go.write("Go")
        await rec.motor.write(1.0)
        with pytest.raises(RecordRefused, match="outside the device's limits"):
            await f.user_high_limit.write(20.0)
        await f.user_high_limit.write(5.0)
        assert rec.motor.upper_ctrl_limit == 5.0 and f.dial_high_limit.value == 5.0
        with pytest.raises(RecordRefused, match="below"):
            await f.user_low_limit.write(6.0)
        with pytest.raises(RecordRefused, match="VELO"):
            await f.velocity.write(1.0)  # SynAxis has no settable velocity in EGU/s

    _run(scenario())


def test_trigger_failure_is_reported_not_raised(lab):
    ioc, _, meter = lab

    async def scenario():
        await ioc.prime()
        group = ioc.groups["meter"]
        await group.trigger_pv.write(1)
        assert group.trigger_pv.value == 0
        assert group.channels["power"].value == 2.5  # the fresh reading
        meter.broken = True
        await group.trigger_pv.write(1)
        assert group.trigger_pv.value == -1
        assert "saturated" in group.status_pv.value
        assert group.channels["power"].alarm.severity == AlarmSeverity.INVALID_ALARM
        meter.broken = False
        await group.trigger_pv.write(1)
        assert group.status_pv.value == "OK"
        assert group.channels["power"].alarm.severity == AlarmSeverity.NO_ALARM

    _run(scenario())


def test_setting_write_goes_to_the_device(lab):
    ioc, _, meter = lab

    async def scenario():
        await ioc.prime()
        group = ioc.groups["meter"]
        await group.channels["wavelength"].write(900)
        assert meter.wavelength.get() == 900
        assert group.channels["wavelength"].value == 900

    _run(scenario())


class Amplifier(LegacyInstrument):
    """A legacy instrument with two settable channels; its gain lands a hair off the request
    (within the adapter's tolerance), as a DAC's step would."""

    STEP = 4e-7

    def __init__(self) -> None:
        super().__init__("amp")
        self.gain = 1.0
        self.mode = 0

    def connect(self) -> None:
        pass

    def disconnect(self) -> None:
        pass

    def poll(self) -> list[Measurement]:
        return []

    def handle(self, command: Command) -> CommandResult:
        if command.kind == "set":
            value = self.check_value(command.name, command.value)
            if command.name == "gain":
                self.gain = value * (1 + self.STEP)
            else:
                self.mode = value
            return CommandResult.success(getattr(self, command.name))
        return CommandResult.success(getattr(self, command.name))

    def channels(self) -> dict[str, ChannelInfo]:
        return {
            "gain": ChannelInfo("gain", "", "number"),
            "mode": ChannelInfo("mode", "", "integer"),
        }

    def parameters(self) -> dict[str, ParameterInfo]:
        return {
            "gain": ParameterInfo("gain", ""),
            "mode": ParameterInfo("mode", "", choices=(0, 1), dtype="integer"),
        }


@pytest.fixture
def amplifier(RE):
    rt = LegacyRuntime()
    inst = Amplifier()
    rt.add(inst, 0)
    rt.start()
    assert rt.wait_running(10), rt.health()
    device = LegacyDevice(rt, "amp", name="amp")  # as the runtime wraps it: no set() of its own
    call_sync(lambda: device.connect(timeout=10), timeout=11)  # on the RunEngine's loop
    ioc = LabIOC({"amp": device}, prefix="A:", poll_period=0)
    yield ioc, inst
    ioc.close()
    device.close()
    rt.stop(5)


def test_a_legacy_setting_written_over_ca_shows_what_the_instrument_reported(amplifier):
    ioc, inst = amplifier

    async def scenario():
        await ioc.prime()
        group = ioc.groups["amp"]
        await group.channels["gain"].write(10.0)
        assert inst.gain != 10.0  # the instrument landed a step off, within tolerance
        assert group.channels["gain"].value == inst.gain  # shown: its report, not the command

    _run(scenario())


def test_a_target_outside_the_soft_limits_sets_lvio_and_never_reaches_the_device(lab):
    ioc, axis, _ = lab

    async def scenario():
        await ioc.prime()
        rec = ioc.groups["stage_x"]
        f = rec.fields
        assert f.limit_violation.value == 0  # nothing was refused yet
        await rec.motor.write(1.0)
        with pytest.raises(ValueRejected) as refused:
            await rec.motor.write(12.0)  # refused by VAL's limits, before the putter
        assert f.limit_violation.value == 1 and f.done_moving_to_value.value == 1
        assert axis.position == 1.0
        assert "outside the soft limits [-10, 10]" in str(refused.value)
        await rec.motor.write(2.0)
        assert f.limit_violation.value == 0 and axis.position == 2.0

    _run(scenario())


def test_read_only_access_and_peer_filter():
    from caproto import AccessRights

    meter = Meter(name="meter")
    ioc = LabIOC({"meter": meter}, prefix="R:", poll_period=0, read_only=True)
    channel = ioc.pvdb["R:meter:wavelength"]
    assert channel.check_access("host", "user") == AccessRights.READ
    ioc.close()

    ioc = LabIOC({"meter": meter}, prefix="W:", poll_period=0, write_from=["10.0.0.5"])
    channel = ioc.pvdb["W:meter:wavelength"]

    async def scenario():
        from caproto import ChannelType
        from caproto._data import Forbidden

        with pytest.raises(Forbidden, match="10.0.0.5"):
            await channel.auth_write(
                "host", "user", [950], ChannelType.LONG, None, user_address=("10.0.0.9", 1)
            )
        await channel.auth_write(
            "host", "user", [950], ChannelType.LONG, None, user_address=("10.0.0.5", 1)
        )
        assert meter.wavelength.get() == 950

    _run(scenario())
    ioc.close()


def test_non_ophyd_devices_are_skipped_with_a_reason():
    ioc = LabIOC({"bus": object(), "m": Axis(name="m")}, prefix="S:", poll_period=0)
    assert "not an ophyd device" in ioc.skipped["bus"]
    assert ioc.kinds == {"m": "motor"}
    assert not math.isnan(len(ioc.pvdb))
    ioc.close()
