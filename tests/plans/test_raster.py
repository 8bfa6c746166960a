"""raster on the simulated ESP300 (axes x, y with soft limits +/-25 mm) with meter and camera."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from bluesky.utils import FailedStatus

from daqbridge.errors import PlanArgumentError
from daqbridge.plans import raster
from tests.plans.support import catalog_run, esp300_sim


def moves_sent(since: int) -> list[str]:
    return [line for line in esp300_sim().received_lines[since:] if "PA" in line.upper()]


def test_snaked_raster_with_the_power_meter(runtime: Any, docs: Any) -> None:
    x, y, meter = runtime["sim_stage_x"], runtime["sim_stage_y"], runtime["sim_meter"]
    (uid,) = runtime.RE(raster(x, y, meter, (-1, 1, 3), (0, 0.5, 2)))
    docs.validate()
    events = docs.events()
    xs = [e["data"]["sim_stage_x"] for e in events]
    ys = [e["data"]["sim_stage_y"] for e in events]
    np.testing.assert_allclose(xs, [-1, 0, 1, 1, 0, -1], atol=1e-4)  # every other row reversed
    np.testing.assert_allclose(ys, [0, 0, 0, 0.5, 0.5, 0.5], atol=1e-4)
    assert all("sim_meter_power" in e["data"] for e in events)

    start = docs.start
    assert start["plan_name"] == "raster"
    assert start["plan_args"] == {
        "stage_x": "sim_stage_x",
        "stage_y": "sim_stage_y",
        "detector": "sim_meter",
        "x_range": [-1.0, 1.0, 3],
        "y_range": [0.0, 0.5, 2],
        "snake": True,
    }
    assert list(start["shape"]) == [2, 3]
    assert start["motors"] == ["sim_stage_y", "sim_stage_x"]
    assert start["hints"]["dimensions"] == [
        [["sim_stage_y"], "primary"],
        [["sim_stage_x"], "primary"],
    ]
    assert start["daqbridge_devices"] == {
        "sim_meter": "native",
        "sim_stage_y": "native",
        "sim_stage_x": "native",
    }
    run = catalog_run(runtime, uid)
    assert run.metadata["stop"]["exit_status"] == "success"
    np.testing.assert_allclose(run["primary"].read()["sim_stage_x"].values, xs)


def test_raster_with_the_camera(runtime: Any, docs: Any) -> None:
    x, y, cam = runtime["sim_stage_x"], runtime["sim_stage_y"], runtime["sim_camera"]
    (uid,) = runtime.RE(raster(x, y, cam, (0, 1, 2), (0, 1, 2), snake=False))
    docs.validate()
    events = docs.events()
    np.testing.assert_allclose([e["data"]["sim_stage_x"] for e in events], [0, 1, 0, 1], atol=1e-4)
    assert len(docs.of("stream_resource")) == 1
    assert docs.start["plan_args"]["snake"] is False
    run = catalog_run(runtime, uid)
    assert run.metadata["stop"]["exit_status"] == "success"
    images = run["primary"]["sim_camera_image"].read()
    assert images.shape[0] == 4 and images.ndim == 3


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"x_range": (-30, 0, 3)}, ["x_range=-30", "soft limits", "-25 to 25"]),
        ({"y_range": (0, 26, 2)}, ["y_range=26", "sim_stage_y", "-25 to 25"]),
        ({"x_range": (0, 1, 0)}, ["x_range[2] (num)=0", ">= 1"]),
        ({"x_range": (0, 1)}, ["x_range=(0, 1)", "(start, stop, num)"]),
        ({"y_range": (0, "a", 2)}, ["y_range[1] (stop)='a'", "number"]),
        ({"stage_y": "@x"}, ["same axis"]),
        ({"detector": "@x"}, ["detector='sim_stage_x'", "stage axes"]),
        ({"snake": "yes"}, ["snake='yes'", "True or False"]),
        ({"stage_x": "@meter"}, ["stage_x='sim_meter'", "stage axis"]),
    ],
)
def test_bad_arguments_fail_before_any_move(
    runtime: Any, docs: Any, kwargs: dict, words: list[str]
) -> None:
    named = {"@x": runtime["sim_stage_x"], "@meter": runtime["sim_meter"]}
    args: dict[str, Any] = {
        "stage_x": runtime["sim_stage_x"],
        "stage_y": runtime["sim_stage_y"],
        "detector": runtime["sim_meter"],
        "x_range": (0, 1, 2),
        "y_range": (0, 1, 2),
    }
    args.update({k: named.get(v, v) if isinstance(v, str) else v for k, v in kwargs.items()})
    before = len(esp300_sim().received_lines)
    with pytest.raises(PlanArgumentError) as info:
        runtime.RE(raster(**args))
    text = str(info.value)
    assert "raster(): " in text
    for word in words:
        assert word in text, text
    assert moves_sent(before) == []  # the controller never saw a PA
    assert docs.of("start") == []


def test_controller_error_mid_raster_stops_both_axes(runtime: Any, docs: Any) -> None:
    sim = esp300_sim()
    x, y, meter = runtime["sim_stage_x"], runtime["sim_stage_y"], runtime["sim_meter"]
    stops_before = sim.stop_count

    def fault(name: str, doc: dict) -> None:
        if name == "event" and doc["seq_num"] == 2:
            sim.queue_error(108)  # axis 1: motor not connected, popped by the next move

    docs.callbacks.append(fault)
    with pytest.raises(FailedStatus):
        runtime.RE(raster(x, y, meter, (-2, 2, 3), (1, 2, 2)))
    docs.validate()
    assert docs.stop["exit_status"] == "fail"
    assert len(docs.events()) == 2
    # stop() hands ST to the controller's worker: wait (bounded) for both to reach the wire
    deadline = time.monotonic() + 5.0
    while sim.stop_count < stops_before + 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sim.stop_count >= stops_before + 2  # ST to both axes
    assert not sim.is_moving(1) and not sim.is_moving(2)
    assert catalog_run(runtime, docs.start["uid"]).metadata["stop"]["exit_status"] == "fail"
