"""wavelength_scan on the simulated lab: legacy MaiTai (as in sim.toml) and a native one."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

import bluesky.preprocessors as bpp
import numpy as np
import pytest
from bluesky.utils import FailedPause, FailedStatus, Msg, RunEngineInterrupted

import daqbridge.sim
from daqbridge.devices.core import call_sync
from daqbridge.devices.maitai import MaiTaiLaser
from daqbridge.errors import PlanArgumentError
from daqbridge.legacy import Command
from daqbridge.plans import wavelength_scan
from daqbridge.transport import SerialPortPool
from tests.plans.support import catalog_run, shutter_open, wait_for

LASER_SETS = re.compile(r"^\s*(WAV\w*|SHUT\w*)\s+\S", re.IGNORECASE)


def laser_set_commands(runtime: Any, since: int) -> list[str]:
    lines = runtime.simulation.simulator("sim_laser").received_lines[since:]
    return [line for line in lines if LASER_SETS.match(line)]


def test_legacy_laser_native_meter(runtime: Any, docs: Any) -> None:
    laser, meter = runtime["sim_laser"], runtime["sim_meter"]
    # The simulated lab starts with the shutter open; close it to see the plan open it.
    assert runtime.legacy.submit("sim_laser", Command.set("shutter", 0), timeout=10).ok
    assert not shutter_open(runtime)
    subscribers = set(runtime.legacy.distributor.stats())
    opened: list[bool] = []
    docs.callbacks.append(
        lambda name, doc: name == "event" and opened.append(shutter_open(runtime))
    )

    (uid,) = runtime.RE(wavelength_scan(laser, meter, 750, 850, 5, md={"sample": "BBO"}))

    docs.validate()
    targets = [750.0, 775.0, 800.0, 825.0, 850.0]
    events = docs.events()
    assert [e["data"]["sim_laser_wavelength"] for e in events] == targets
    assert [e["data"]["sim_meter_wavelength"] for e in events] == [int(t) for t in targets]
    assert all(e["data"]["sim_laser_shutter"] == 1 for e in events)
    powers = [e["data"]["sim_meter_power"] for e in events]
    assert min(powers) > 0 and max(powers) == powers[2]  # the gain curve peaks at 800 nm
    assert opened == [True] * 5
    assert not shutter_open(runtime)  # closed after the scan
    assert daqbridge.sim.lookup("sim_meter").wavelength == 850
    # the plan moved the laser's own components: no extra adapter was left subscribed
    assert set(runtime.legacy.distributor.stats()) == subscribers

    start = docs.start
    assert start["plan_name"] == "wavelength_scan"
    assert start["plan_args"] == {
        "laser": "sim_laser",
        "meter": "sim_meter",
        "start": 750.0,
        "stop": 850.0,
        "num": 5,
        "settle_time": 0.0,
    }
    assert start["detectors"] == ["sim_meter"] and start["motors"] == ["sim_laser"]
    assert start["daqbridge_devices"] == {"sim_meter": "native", "sim_laser": "legacy"}
    assert start["hints"]["dimensions"] == [[["sim_laser_wavelength"], "primary"]]
    assert start["profile"].endswith("sim.toml")  # from the runtime's RE.md
    assert start["sample"] == "BBO"

    run = catalog_run(runtime, uid)
    assert run.metadata["stop"]["exit_status"] == "success"
    assert run.metadata["start"]["daqbridge_devices"]["sim_laser"] == "legacy"
    data = run["primary"].read()
    assert list(data["sim_laser_wavelength"].values) == targets
    np.testing.assert_allclose(data["sim_meter_power"].values, powers)


def test_legacy_meter_records_its_wavelength_setting(runtime: Any, docs: Any) -> None:
    (uid,) = runtime.RE(
        wavelength_scan(runtime["sim_laser"], runtime["sim_meter_legacy"], 810.4, 790, 3)
    )
    docs.validate()
    events = docs.events()
    assert [e["data"]["sim_meter_legacy_wavelength"] for e in events] == [810, 800, 790]
    assert [e["data"]["sim_laser_wavelength"] for e in events] == [810.0, 800.0, 790.0]
    assert docs.start["daqbridge_devices"] == {"sim_meter_legacy": "legacy", "sim_laser": "legacy"}
    assert not shutter_open(runtime)
    assert catalog_run(runtime, uid).metadata["stop"]["exit_status"] == "success"


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"start": 650}, ["start=650", "700"]),
        ({"stop": 1100}, ["stop=1100", "1000"]),
        ({"num": 0}, ["num=0", ">= 1"]),
        ({"num": 2.5}, ["num=2.5", "whole number"]),
        ({"start": float("nan")}, ["start=nan", "finite"]),
        ({"settle_time": -1}, ["settle_time=-1", ">= 0"]),
        ({"laser": "sim_laser"}, ["laser='sim_laser'", "runtime.devices"]),
        ({"laser": "@meter"}, ["laser='sim_meter'", "shutter"]),
        ({"meter": "@stage"}, ["meter='sim_stage_x'", "power meter"]),
    ],
)
def test_bad_arguments_fail_before_the_laser_is_touched(
    runtime: Any, docs: Any, kwargs: dict, words: list[str]
) -> None:
    devices = {"@meter": runtime["sim_meter"], "@stage": runtime["sim_stage_x"]}
    args = {
        "laser": runtime["sim_laser"],
        "meter": runtime["sim_meter"],
        "start": 750,
        "stop": 800,
        "num": 3,
    }
    args.update({k: devices.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()})
    before = len(runtime.simulation.simulator("sim_laser").received_lines)
    subscribers = set(runtime.legacy.distributor.stats())
    with pytest.raises(PlanArgumentError) as info:
        runtime.RE(wavelength_scan(**args))
    assert set(runtime.legacy.distributor.stats()) == subscribers  # nothing left subscribed
    text = str(info.value)
    assert text.startswith("wavelength_scan(): ") or "wavelength_scan(): " in text
    for word in words:
        assert word in text, text
    assert laser_set_commands(runtime, before) == []
    assert docs.of("start") == []  # no run was opened


def _raise_at_third_point(plan: Any) -> Any:
    creates = 0

    def mutate(msg: Msg) -> Any:
        nonlocal creates
        if msg.command == "create":
            creates += 1
            if creates == 3:

                def boom() -> Any:
                    raise RuntimeError("induced failure at the third point")
                    yield  # pragma: no cover

                return boom(), None
        return None, None

    return bpp.plan_mutator(plan, mutate)


def test_error_mid_scan_closes_the_shutter(runtime: Any, docs: Any) -> None:
    plan = wavelength_scan(runtime["sim_laser"], runtime["sim_meter"], 760, 800, 5)
    with pytest.raises(RuntimeError, match="induced failure"):
        runtime.RE(_raise_at_third_point(plan))
    docs.validate()
    assert len(docs.events()) == 2
    assert docs.stop["exit_status"] == "fail"
    assert not shutter_open(runtime)
    run = catalog_run(runtime, docs.start["uid"])
    assert run.metadata["stop"]["exit_status"] == "fail"


def test_meter_fault_at_third_point_closes_the_shutter(runtime: Any, docs: Any) -> None:
    meter_sim = daqbridge.sim.lookup("sim_meter")

    def jam(name: str, doc: dict) -> None:
        if name == "event" and doc["seq_num"] == 2:
            meter_sim.faults.stuck = True  # the meter stops answering

    docs.callbacks.append(jam)
    try:
        with pytest.raises(FailedStatus):
            runtime.RE(wavelength_scan(runtime["sim_laser"], runtime["sim_meter"], 760, 800, 5))
    finally:
        meter_sim.faults.stuck = False
    docs.validate()
    assert len(docs.events()) == 2
    assert docs.stop["exit_status"] == "fail"
    assert docs.stop["reason"]  # the instrument error, for the catalog
    assert not shutter_open(runtime)
    assert catalog_run(runtime, docs.start["uid"]).metadata["stop"]["exit_status"] == "fail"
    # the legacy twin on the same meter recovers by itself once the meter answers again
    assert wait_for(
        lambda: runtime.legacy.health()["sim_meter_legacy"]["state"] == "running", timeout=15
    )


def test_ctrl_c_pause_aborts_and_closes_the_shutter(runtime: Any, docs: Any) -> None:
    """A pause request (what Ctrl-C sends) cannot pause a scan with the light on: the scan has
    no checkpoint, so the RunEngine aborts it, and the finally clause closes the shutter."""
    RE = runtime.RE

    def pause(name: str, doc: dict) -> None:
        if name == "event" and doc["seq_num"] == 2:
            # request_pause waits for the RunEngine's loop, which is running this callback
            threading.Thread(target=RE.request_pause, daemon=True).start()

    docs.callbacks.append(pause)
    with pytest.raises((RunEngineInterrupted, FailedPause)):
        RE(wavelength_scan(runtime["sim_laser"], runtime["sim_meter"], 760, 800, 5))
    if RE.state == "paused":  # pragma: no cover - only if the plan ever gains checkpoints
        RE.abort("operator abort in a test")
    assert RE.state == "idle"
    docs.validate()
    assert docs.stop["exit_status"] == "abort"
    assert len(docs.events()) < 5
    assert not shutter_open(runtime)
    assert catalog_run(runtime, docs.start["uid"]).metadata["stop"]["exit_status"] == "abort"


# --- a native MaiTai on its own simulator --------------------------------------------------


@pytest.fixture
def native_laser() -> Iterator[tuple[MaiTaiLaser, Any]]:
    name = "plans-native-maitai"
    pool = SerialPortPool()
    laser = None
    try:
        port = pool.open(
            f"sim://maitai?name={name}&warmed_up=1&speed=50&reply_latency=0", baudrate=9600
        )
        laser = MaiTaiLaser(
            port,
            name="native_laser",
            wavelength_limits=(700.0, 1000.0),
            write_delay=0.0,
            timeout=0.5,
            poll_interval=0.01,
        )
        call_sync(laser.connect(), device=laser, timeout=10)
        sim = daqbridge.sim.lookup(name)
        call_sync(lambda: laser.emission.set(1), device=laser, timeout=10)
        yield laser, sim
    finally:
        if laser is not None:
            laser.close()
        pool.close_all()
        daqbridge.sim.unregister(name)


def test_native_laser(runtime: Any, docs: Any, native_laser: tuple[MaiTaiLaser, Any]) -> None:
    laser, sim = native_laser
    (uid,) = runtime.RE(wavelength_scan(laser, runtime["sim_meter"], 720, 880, 3))
    docs.validate()
    events = docs.events()
    assert [e["data"]["native_laser_wavelength"] for e in events] == [720.0, 800.0, 880.0]
    assert all(e["data"]["native_laser_shutter"] == 1 for e in events)
    assert not sim.status_byte() & 4  # shutter closed again
    assert docs.start["daqbridge_devices"] == {"sim_meter": "native", "native_laser": "native"}
    assert docs.start["wavelength_limits"] == [700.0, 1000.0]
    assert docs.start["hints"]["dimensions"] == [[["native_laser_wavelength"], "primary"]]
    assert catalog_run(runtime, uid).metadata["stop"]["exit_status"] == "success"


def test_native_laser_configured_limits(
    runtime: Any, docs: Any, native_laser: tuple[MaiTaiLaser, Any]
) -> None:
    laser, sim = native_laser
    before = len(sim.received_lines)
    with pytest.raises(PlanArgumentError, match=r"start=695.*700 to 1000"):
        runtime.RE(wavelength_scan(laser, runtime["sim_meter"], 695, 800, 3))
    assert [line for line in sim.received_lines[before:] if LASER_SETS.match(line)] == []


def test_native_laser_fault_mid_scan(
    runtime: Any, docs: Any, native_laser: tuple[MaiTaiLaser, Any]
) -> None:
    laser, sim = native_laser

    def drop(name: str, doc: dict) -> None:
        if name == "event" and doc["seq_num"] == 2:
            sim.faults.drop_next = 1  # the laser's next reply is lost: the tune fails

    docs.callbacks.append(drop)
    with pytest.raises(FailedStatus):
        runtime.RE(wavelength_scan(laser, runtime["sim_meter"], 720, 880, 4))
    docs.validate()
    assert docs.stop["exit_status"] == "fail"
    assert len(docs.events()) == 2
    assert not sim.status_byte() & 4
