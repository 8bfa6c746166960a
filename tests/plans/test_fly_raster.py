"""fly_raster on the simulated lab: the ESP300's x axis flies rows while the 1830-C is read back
to back; positions are checked against the trajectory the simulator itself followed."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
from bluesky.utils import FailedPause, FailedStatus, RunEngineInterrupted
from event_model import unpack_event_page

import daqbridge.sim
from daqbridge.devices._fly import INTERPOLATION
from daqbridge.errors import PlanArgumentError
from daqbridge.plans import fly_raster
from tests.plans.support import catalog_run, esp300_sim, wait_for

PROFILE_VELOCITY = 5.0  # profiles/sim.toml, axes x and y


def events_of(docs: Any, stream: str) -> list[dict]:
    descriptors = {d["uid"] for d in docs.of("descriptor") if d["name"] == stream}
    out = [e for p in docs.of("event_page") for e in unpack_event_page(p)]
    return [e for e in out if e["descriptor"] in descriptors]


def check_pages(docs: Any) -> None:
    """Every event of every page carries exactly its descriptor's keys."""
    descriptors = {d["uid"]: d for d in docs.of("descriptor")}
    for page in docs.of("event_page"):
        keys = set(descriptors[page["descriptor"]]["data_keys"])
        assert set(page["data"]) == keys and set(page["timestamps"]) == keys


def fly_velocity_of(docs: Any) -> float:
    return float(docs.start["fly"]["velocity"])


def on_first(command: str, action: Any, RE: Any) -> Any:
    """A msg_hook that runs ``action`` on a thread at the first ``command`` message."""
    fired = threading.Event()

    def hook(msg: Any) -> None:
        if msg.command == command and not fired.is_set():
            fired.set()
            threading.Thread(target=action, daemon=True).start()

    return hook


def test_a_flown_raster_records_interpolated_positions_within_one_sample(
    runtime: Any, docs: Any
) -> None:
    x, y, meter = runtime["sim_stage_x"], runtime["sim_stage_y"], runtime["sim_meter"]
    sim = esp300_sim()
    offset = time.time() - time.monotonic()  # event times are epoch, the simulator's monotonic
    (uid,) = runtime.RE(fly_raster(x, y, meter, (-1, 1, 5), (0, 0.5, 3), velocity=1.0))
    docs.validate()
    check_pages(docs)
    assert docs.stop["exit_status"] == "success"
    start = docs.start
    assert start["plan_name"] == "fly_raster"
    assert start["motors"] == ["sim_stage_y", "sim_stage_x"]
    assert start["fly"]["velocity"] == 1.0

    (primary,) = [d for d in docs.of("descriptor") if d["name"] == "primary"]
    keys = primary["data_keys"]
    assert set(keys) == {"sim_meter_power", "sim_stage_x", "sim_stage_y"}
    assert keys["sim_stage_x"]["interpolation"] == INTERPOLATION
    source = keys["sim_stage_x"]["source"]
    assert "1TP?" in source and "interpolated" in source
    assert "D?" in keys["sim_meter_power"]["source"]

    events = events_of(docs, "primary")
    readbacks = events_of(docs, "sim_stage_x_readbacks")
    assert len(events) >= 3 and len(readbacks) > len(events) / 4
    ys = sorted({e["data"]["sim_stage_y"] for e in events})
    np.testing.assert_allclose(ys, [0, 0.25, 0.5], atol=1e-4)

    # Every position within one sample's travel of where the simulator had the axis when the
    # meter was asked: the axis's speed (real units/s) times the span of the readbacks and
    # samples around it (the controller's position is taken somewhere inside each exchange).
    speed = fly_velocity_of(docs) * sim.speed
    stamps = np.array(sorted(e["timestamps"]["sim_stage_x_readback"] for e in readbacks))
    sample_times = np.array(sorted(e["timestamps"]["sim_meter_power"] for e in events))
    errors, allowed = [], []
    for e in events:
        t = e["timestamps"]["sim_stage_x"]
        assert t == e["timestamps"]["sim_meter_power"]  # the time the meter was asked
        truth = sim.true_position(1, t - offset)
        i = int(np.searchsorted(stamps, t))
        span = stamps[min(i + 1, len(stamps) - 1)] - stamps[max(i - 1, 0)]
        j = int(np.searchsorted(sample_times, t))
        gap = sample_times[min(j + 1, len(sample_times) - 1)] - sample_times[max(j - 1, 0)]
        errors.append(abs(e["data"]["sim_stage_x"] - truth))
        allowed.append(speed * max(span, gap) + 1e-5)
        assert -1 - 1e-6 <= e["data"]["sim_stage_x"] <= 1 + 1e-6  # the run-up is not recorded
    assert all(err <= tol for err, tol in zip(errors, allowed, strict=True)), max(
        zip(errors, allowed, strict=True)
    )
    # the velocity the axis had before the run is back
    assert sim.axes[1].velocity == PROFILE_VELOCITY
    run = catalog_run(runtime, uid)
    assert run.metadata["stop"]["exit_status"] == "success"
    np.testing.assert_allclose(
        run["primary"].read()["sim_stage_x"].values, [e["data"]["sim_stage_x"] for e in events]
    )


