"""polarization_scan on the simulated Elliptec bus (mounts at addresses 2, 3, 8)."""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
import numpy as np
import pytest
from bluesky.utils import FailedStatus

from daqbridge.errors import PlanArgumentError
from daqbridge.plans import polarization_scan
from tests.plans.support import catalog_run

ADDRESS = {"sim_rotators_a": 2, "sim_rotators_b": 3, "sim_rotators_c": 8}


def bus(runtime: Any) -> Any:
    return runtime.simulation.simulator("sim_rotators")


def test_two_rotators_move_together(runtime: Any, docs: Any) -> None:
    a, b, meter = runtime["sim_rotators_a"], runtime["sim_rotators_b"], runtime["sim_meter"]
    angles = [0, 30, 60, 90]
    (uid,) = runtime.RE(
        polarization_scan(a, meter, angles, extra_rotators=[b], offsets=[90], md={"wp": "HWP"})
    )
    docs.validate()
    events = docs.events()
    np.testing.assert_allclose([e["data"]["sim_rotators_a"] for e in events], angles, atol=0.1)
    np.testing.assert_allclose(
        [e["data"]["sim_rotators_b"] for e in events], [x + 90 for x in angles], atol=0.1
    )
    assert all("sim_meter_power" in e["data"] for e in events)
    assert bus(runtime).position_deg(2) == pytest.approx(90, abs=0.1)
    assert bus(runtime).position_deg(3) == pytest.approx(180, abs=0.1)

    start = docs.start
    assert start["plan_name"] == "polarization_scan"
    assert start["plan_args"]["angles"] == [0.0, 30.0, 60.0, 90.0]
    assert start["plan_args"]["extra_rotators"] == ["sim_rotators_b"]
    assert start["motors"] == ["sim_rotators_a", "sim_rotators_b"]
    assert start["detectors"] == ["sim_meter"]
    assert start["daqbridge_devices"] == {
        "sim_meter": "native",
        "sim_rotators_a": "native",
        "sim_rotators_b": "native",
    }
    assert start["hints"]["dimensions"] == [[["sim_rotators_a"], "primary"]]
    assert start["wp"] == "HWP"

    run = catalog_run(runtime, uid)
    assert run.metadata["stop"]["exit_status"] == "success"
    np.testing.assert_allclose(run["primary"].read()["sim_rotators_a"].values, angles, atol=0.1)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"rotator": "sim_rotators_c", "angles": [20, 100]}, ["angles=100", "-90 to 90"]),
        (
            {"extra_rotators": ["sim_rotators_c"], "offsets": [80], "angles": [0, 20]},
            ["offsets[0]", "sim_rotators_c", "=100", "-90 to 90"],
        ),
        ({"angles": [0, 400]}, ["angles=400", "-360 to 360"]),
        ({"angles": []}, ["angles=[]", "fewer than 1"]),
        ({"angles": 45}, ["angles=45", "list"]),
        ({"extra_rotators": ["sim_rotators_a"]}, ["twice"]),
        ({"extra_rotators": ["sim_rotators_b"], "offsets": [1, 2]}, ["offsets", "2 entries"]),
        ({"rotator": "sim_meter"}, ["rotator='sim_meter'", "rotation mount"]),
    ],
)
def test_bad_arguments_fail_before_any_mount_moves(
    runtime: Any, docs: Any, kwargs: dict, words: list[str]
) -> None:
    def dev(v: Any) -> Any:
        return runtime[v] if isinstance(v, str) and v in runtime else v

    args: dict[str, Any] = {
        "rotator": runtime["sim_rotators_a"],
        "meter": runtime["sim_meter"],
        "angles": [10, 20],
    }
    for key, value in kwargs.items():
        args[key] = [dev(v) for v in value] if key == "extra_rotators" else dev(value)
    before = {addr: bus(runtime).position_deg(addr) for addr in ADDRESS.values()}
    with pytest.raises(PlanArgumentError) as info:
        runtime.RE(polarization_scan(**args))
    text = str(info.value)
    assert "polarization_scan(): " in text
    for word in words:
        assert word in text, text
    assert {addr: bus(runtime).position_deg(addr) for addr in ADDRESS.values()} == before
    assert docs.of("start") == []


def test_mount_fault_mid_scan(runtime: Any, docs: Any) -> None:
    a, meter = runtime["sim_rotators_a"], runtime["sim_meter"]

    def stall(name: str, doc: dict) -> None:
        if name == "event" and doc["seq_num"] == 2:
            bus(runtime).stall(2)  # the next move of mount 2 times out mechanically

    docs.callbacks.append(stall)
    with pytest.raises(FailedStatus):
        runtime.RE(polarization_scan(a, meter, [5, 10, 15, 20]))
    docs.validate()
    assert docs.stop["exit_status"] == "fail"
    assert len(docs.events()) == 2
    assert not bus(runtime).is_moving(2)
    assert catalog_run(runtime, docs.start["uid"]).metadata["stop"]["exit_status"] == "fail"
    # the mount is usable again afterwards
    runtime.RE(bps.mv(a, 0))
    assert bus(runtime).position_deg(2) == pytest.approx(0, abs=0.1)
