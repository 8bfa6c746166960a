"""shadow_compare and record_legacy on the shadowed power meter of the simulated lab, and the
legacy laser's components moved in plans (checked against the laser simulator's own state)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from bluesky import plan_stubs as bps

from daqbridge.bridge._shadow import ShadowReport
from daqbridge.devices.core import call_sync
from daqbridge.errors import PlanArgumentError, ValueRejected
from daqbridge.legacy import Command
from daqbridge.plans import record_legacy, shadow_compare, wavelength_scan
from tests.plans.support import catalog_run, shutter_open, wait_for


@pytest.fixture
def light(runtime: Any) -> Iterator[None]:
    """The laser shutter open (the meter reads about a watt), closed again afterwards."""
    assert wait_for(lambda: runtime.legacy.health()["sim_meter_legacy"]["state"] == "running")
    assert runtime.legacy.submit("sim_laser", Command.set("shutter", 1), timeout=10).ok
    try:
        yield
    finally:
        assert runtime.legacy.submit("sim_laser", Command.set("shutter", 0), timeout=10).ok


def test_shadow_compare_native_and_legacy_meter(runtime: Any, docs: Any, light: None) -> None:
    legacy, native = runtime["sim_meter_legacy"], runtime["sim_meter"]
    (uid,) = runtime.RE(shadow_compare(legacy, native, 4, rtol=0.05, md={"why": "migration"}))
    docs.validate()
    events = docs.events()
    assert len(events) == 4
    for e in events:
        n, lg = e["data"]["sim_meter_power"], e["data"]["sim_meter_legacy_power"]
        assert n > 0.1 and lg > 0.1  # real light, not two zeros
        assert e["data"]["sim_meter_minus_sim_meter_legacy"] == pytest.approx(n - lg)

    start = docs.start
    assert start["plan_name"] == "shadow_compare"
    assert start["plan_args"]["legacy_device"] == "sim_meter_legacy"
    assert start["plan_args"]["native_device"] == "sim_meter"
    assert start["daqbridge_devices"] == {"sim_meter": "native", "sim_meter_legacy": "legacy"}
    assert start["shadow"]["native_field"] == "sim_meter_power"
    assert start["why"] == "migration"

    run = catalog_run(runtime, uid)
    assert run.metadata["stop"]["exit_status"] == "success"
    report = ShadowReport.from_run(run)
    assert report.n == 4 and report.ok, report.format()
    strict = ShadowReport.from_run(run, rtol=0.0)
    assert not strict.ok  # the meter's noise is visible without a tolerance


@pytest.mark.parametrize(
    ("swap", "kwargs", "words"),
    [
        (True, {}, ["legacy_device='sim_meter'", "not a legacy device"]),
        (False, {"num": 0}, ["num=0", ">= 1"]),
        (False, {"rtol": -0.1}, ["rtol=-0.1", ">= 0"]),
        (False, {"tolerance": "big"}, ["tolerance='big'", "number"]),
        (False, {"native_field": "nope"}, ["native_field='nope'", "sim_meter_power"]),
    ],
)
def test_shadow_compare_bad_arguments(
    runtime: Any, docs: Any, swap: bool, kwargs: dict, words: list[str]
) -> None:
    legacy, native = runtime["sim_meter_legacy"], runtime["sim_meter"]
    if swap:
        legacy, native = native, legacy
    args: dict[str, Any] = {"num": 3}
    args.update(kwargs)
    with pytest.raises(PlanArgumentError) as info:
        runtime.RE(shadow_compare(legacy, native, **args))
    text = str(info.value)
    assert "shadow_compare(): " in text
    for word in words:
        assert word in text, text
    assert docs.of("start") == []


def test_record_legacy_stream(runtime: Any, docs: Any) -> None:
    meter = runtime["sim_meter_legacy"]
    assert wait_for(lambda: runtime.legacy.health()["sim_meter_legacy"]["state"] == "running")
    (uid,) = runtime.RE(record_legacy(meter, 1.0))
    docs.validate()
    assert len(docs.events("primary")) == 2
    monitored = docs.events("sim_meter_legacy_monitor")
    assert len(monitored) >= 2  # polled at 5 Hz for a second
    times = [e["timestamps"]["sim_meter_legacy_power"] for e in monitored]
    assert times == sorted(times)
    assert docs.start["plan_name"] == "record_legacy"
    assert docs.start["plan_args"] == {"device": "sim_meter_legacy", "duration": 1.0}
    assert docs.start["daqbridge_devices"] == {"sim_meter_legacy": "legacy"}
    assert docs.start["monitor_stream"] == "sim_meter_legacy_monitor"
    assert docs.start["legacy_instrument"] == "sim_meter_legacy"

    run = catalog_run(runtime, uid)
    assert run.metadata["stop"]["exit_status"] == "success"
    stream = run["sim_meter_legacy_monitor"].read()
    assert len(stream["sim_meter_legacy_power"]) == len(monitored)
    assert len(run["primary"].read()["sim_meter_legacy_power"]) == 2


@pytest.mark.parametrize(
    ("device", "duration", "words"),
    [
        ("sim_meter", 1.0, ["device='sim_meter'", "not a legacy device"]),
        ("sim_meter_legacy", 0, ["duration=0", "> 0"]),
        ("sim_meter_legacy", 1e9, ["duration=1000000000.0", "604800"]),
        ("sim_meter_legacy", "1s", ["duration='1s'", "number"]),
    ],
)
def test_record_legacy_bad_arguments(
    runtime: Any, docs: Any, device: str, duration: Any, words: list[str]
) -> None:
    with pytest.raises(PlanArgumentError) as info:
        runtime.RE(record_legacy(runtime[device], duration))
    for word in words:
        assert word in str(info.value), str(info.value)
    assert docs.of("start") == []


# --- the legacy laser's own components tell the truth (issue 18 item 1, issue 12) ------------


def _rd(runtime: Any, obj: Any) -> Any:
    got: list[Any] = []

    def plan() -> Any:
        got.append((yield from bps.rd(obj)))

    runtime.RE(plan())
    return got[0]


def test_mv_of_the_legacy_laser_shutter_moves_the_laser(runtime: Any) -> None:
    laser = runtime["sim_laser"]
    was = int(shutter_open(runtime))
    try:
        runtime.RE(bps.mv(laser.shutter, 0))
        assert not shutter_open(runtime)  # the simulated laser's own state
        assert _rd(runtime, laser.shutter) == 0
        runtime.RE(bps.mv(laser.shutter, 1))
        assert shutter_open(runtime)
        assert _rd(runtime, laser.shutter) == 1
    finally:
        assert runtime.legacy.submit("sim_laser", Command.set("shutter", was), timeout=10).ok


def test_after_a_wavelength_scan_the_laser_shutter_reads_closed_without_trigger(
    runtime: Any, docs: Any
) -> None:
    laser = runtime["sim_laser"]
    runtime.RE(wavelength_scan(laser, runtime["sim_meter"], 780, 800, 2))
    assert all(e["data"]["sim_laser_shutter"] == 1 for e in docs.events())  # open while measuring
    assert not shutter_open(runtime)  # the scan's finally clause closed it on the laser
    # and the signal says so, without a trigger (its value is the latest the laser reported)
    assert wait_for(lambda: call_sync(laser.shutter.get_value(), device=laser) == 0)


def test_the_legacy_laser_wavelength_keeps_the_profiles_limits(runtime: Any) -> None:
    """sim.toml narrows the MaiTai to 700-1000 nm (the lab's optics), as for the native laser."""
    laser = runtime["sim_laser"]
    sim = runtime.simulation.simulator("sim_laser")
    before = sim.target_wavelength_nm()
    with pytest.raises(ValueRejected, match=r"1020 is outside the limits \[700.0, 1000.0\]"):
        runtime.RE(bps.mv(laser.wavelength, 1020))
    assert sim.target_wavelength_nm() == before  # nothing was sent
    described = call_sync(laser.wavelength.describe(), device=laser)
    limits = described["sim_laser_wavelength"]["limits"]["control"]
    assert (limits["low"], limits["high"]) == (700.0, 1000.0)


def test_the_legacy_laser_arrives_within_the_native_lasers_tolerance(runtime: Any) -> None:
    """The MaiTai reports whole nm: the native laser accepts 760.4 (within 0.5 nm), and so must
    its legacy adapter instead of failing the move with SetNotConfirmed (issue 18 item 2)."""
    laser = runtime["sim_laser"]
    sim = runtime.simulation.simulator("sim_laser")
    before = sim.target_wavelength_nm()
    try:
        runtime.RE(bps.mv(laser.wavelength, 760.4))
        assert sim.target_wavelength_nm() == pytest.approx(760.4, abs=0.5)  # it tuned
        assert _rd(runtime, laser.wavelength) == pytest.approx(760.4, abs=0.5)
    finally:
        assert runtime.legacy.submit("sim_laser", Command.set("wavelength", before), timeout=30).ok


def test_a_count_of_the_shadowed_meter_records_its_legacy_twin(
    runtime: Any, docs: Any, light: None
) -> None:
    """sim.toml runs sim_meter in shadow: the lab's own plans collect the evidence (issue 18
    item 4), each event with both drivers' readings and their difference."""
    import bluesky.plans as bp

    runtime.RE(bp.count([runtime["sim_meter"]], 3))
    docs.validate()
    events = docs.events()
    assert len(events) == 3
    for e in events:
        n, lg = e["data"]["sim_meter_power"], e["data"]["sim_meter_legacy_power"]
        assert n > 0.1 and lg > 0.1  # real light on both drivers, not two zeros
        assert e["data"]["sim_meter_shadow_diff_power"] == pytest.approx(n - lg)
    # (that each legacy value is read at its own point: tests/runtime/test_shadow.py, on a ramp)
