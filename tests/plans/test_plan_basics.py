"""The plans' shared pieces without the lab: metadata, argument errors, plan shape."""

from __future__ import annotations

import inspect
import json
import math
import pickle
import re
from typing import Any

import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.sim import det, motor

from daqbridge.errors import PlanArgumentError
from daqbridge.plans import PLANS, device_stack, device_stacks, raster, wavelength_scan
from daqbridge.plans._checks import (
    MAX_DELAY_S,
    MAX_POINTS,
    max_points,
    plan_error,
    positioner_limits,
    require_count,
    require_delay,
    require_numbers,
    require_points,
    require_range,
)
from daqbridge.plans._metadata import jsonable, start_metadata


def test_every_plan_is_a_generator_function_with_simple_defaults() -> None:
    # queue servers list plans by inspecting them: generator functions, JSON-able defaults
    assert set(PLANS) == {
        "wavelength_scan",
        "polarization_scan",
        "raster",
        "fly_raster",
        "fly_polarization",
        "exposure_series",
        "shadow_compare",
        "record_legacy",
    }
    for name, plan in PLANS.items():
        assert inspect.isgeneratorfunction(plan), name
        assert plan.__doc__, name
        for p in inspect.signature(plan).parameters.values():
            if p.default is not inspect.Parameter.empty:
                json.dumps(p.default)


def test_jsonable_arguments() -> None:
    value = {
        "det": det,
        "xs": np.linspace(0, 1, 3),
        "n": np.int64(3),
        "pair": (1.5, motor),
        "nan": float("nan"),
        "flag": True,
        "obj": object,
    }
    out = jsonable(value)
    assert out["det"] == "det" and out["pair"] == [1.5, "motor"]
    assert out["xs"] == [0.0, 0.5, 1.0] and out["n"] == 3 and type(out["n"]) is int
    assert out["nan"] == "nan" and out["flag"] is True
    json.dumps(out)


def test_stack_of_plain_ophyd_devices_is_native() -> None:
    assert device_stack(det) == "native"
    assert device_stacks([det, motor.readback]) == {"det": "native", "motor": "native"}


def test_a_part_the_driver_declares_is_recorded_under_its_own_name() -> None:
    """``daqbridge_devices`` names an ESP300 axis (a part its driver declares, DriverSpec.parts)
    by itself, not by its controller, also for a controller built from Python; a device of a
    driver whose parts leave it out, or of no driver, is recorded as its top-level parent."""
    from ophyd_async.core import Device, soft_signal_rw

    from daqbridge.devices import declared_driver, registered_drivers
    from daqbridge.devices.core import ReplayPort
    from daqbridge.devices.esp300 import ESP300Controller

    limits = {"low_limit": -1.0, "high_limit": 1.0}
    stage = ESP300Controller(
        ReplayPort([], url="replay://esp300"),
        name="stage",
        axes={"x": {"number": 1, **limits}, "y": {"number": 2, **limits}},
    )
    assert device_stacks([stage.x, stage.y.setpoint, stage.identity]) == {
        "stage_x": "native",
        "stage_y": "native",
        "stage": "native",
    }

    class Rack(Device):
        def __init__(self, name: str) -> None:
            self.shelf = Shelf()
            self.drawer = Shelf()
            super().__init__(name=name)

    class Shelf(Device):
        def __init__(self) -> None:
            self.level = soft_signal_rw(float)
            super().__init__()

    rack = Rack("rack")
    esp300 = registered_drivers()["esp300"]
    with declared_driver(
        "rack",
        settings=esp300.settings,
        build=esp300.build,
        parts=lambda r: {r.shelf.name: r.shelf},
        device=Rack,
    ):
        assert device_stacks([rack.shelf.level, rack.drawer.level]) == {
            rack.shelf.name: "native",
            "rack": "native",
        }
    assert device_stacks([rack.shelf.level]) == {"rack": "native"}  # no driver declares it


