"""The plans' shared pieces without the lab: metadata, argument errors, plan shape."""

from __future__ import annotations

import inspect
import json
import pickle

import numpy as np
import pytest
from bluesky import RunEngine
from ophyd.sim import det, motor

from daqbridge.errors import PlanArgumentError
from daqbridge.plans import PLANS, device_stack, device_stacks, raster, wavelength_scan
from daqbridge.plans._checks import (
    plan_error,
    positioner_limits,
    require_count,
    require_numbers,
    require_range,
)
from daqbridge.plans._metadata import jsonable, start_metadata


def test_every_plan_is_a_generator_function_with_simple_defaults() -> None:
    # queue servers list plans by inspecting them: generator functions, JSON-able defaults
    assert set(PLANS) == {
        "wavelength_scan",
        "polarization_scan",
        "raster",
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
