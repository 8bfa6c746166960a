"""A stock ophyd.EpicsMotor drives the IOC's motor records; scans run against the IOC's meter."""

from __future__ import annotations

import math
import time

import pytest
from bluesky import RunEngine
from event_model import DocumentNames, schema_validators

from tests.ioc.conftest import PREFIX, caget, caput

# Every PV ophyd's EpicsMotor connects to (ophyd/epics_motor.py), plus what caproto's record adds.
EPICS_MOTOR_FIELDS = (
    "RBV VAL OFF DIR FOFF SET VELO ACCL EGU MOVN DMOV HLS LLS HLM LLM TDIR STOP HOMF HOMR "
    "MSTA SPMG CNEN DESC PREC RTYP"
).split()


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def stage_x(ioc):
    from daqbridge.devices.epics import DaqbridgeEpicsMotor

    motor = DaqbridgeEpicsMotor(f"{PREFIX}sim_stage_x", name="stage_x")
    motor.wait_for_connection(timeout=10)
    yield motor
    motor.destroy()


def test_every_epics_motor_field_is_served(ioc, ca_context):
    pvs = ca_context.get_pvs(*(f"{PREFIX}sim_stage_x.{f}" for f in EPICS_MOTOR_FIELDS))
    for pv in pvs:
        pv.wait_for_connection(timeout=10)
    values = {f: pv.read().data for f, pv in zip(EPICS_MOTOR_FIELDS, pvs, strict=True)}
    assert values["RTYP"][0] == b"motor"
    assert values["EGU"][0] == b"mm"
    assert values["HLM"][0] == 25.0 and values["LLM"][0] == -25.0
    assert values["DMOV"][0] == 1 and values["MOVN"][0] == 0
    assert values["MSTA"][0] & (1 << 1)  # DONE bit


def test_epics_motor_connects_with_profile_limits_and_units(stage_x):
    assert stage_x.egu == "mm"
    assert stage_x.limits == (-25.0, 25.0)
    assert stage_x.connected
    assert math.isfinite(stage_x.position)


def test_scan_with_the_iocs_power_meter_as_detector(ioc, stage_x):
    from daqbridge.devices.epics import EpicsPowerMeter

    meter = EpicsPowerMeter(f"{PREFIX}sim_meter", name="meter")
    meter.wait_for_connection(timeout=10)
    RE = RunEngine({})
    docs: list[tuple[str, dict]] = []
    import bluesky.plans as bp

    RE(bp.scan([meter], stage_x, -1, 1, 5), lambda name, doc: docs.append((name, doc)))
    for name, doc in docs:
        schema_validators[DocumentNames(name)].validate(doc)
    events = [doc for name, doc in docs if name == "event"]
    assert [round(e["data"]["stage_x"], 6) for e in events] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert all(math.isfinite(e["data"]["meter_power"]) for e in events)
    (descriptor,) = [doc for name, doc in docs if name == "descriptor"]
    assert descriptor["data_keys"]["stage_x"]["units"] == "mm"
    assert descriptor["data_keys"]["meter_power"]["units"] == "W"
    stop = docs[-1][1]
    assert stop["exit_status"] == "success"
    meter.destroy()


def test_zero_length_move_completes(stage_x):
    stage_x.set(2.0).wait(timeout=20)
    t0 = time.monotonic()
    status = stage_x.set(2.0)
    status.wait(timeout=20)
    assert status.success
    assert stage_x.position == pytest.approx(2.0)
    assert time.monotonic() - t0 < 20


def test_put_outside_the_limits_is_refused_by_the_ioc(ioc):
    from caproto import ErrorResponseReceived

    before = caget(f"{PREFIX}sim_stage_x.RBV").data[0]
    with pytest.raises(ErrorResponseReceived, match="ECA_PUTFAIL"):
        caput(f"{PREFIX}sim_stage_x", [100.0])
    assert caget(f"{PREFIX}sim_stage_x.RBV").data[0] == before
    assert caget(f"{PREFIX}sim_stage_x.DMOV").data[0] == 1