def test_start_metadata_user_md_wins_and_hints_merge() -> None:
    md = start_metadata(
        "p",
        {"det": det, "num": 2},
        detectors=[det],
        motors=[motor],
        dimensions=[(["motor"], "primary")],
        md={"plan_name": "mine", "hints": {"gridding": "rectilinear"}, "sample": "x"},
    )
    assert md["plan_name"] == "mine" and md["sample"] == "x"
    assert md["hints"] == {"dimensions": [[["motor"], "primary"]], "gridding": "rectilinear"}
    assert md["plan_args"] == {"det": "det", "num": 2}
    assert md["daqbridge_devices"] == {"det": "native", "motor": "native"}
    json.dumps(md)


def test_plan_error_names_everything_and_survives_pickling() -> None:
    err = plan_error("raster", "x_range", 30.0, "is outside", limit=(-25.0, 25.0), fix="smaller")
    text = str(err)
    assert "raster(): x_range=30.0 is outside (limit: -25 to 25)." in text
    assert "Fix: smaller" in text
    again = pickle.loads(pickle.dumps(err))
    assert isinstance(again, PlanArgumentError) and str(again) == text
    assert (again.plan, again.argument, again.value, again.limit) == (
        "raster",
        "x_range",
        30.0,
        (-25.0, 25.0),
    )


def test_small_checks() -> None:
    assert require_count("p", "n", 5.0) == 5
    with pytest.raises(PlanArgumentError, match="n=True"):
        require_count("p", "n", True)
    assert require_numbers("p", "a", (1, np.float32(2))) == [1.0, 2.0]
    with pytest.raises(PlanArgumentError, match=r"a\[1\]='x'"):
        require_numbers("p", "a", [1, "x"])
    assert require_range("p", "r", [0, 1, 3]) == (0.0, 1.0, 3)
    assert positioner_limits(motor) is None  # ophyd.sim motor: no limits attribute at all
    assert positioner_limits(type("Axis", (), {"limits": (0, 0)})()) is None  # ophyd: none
    assert positioner_limits(type("Axis", (), {"limits": (-1, 2)})()) == (-1.0, 2.0)


def test_plain_ophyd_devices_are_refused_with_clear_errors() -> None:
    RE = RunEngine({})
    with pytest.raises(PlanArgumentError, match="laser=.motor. is not a laser"):
        RE(wavelength_scan(motor, det, 700, 800, 3))
    with pytest.raises(PlanArgumentError, match="stage_x='det' is not a stage axis"):
        RE(raster(det, motor, det, (0, 1, 2), (0, 1, 2)))


def test_raster_runs_with_plain_ophyd_sim_devices() -> None:
    from ophyd.sim import motor1, motor2

    docs = []
    RE = RunEngine({})
    RE(raster(motor1, motor2, det, (0, 1, 2), (0, 1, 2)), lambda n, d: docs.append((n, d)))
    start = next(d for n, d in docs if n == "start")
    assert start["daqbridge_devices"] == {"det": "native", "motor2": "native", "motor1": "native"}
    assert sum(1 for n, _ in docs if n == "event") == 4


# --- bounds and run metadata (docs/plans.md, "Bounds") ------------------------------------------


def test_the_bounds_of_the_checks() -> None:
    day = f"{MAX_DELAY_S:g}"
    assert require_delay("p", "delay", 0) == 0.0
    assert require_delay("p", "delay", MAX_DELAY_S) == MAX_DELAY_S
    for value, words in (
        (-1, ["p(): delay=-1 must be >= 0", f"(limit: 0 to {day} s)"]),
        (MAX_DELAY_S + 1, ["is longer than one day", f"(limit: 0 to {day} s)"]),
        (1e308, ["delay=1e+308 is longer than one day"]),
        (float("nan"), ["must be finite"]),
    ):
        with pytest.raises(PlanArgumentError) as info:
            require_delay("p", "delay", value)
        for word in words:
            assert word in str(info.value), str(info.value)
    assert require_count("p", "num", MAX_POINTS) == MAX_POINTS
    with pytest.raises(PlanArgumentError, match="num=1000001 is above the maximum 1,000,000"):
        require_count("p", "num", MAX_POINTS + 1)
    with pytest.raises(PlanArgumentError, match="num=1000000000000000000 is above the maximum"):
        require_count("p", "num", 1e18)
    assert require_points("p", "num", max_points(3), axes=3) == max_points(3)
    with pytest.raises(PlanArgumentError) as info:
        require_points("p", "num", max_points(3) + 1, axes=3)
    assert f"at most {max_points(3):,} points on 3 motors, 800 MB" in str(info.value)
    assert info.value.limit == f"at most {max_points(3):,} points on 3 motors, 800 MB"


