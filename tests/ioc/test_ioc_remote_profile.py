"""The other machine's view: a lab profile whose instruments are ``driver = "epics"`` entries
served by the IOC, run through the daqbridge runtime like local instruments."""

from __future__ import annotations

import math

import pytest

from tests.ioc.conftest import PREFIX

PROFILE = f"""
[lab]
name = "analysis bench, instruments on the IOC machine"
data_dir = "data"

[[instruments]]
id = "remote_x"
driver = "epics"
prefix = "{PREFIX}sim_stage_x"
timeout = 10.0

[[instruments]]
id = "remote_power"
driver = "epics"
prefix = "{PREFIX}sim_meter"
timeout = 10.0

[instruments.epics]
kind = "signal"
read_pv = ":power"
units = "W"
"""


@pytest.mark.slow
def test_a_profile_of_epics_instruments_scans_through_the_ioc(ioc, tmp_path, monkeypatch):
    import bluesky.plans as bp

    from daqbridge.runtime import Runtime

    monkeypatch.setenv("DAQBRIDGE_DATA", str(tmp_path / "data"))
    profile = tmp_path / "remote.toml"
    profile.write_text(PROFILE)
    rt = Runtime.from_profile(profile, connect_timeout=20)
    try:
        assert rt["remote_x"].egu == "mm"
        docs: list[tuple[str, dict]] = []
        rt.RE(
            bp.scan([rt["remote_power"]], rt["remote_x"], -1, 1, 3),
            lambda n, d: docs.append((n, d)),
        )
        primary = {d["uid"] for n, d in docs if n == "descriptor" and d["name"] == "primary"}
        events = [d for n, d in docs if n == "event" and d["descriptor"] in primary]
        assert [round(e["data"]["remote_x"], 6) for e in events] == [-1.0, 0.0, 1.0]
        assert all(math.isfinite(e["data"]["remote_power"]) for e in events)
        uid = docs[0][1]["uid"]
        rt.catalog.flush(timeout=30)
        assert list(rt.catalog[uid]["primary"].read()["remote_x"].values) == [-1.0, 0.0, 1.0]
    finally:
        report = rt.close()
    assert report.clean, report.format()


def test_build_epics_devices_kinds(ioc):
    from daqbridge.devices.epics import (
        EPICS_KINDS,
        DaqbridgeEpicsMotor,
        EpicsCamera,
        EpicsLaser,
        EpicsPowerMeter,
        build_epics_devices,
    )
    from daqbridge.errors import ConfigError, InstrumentError

    built = {
        kind: build_epics_devices(f"{PREFIX}{dev}", kind, name=f"d_{kind}", read_pv=":power")
        for kind, dev in (
            ("motor", "sim_stage_y"),
            ("signal", "sim_meter"),
            ("power_meter", "sim_meter"),
            ("laser", "sim_laser"),
            ("camera", "sim_camera"),
        )
    }
    assert isinstance(built["motor"]["d_motor"], DaqbridgeEpicsMotor)
    assert isinstance(built["power_meter"]["d_power_meter"], EpicsPowerMeter)
    assert isinstance(built["laser"]["d_laser"], EpicsLaser)
    assert isinstance(built["camera"]["d_camera"], EpicsCamera)
    for devices in built.values():
        for device in devices.values():
            device.wait_for_connection(timeout=10)
            device.destroy()
    assert set(EPICS_KINDS) == {*built, "device"}
    with pytest.raises(ConfigError, match="unknown epics kind"):
        build_epics_devices("X:", "oscilloscope", name="o")
    with pytest.raises(InstrumentError, match="no IOC answers"):
        build_epics_devices(f"{PREFIX}no_such_device", "device", name="nothing", timeout=1)