def test_stop_ends_a_move_short_of_its_target(ioc, stage_x):
    stage_x.set(0.0).wait(timeout=20)
    velo = stage_x.velocity.get()
    stage_x.velocity.set(0.5).wait(timeout=10)  # 20 mm at 0.5 mm/s, 20x sim speed: 2 s
    try:
        assert caget(f"{PREFIX}sim_stage_x.VELO").data[0] == 0.5
        status = stage_x.set(20.0)
        _wait(lambda: stage_x.moving, 10, "the move to start")
        time.sleep(0.2)
        stage_x.stop()
        # like a real motor record: the move ends (DMOV=1) where STOP caught it
        status.wait(timeout=20)
        assert caget(f"{PREFIX}sim_stage_x.DMOV").data[0] == 1
        assert 0.0 < stage_x.position < 20.0
        assert caget(f"{PREFIX}sim_stage_x.STOP").data[0] == 0
    finally:
        stage_x.velocity.set(velo).wait(timeout=10)
        stage_x.set(0.0).wait(timeout=30)


def test_fields_without_meaning_refuse_writes(ioc):
    from caproto import ErrorResponseReceived

    for field, value in (("OFF", 2.0), ("MRES", 0.5), ("DIR", 1), ("SET", 1), ("JOGF", 1)):
        with pytest.raises(ErrorResponseReceived):
            caput(f"{PREFIX}sim_stage_y.{field}", [value])
    assert caget(f"{PREFIX}sim_stage_y.OFF").data[0] == 0.0
    # writing what a computed field already holds is harmless
    caput(f"{PREFIX}sim_stage_y.PREC", [caget(f"{PREFIX}sim_stage_y.PREC").data[0]])


def test_soft_limits_can_be_narrowed_but_not_widened(ioc):
    from caproto import ChannelType, ErrorResponseReceived

    with pytest.raises(ErrorResponseReceived):
        caput(f"{PREFIX}sim_stage_y.HLM", [30.0])
    caput(f"{PREFIX}sim_stage_y.HLM", [5.0])
    try:
        with pytest.raises(ErrorResponseReceived):
            caput(f"{PREFIX}sim_stage_y", [6.0])
        ctrl = caget(f"{PREFIX}sim_stage_y", data_type=ChannelType.CTRL_DOUBLE)
        assert ctrl.metadata.upper_ctrl_limit == 5.0
        assert caget(f"{PREFIX}sim_stage_y.DHLM").data[0] == 5.0
    finally:
        caput(f"{PREFIX}sim_stage_y.HLM", [25.0])


def test_rotation_mount_and_laser_wavelength_are_motor_records(ioc):
    from daqbridge.devices.epics import DaqbridgeEpicsMotor

    mount = DaqbridgeEpicsMotor(f"{PREFIX}sim_rotators_c", name="mount_c")
    # the MaiTai runs on the legacy stack in the simulated lab: still a motor record, with the
    # legacy driver's wavelength limits
    wavelength = DaqbridgeEpicsMotor(f"{PREFIX}sim_laser:wavelength", name="laser_wl")
    for m in (mount, wavelength):
        m.wait_for_connection(timeout=10)
    assert mount.egu == "deg" and mount.limits == (-90.0, 90.0)
    low, high = wavelength.limits
    assert wavelength.egu == "nm" and low < 820.0 < high
    mount.set(30.0).wait(timeout=30)
    wavelength.set(820.0).wait(timeout=60)
    assert mount.position == pytest.approx(30.0, abs=0.01)
    assert wavelength.position == pytest.approx(820.0, abs=0.5)
    with pytest.raises(Exception, match="outside of range"):  # noqa: B017 - ophyd LimitError
        wavelength.set(high + 10)
    mount.destroy()
    wavelength.destroy()