def test_run_metadata_is_refused_before_the_first_message() -> None:
    from ophyd.sim import motor1, motor2

    deep: dict = {}
    node = deep
    for _ in range(5000):  # deeper than Python's stack: must be a message, not RecursionError
        node["a"] = {}
        node = node["a"]
    RE = RunEngine({})
    names: list[str] = []
    RE.subscribe(lambda name, doc: names.append(name))
    for md, words in (
        (5, ["raster(): md=5 is int, not a mapping of run metadata"]),
        (1e18, ["md=1e+18 is float"]),
        ({"uid": "abc"}, ["md['uid']='abc' sets 'uid', which the RunEngine writes itself"]),
        ({"time": float("nan")}, ["md['time']=nan is not a finite number"]),
        ({"scan_id": "x"}, ["md['scan_id']='x' does not fit the run start document"]),
        ({"sample": [1, 2]}, ["md['sample']", "does not fit the run start document"]),
        ({"probe": object()}, ["is of type object, which the catalog cannot store"]),
        (deep, ["is nested more than 32 levels deep"]),
        ({"notes": "x" * 1_000_001}, ["more than the 1,000,000 a start document may carry"]),
    ):
        with pytest.raises(PlanArgumentError) as info:
            RE(raster(motor1, motor2, det, (0, 1, 2), (0, 1, 2), md=md))
        for word in words:
            assert word in str(info.value), str(info.value)
    assert names == []  # no run was opened, nothing moved
    # numpy values are metadata too, recorded as plain numbers and lists
    RE(
        raster(
            motor1,
            motor2,
            det,
            (0, 1, 2),
            (0, 1, 2),
            md={"gain": np.float32(2), "roi": np.arange(3)},
        )
    )
    assert names[0] == "start"


def test_start_metadata_returns_the_callers_keys_as_json() -> None:
    md = start_metadata("p", {}, detectors=[det], md={"n": np.int64(3), "xs": (1.5, np.float64(2))})
    assert md["n"] == 3 and type(md["n"]) is int and md["xs"] == [1.5, 2.0]
    json.dumps(md)


def test_raster_points_are_bounded_before_bluesky_builds_the_grid() -> None:
    from ophyd.sim import motor1, motor2

    side = math.isqrt(max_points(2)) + 1  # each axis small, the grid above the bound
    RE = RunEngine({})
    names: list[str] = []
    RE.subscribe(lambda name, doc: names.append(name))
    with pytest.raises(PlanArgumentError) as info:
        RE(raster(motor1, motor2, det, (0, 1, side), (0, 1, side), snake=False))
    assert f"x_range[2] x y_range[2]={side * side} makes {side * side:,} points on 2 motors" in str(
        info.value
    )
    assert names == []


LASER_SETS = re.compile(r"^\s*(WAV\w*|SHUT\w*)\s+\S", re.IGNORECASE)


def test_settle_time_is_bounded_before_the_laser_is_touched(runtime: Any, docs: Any) -> None:
    laser_sim = runtime.simulation.simulator("sim_laser")
    before = len(laser_sim.received_lines)
    with pytest.raises(PlanArgumentError) as info:
        runtime.RE(
            wavelength_scan(
                runtime["sim_laser"], runtime["sim_meter"], 750, 760, 2, settle_time=1e308
            )
        )
    assert "wavelength_scan(): settle_time=1e+308 is longer than one day" in str(info.value)
    assert "(limit: 0 to 86400 s)" in str(info.value)
    assert [line for line in laser_sim.received_lines[before:] if LASER_SETS.match(line)] == []
    assert docs.of("start") == []
