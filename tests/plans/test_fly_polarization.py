"""fly_polarization on the simulated lab: an Elliptec mount turns in one move while the 1830-C is
read back to back; angles are checked against the motion the bus simulator itself ran."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from bluesky.utils import FailedPause, RunEngineInterrupted
from event_model import unpack_event_page

from daqbridge.devices._fly import INTERPOLATION
from daqbridge.errors import PlanArgumentError
from daqbridge.plans import fly_polarization
from daqbridge.sim.elliptec import PULSES_PER_DEG
from tests.plans.support import catalog_run, wait_for

MOUNT = "sim_rotators_a"
ADDRESS = "2"  # profiles/sim.toml: mount a


def bus(runtime: Any) -> Any:
    return runtime.simulation.simulator("sim_rotators")


def events_of(docs: Any, stream: str) -> list[dict]:
    descriptors = {d["uid"] for d in docs.of("descriptor") if d["name"] == stream}
    out = [e for p in docs.of("event_page") for e in unpack_event_page(p)]
    return [e for e in out if e["descriptor"] in descriptors]


def capture_flight(sim: Any, target_deg: float, into: list) -> Any:
    """A msg_hook: at ``complete``, a thread keeps the simulator's motion towards ``target_deg``
    (the flight) once it exists (bounded wait)."""
    fired = threading.Event()
    target = round(target_deg * PULSES_PER_DEG)

    def watch() -> None:
        def flying() -> bool:
            motion = sim._mount(ADDRESS).motion  # noqa: SLF001 - the truth of the test
            if motion is not None and motion.end == target:
                into.append(motion)
                return True
            return False

        wait_for(flying, timeout=30)

    def hook(msg: Any) -> None:
        if msg.command == "complete" and not fired.is_set():
            fired.set()
            threading.Thread(target=watch, daemon=True).start()

    return hook


def test_a_flown_turn_records_interpolated_angles_within_one_sample(
    runtime: Any, docs: Any
) -> None:
    RE, sim = runtime.RE, bus(runtime)
    rotator, meter = runtime[MOUNT], runtime["sim_meter"]
    velocity_before = sim._mount(ADDRESS).velocity_pct  # noqa: SLF001
    offset = time.time() - time.monotonic()
    flights: list = []
    RE.msg_hook = capture_flight(sim, 90.0, flights)
    try:
        (uid,) = RE(fly_polarization(rotator, meter, -90, 90, velocity=5))
    finally:
        RE.msg_hook = None
    docs.validate()
    assert docs.stop["exit_status"] == "success"
    assert docs.start["plan_name"] == "fly_polarization"
    (primary,) = [d for d in docs.of("descriptor") if d["name"] == "primary"]
    assert primary["data_keys"][MOUNT]["interpolation"] == INTERPOLATION
    assert "gp" in primary["data_keys"][MOUNT]["source"]
    events = events_of(docs, "primary")
    readbacks = events_of(docs, f"{MOUNT}_readbacks")
    assert len(events) >= 10 and len(readbacks) >= 3
    angles = [e["data"][MOUNT] for e in events]
    assert all(-90 - 1e-6 <= a <= 90 + 1e-6 for a in angles)
    assert angles == sorted(angles)  # one turn, one way

    # Where the simulated mount was when the meter was asked. Between two readbacks taken while
    # it turned (the mount's speed is constant), within one sample's travel; before the first
    # and after the last of them the motion's start and end fall between two readbacks 100 ms
    # apart (a mount wants its commands spaced), so within the travel of one readback interval.
    (flight,) = flights
    rate = abs(flight.end - flight.start) / PULSES_PER_DEG / (flight.duration / sim.speed)
    times = sorted(e["timestamps"]["sim_meter_power"] for e in events)
    gap = max(b - a for a, b in zip(times, times[1:], strict=False))
    key = f"{MOUNT}_readback"
    turning = [e["timestamps"][key] for e in readbacks if -89.9 < e["data"][key] < 89.9]
    assert len(turning) >= 2
    # The mount took each position somewhere inside its gp exchange: on a loaded host that
    # exchange can outlast a meter sample, and then bounds the error instead.
    exchange = max(e["data"][f"{key}_answered"] - e["timestamps"][key] for e in readbacks)
    pulse = 2 / PULSES_PER_DEG  # readbacks are whole pulses
    inside = 0
    for e in events:
        t = e["timestamps"][MOUNT]
        f = min(max((t - offset - flight.started) * sim.speed / flight.duration, 0.0), 1.0)
        truth = (flight.start + (flight.end - flight.start) * f) / PULSES_PER_DEG
        error = abs(e["data"][MOUNT] - truth)
        if turning[0] <= t <= turning[-1]:
            inside += 1
            assert error <= rate * max(gap, exchange) + pulse, (t, error, gap, exchange)
        else:
            assert error <= rate * (rotator.poll_interval + max(gap, exchange)) + pulse, (t, error)
    assert inside >= len(events) / 2
    assert sim._mount(ADDRESS).velocity_pct == velocity_before  # noqa: SLF001
    run = catalog_run(runtime, uid)
    assert run.metadata["stop"]["exit_status"] == "success"
    assert len(run["primary"].read()[MOUNT]) == len(events)


def test_angles_beyond_the_limits_are_refused_before_anything_moves(
    runtime: Any, docs: Any
) -> None:
    sim = bus(runtime)
    rotator, meter = runtime[MOUNT], runtime["sim_meter"]
    before = len(sim.received_lines)
    with pytest.raises(PlanArgumentError, match="stop"):
        runtime.RE(fly_polarization(rotator, meter, 0, 400))
    with pytest.raises(PlanArgumentError, match="a flown turn needs a length"):
        runtime.RE(fly_polarization(rotator, meter, 10, 10))
    with pytest.raises(PlanArgumentError, match="velocity"):
        runtime.RE(fly_polarization(rotator, meter, 0, 90, velocity=500))
    with pytest.raises(PlanArgumentError, match="c cannot|limits"):
        runtime.RE(fly_polarization(runtime["sim_rotators_c"], meter, 0, 120))
    assert not [line for line in sim.received_lines[before:] if "ma" in line or "sv" in line]
    assert docs.items == []


def test_abort_mid_turn_stops_the_mount_and_restores_its_velocity(runtime: Any, docs: Any) -> None:
    RE, sim = runtime.RE, bus(runtime)
    rotator, meter = runtime[MOUNT], runtime["sim_meter"]
    velocity_before = sim._mount(ADDRESS).velocity_pct  # noqa: SLF001
    flights: list = []

    def pause_when_flying() -> None:
        if wait_for(lambda: bool(flights), timeout=30):
            RE.request_pause()

    capture = capture_flight(sim, 180.0, flights)

    def hook(msg: Any) -> None:
        capture(msg)
        if msg.command == "complete":
            threading.Thread(target=pause_when_flying, daemon=True).start()

    RE.msg_hook = hook
    try:
        with pytest.raises((RunEngineInterrupted, FailedPause)):
            RE(fly_polarization(rotator, meter, -180, 180, velocity=1))
    finally:
        RE.msg_hook = None
    if RE.state == "paused":  # pragma: no cover - the plan has no checkpoint
        RE.abort("operator abort in a test")
    assert RE.state == "idle"
    assert wait_for(lambda: sim._mount(ADDRESS).motion is None, timeout=5)  # noqa: SLF001
    assert sim.position_deg(ADDRESS) < 179  # stopped mid-turn
    assert sim._mount(ADDRESS).velocity_pct == velocity_before  # noqa: SLF001
    docs.validate()
    assert docs.stop["exit_status"] == "abort"
