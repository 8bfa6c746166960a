"""exposure_series on the simulated PVCAM camera (Prime BSI backend)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from bluesky.utils import FailedStatus

from daqbridge.devices.core import call_sync
from daqbridge.errors import PlanArgumentError
from daqbridge.plans import exposure_series
from tests.plans.support import catalog_run


def exposure_of(cam: Any) -> float:
    """The camera's exposure setting, asked on its loop (it is an ophyd-async device)."""
    return call_sync(cam.exposure.get_value(), device=cam, timeout=10)


def test_series_records_each_exposure_and_restores_the_original(runtime: Any, docs: Any) -> None:
    cam = runtime["sim_camera"]
    original = exposure_of(cam)
    (uid,) = runtime.RE(exposure_series(cam, [5, 12.5], frames_per_exposure=2))
    docs.validate()
    events = docs.events()
    assert [e["data"]["sim_camera_exposure"] for e in events] == [5.0, 5.0, 12.5, 12.5]
    sums = [e["data"]["sim_camera_sum"] for e in events]
    assert sums[2] > sums[0]  # longer exposure, more counts
    assert exposure_of(cam) == original

    start = docs.start
    assert start["plan_name"] == "exposure_series"
    assert start["plan_args"] == {
        "camera": "sim_camera",
        "exposures": [5.0, 12.5],
        "frames_per_exposure": 2,
    }
    assert start["detectors"] == ["sim_camera"] and start["motors"] == []
    assert start["daqbridge_devices"] == {"sim_camera": "native"}
    assert start["hints"]["dimensions"] == [[["sim_camera_exposure"], "primary"]]
    assert start["exposure_units"] == "ms"

    run = catalog_run(runtime, uid)
    assert run.metadata["stop"]["exit_status"] == "success"
    data = run["primary"].read()
    np.testing.assert_allclose(data["sim_camera_exposure"].values, [5, 5, 12.5, 12.5])
    assert run["primary"]["sim_camera_image"].read().shape[0] == 4


def test_readout_failure_mid_series_restores_the_exposure(runtime: Any, docs: Any) -> None:
    cam = runtime["sim_camera"]
    original = exposure_of(cam)

    def fail(name: str, doc: dict) -> None:
        if name == "event" and doc["seq_num"] == 2:
            cam.backend.fail_next_readout()

    docs.callbacks.append(fail)
    with pytest.raises(FailedStatus):
        runtime.RE(exposure_series(cam, [3, 4, 6, 7]))
    docs.validate()
    assert docs.stop["exit_status"] == "fail"
    assert len(docs.events()) == 2
    assert exposure_of(cam) == original
    assert catalog_run(runtime, docs.start["uid"]).metadata["stop"]["exit_status"] == "fail"
    # the camera takes frames again afterwards
    runtime.RE(exposure_series(cam, [2]))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"exposures": [5, 0]}, ["exposures[1]=0", "> 0"]),
        ({"exposures": [-1]}, ["exposures[0]=-1", "> 0"]),
        ({"exposures": [5e9]}, ["exposures[0]=5000000000.0", "exposure limit", "3.6e+06"]),
        ({"exposures": [1.0005]}, ["exposures[0]=1.0005", "microseconds"]),
        ({"exposures": []}, ["exposures=[]", "fewer than 1"]),
        ({"frames_per_exposure": 0}, ["frames_per_exposure=0", ">= 1"]),
        ({"camera": "@meter"}, ["camera='sim_meter'", "exposure"]),
    ],
)
def test_bad_arguments_fail_before_the_camera_is_touched(
    runtime: Any, docs: Any, kwargs: dict, words: list[str]
) -> None:
    cam = runtime["sim_camera"]
    original = exposure_of(cam)
    args: dict[str, Any] = {"camera": cam, "exposures": [5]}
    args.update({k: runtime["sim_meter"] if v == "@meter" else v for k, v in kwargs.items()})
    with pytest.raises(PlanArgumentError) as info:
        runtime.RE(exposure_series(**args))
    text = str(info.value)
    assert "exposure_series(): " in text
    for word in words:
        assert word in text, text
    assert exposure_of(cam) == original
    assert docs.of("start") == []