def test_rows_beyond_the_soft_limits_are_refused_before_anything_moves(
    runtime: Any, docs: Any
) -> None:
    x, y, meter = runtime["sim_stage_x"], runtime["sim_stage_y"], runtime["sim_meter"]
    sim = esp300_sim()
    before = len(sim.received_lines)
    # inside +/-25 mm, but the run-up (1.25 v^2 / 2a = 0.78 mm at 5 mm/s) is not
    with pytest.raises(PlanArgumentError, match="run-up"):
        runtime.RE(fly_raster(x, y, meter, (-24.8, 24.8, 5), (0, 1, 2)))
    with pytest.raises(PlanArgumentError, match="y_range"):
        runtime.RE(fly_raster(x, y, meter, (-1, 1, 5), (0, 30, 2)))
    with pytest.raises(PlanArgumentError, match="velocity"):
        runtime.RE(fly_raster(x, y, meter, (-1, 1, 5), (0, 1, 2), velocity=1e6))
    with pytest.raises(PlanArgumentError, match="needs a length"):
        runtime.RE(fly_raster(x, y, meter, (1, 1, 5), (0, 1, 2)))
    with pytest.raises(PlanArgumentError, match="not a native power meter"):
        runtime.RE(fly_raster(x, y, runtime["sim_meter_legacy"], (-1, 1, 5), (0, 1, 2)))
    assert sim.received_lines[before:] == []  # not a byte to the controller
    assert docs.items == []


def test_abort_mid_row_stops_the_axis_and_restores_its_velocity(runtime: Any, docs: Any) -> None:
    """Ctrl-C (a pause request) during a row: the plan has no checkpoint, so the RunEngine
    aborts it; the row's axis is stopped where it is and gets its velocity back."""
    x, y, meter = runtime["sim_stage_x"], runtime["sim_stage_y"], runtime["sim_meter"]
    RE, sim = runtime.RE, esp300_sim()
    stops = sim.stop_count

    def pause_mid_row() -> None:
        if wait_for(lambda: sim.is_moving(1) and sim.axis_position(1) > -4.5, timeout=30):
            RE.request_pause()

    RE.msg_hook = on_first("complete", pause_mid_row, RE)
    try:
        with pytest.raises((RunEngineInterrupted, FailedPause)):
            RE(fly_raster(x, y, meter, (-5, 5, 5), (0, 1, 2), velocity=0.25))
    finally:
        RE.msg_hook = None
    if RE.state == "paused":  # pragma: no cover - the plan has no checkpoint
        RE.abort("operator abort in a test")
    assert RE.state == "idle"
    assert 1 in sim.stops[stops:]
    assert wait_for(lambda: not sim.is_moving(1), timeout=5)
    assert sim.axis_position(1) < 5  # stopped mid-row, not at its end
    assert sim.axes[1].velocity == PROFILE_VELOCITY
    docs.validate()
    assert docs.stop["exit_status"] == "abort"


def test_a_meter_failing_mid_row_stops_the_axis(runtime: Any, docs: Any) -> None:
    x, y, meter = runtime["sim_stage_x"], runtime["sim_stage_y"], runtime["sim_meter"]
    RE, sim = runtime.RE, esp300_sim()
    meter_sim = daqbridge.sim.lookup("sim_meter")
    stops = sim.stop_count

    def jam_mid_row() -> None:
        if wait_for(lambda: sim.is_moving(1) and sim.axis_position(1) > -4.5, timeout=30):
            meter_sim.faults.stuck = True  # the meter stops answering

    RE.msg_hook = on_first("complete", jam_mid_row, RE)
    try:
        with pytest.raises(FailedStatus):
            RE(fly_raster(x, y, meter, (-5, 5, 5), (0, 1, 2), velocity=0.25))
    finally:
        RE.msg_hook = None
        meter_sim.faults.stuck = False
        cleared = time.time()
    assert 1 in sim.stops[stops:]
    assert wait_for(lambda: not sim.is_moving(1), timeout=5)
    assert sim.axis_position(1) < 5
    assert sim.axes[1].velocity == PROFILE_VELOCITY
    docs.validate()
    assert docs.stop["exit_status"] == "fail"
    assert "sim_meter" in docs.stop["reason"]  # the meter's error, not the move's cancellation

    # The legacy twin's poll swallowed by the stuck meter times out on its own clock: the lab
    # is as it was once the twin has measured again after the meter came back.
    def twin_measures_again() -> bool:
        health = runtime.legacy.health()["sim_meter_legacy"]
        last = health["last_measurement_time"]
        return health["state"] == "running" and last is not None and last > cleared

    assert wait_for(twin_measures_again, timeout=15)
