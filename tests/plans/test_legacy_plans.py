"""shadow_compare and record_legacy on the shadowed power meter of the simulated lab."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from daqbridge.errors import PlanArgumentError
from daqbridge.legacy import Command
from daqbridge.plans import record_legacy, shadow_compare
from daqbridge.runtime._shadow import ShadowReport
from tests.plans.support import catalog_run, wait_for


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
