"""Detectors, settings, the camera and the IOC's own PVs, used from ophyd and raw CA clients."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from bluesky import RunEngine

from tests.ioc.conftest import PREFIX, caget, caput


def _text(pv: str) -> str:
    return bytes(caget(pv).data).rstrip(b"\0").decode()


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def test_meter_reading_follows_the_laser_through_the_ioc(ioc):
    """Trigger (put-completion) gives a fresh reading: with the shutter open the coupled
    simulated meter sees the laser's power, with it closed nothing."""
    from daqbridge.devices.epics import EpicsLaser, EpicsPowerMeter

    meter = EpicsPowerMeter(f"{PREFIX}sim_meter", name="meter")
    laser = EpicsLaser(f"{PREFIX}sim_laser", name="laser")
    meter.wait_for_connection(timeout=10)
    laser.wait_for_connection(timeout=10)
    try:
        laser.shutter.set(1).wait(timeout=30)
        assert caget(f"{PREFIX}sim_laser:shutter").data[0] == 1

        def lit() -> bool:
            meter.trigger().wait(timeout=30)
            return meter.power.get() > 0

        _wait(lit, 30, "the meter to see the laser")
        laser.shutter.set(0).wait(timeout=30)

        def dark() -> bool:
            meter.trigger().wait(timeout=30)
            return meter.power.get() == 0

        _wait(dark, 30, "the meter to go dark")
        assert meter.describe()["meter_power"]["units"] == "W"
    finally:
        meter.destroy()
        laser.destroy()


def test_meter_settings_are_written_to_the_instrument_and_read_back(ioc, ca_context):
    from caproto import ErrorResponseReceived

    pv = f"{PREFIX}sim_meter:wavelength"
    # :Status is watched, not read once: the IOC's own polls (every 0.5 s) report "OK" again
    # as soon as a reading succeeds, possibly before a caget after the refusal gets there.
    (status_pv,) = ca_context.get_pvs(f"{PREFIX}sim_meter:Status")
    status_pv.wait_for_connection(timeout=10)
    statuses: list[str] = []

    def on_status(sub, response):  # held here: caproto keeps callbacks by weak reference
        statuses.append(bytes(response.data).rstrip(b"\0").decode())

    subscription = status_pv.subscribe()
    subscription.add_callback(on_status)
    old = caget(pv).data[0]
    caput(pv, [900])
    try:
        assert caget(pv).data[0] == 900
        with pytest.raises(ErrorResponseReceived):
            caput(pv, [5000])  # the 1830-C driver refuses it before sending anything
        assert caget(pv).data[0] == 900
        _wait(lambda: any("5000" in text for text in statuses), 10, ":Status naming 5000")
    finally:
        subscription.clear()
        caput(pv, [old])
    assert _text(f"{PREFIX}sim_meter:Status") == "OK"


def test_readings_and_identities_are_read_only(ioc):
    for pv in (f"{PREFIX}sim_meter:power", f"{PREFIX}sim_dmm:voltage", f"{PREFIX}sim_dmm:identity"):
        with pytest.raises(Exception):  # noqa: B017 - caproto refuses: no write access
            caput(pv, [1.0])
    assert "DAQBRIDGE-SIM" in _text(f"{PREFIX}sim_dmm:identity")


def test_scpi_signals_with_units_and_limits_from_the_profile(ioc):
    from caproto import ChannelType, ErrorResponseReceived

    from daqbridge.devices.epics import build_epics_devices

    ctrl = caget(f"{PREFIX}sim_dmm:source", data_type=ChannelType.CTRL_DOUBLE)
    assert ctrl.metadata.units == b"V"
    assert (ctrl.metadata.lower_ctrl_limit, ctrl.metadata.upper_ctrl_limit) == (-10.0, 10.0)
    with pytest.raises(ErrorResponseReceived):
        caput(f"{PREFIX}sim_dmm:source", [20.0])

    dmm = build_epics_devices(f"{PREFIX}sim_dmm", "device", name="dmm", timeout=10)["dmm"]
    dmm.wait_for_connection(timeout=10)
    try:
        dmm.source.set(1.5).wait(timeout=30)
        RE = RunEngine({})
        import bluesky.plans as bp

        docs: list[tuple[str, dict]] = []
        RE(bp.count([dmm], 2), lambda n, d: docs.append((n, d)))
        events = [d for n, d in docs if n == "event"]
        assert len(events) == 2
        assert all(math.isfinite(e["data"]["dmm_voltage"]) for e in events)
        (desc,) = [d for n, d in docs if n == "descriptor"]
        assert desc["data_keys"]["dmm_voltage"]["units"] == "V"
        assert all(e["data"]["dmm_source"] == 1.5 for e in events)
        assert desc["configuration"]["dmm"]["data"]["dmm_range"] > 0
    finally:
        dmm.source.set(0.0).wait(timeout=30)
        dmm.destroy()


def test_camera_acquires_into_an_hdf5_file_on_the_ioc_machine(ioc):
    import h5py

    from daqbridge.devices.epics import EpicsCamera

    cam = EpicsCamera(f"{PREFIX}sim_camera", name="cam")
    cam.wait_for_connection(timeout=10)
    try:
        cam.acquire_time.set(0.01).wait(timeout=10)
        assert caget(f"{PREFIX}sim_camera:exposure").data[0] == pytest.approx(10.0)
        before = cam.array_counter.get()
        cam.trigger().wait(timeout=60)
        assert cam.array_counter.get(use_monitor=False) == before + 1
        path = Path(_text(f"{PREFIX}sim_camera:FileName"))
        assert path.is_file() and path.is_relative_to(ioc.data_dir)
        with h5py.File(path, "r") as f:
            assert f["entry"].attrs["device"] == "sim_camera"
            assert f["entry/data/data"].shape[0] == 1
        assert cam.sum.get(use_monitor=False) > 0
    finally:
        cam.destroy()


def test_layout_and_ioc_status_pvs(ioc):
    layout = json.loads(_text(f"{PREFIX}sim_meter:Layout"))
    assert layout["kind"] == "detector"
    assert layout["signals"]["power"] == {
        "pv": ":power",
        "dtype": "number",
        "kind": "hinted",
        "writable": False,
        "units": "W",
        "source": "1830-C sim://newport1830c?name=sim_meter D?",
    }
    assert layout["signals"]["wavelength"]["writable"] is True
    devices = json.loads(_text(f"{PREFIX}ioc:Devices"))["devices"]
    assert devices["sim_stage_x"] == "motor" and devices["sim_camera"] == "camera"
    beat = caget(f"{PREFIX}ioc:Heartbeat").data[0]
    _wait(lambda: caget(f"{PREFIX}ioc:Heartbeat").data[0] > beat, 10, "a heartbeat")
    assert caget(f"{PREFIX}ioc:ProtocolErrors").data[0] == 0
