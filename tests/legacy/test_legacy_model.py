"""Measurement, Command and CommandResult: the values that cross the legacy boundary."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from daqbridge.errors import InstrumentFault, ValueRejected
from daqbridge.legacy import (
    ChannelInfo,
    Command,
    CommandResult,
    LegacyInstrumentError,
    Measurement,
    ParameterInfo,
)
from tests.legacy.legacy_test_instruments import CounterSource


def test_measurement_is_frozen_and_compares_arrays_by_content():
    a = Measurement("cam", "frame", np.arange(6).reshape(2, 3), "counts", 1.0, {"n": 1})
    b = Measurement("cam", "frame", np.arange(6).reshape(2, 3), "counts", 1.0, {"n": 1})
    c = Measurement("cam", "frame", np.zeros((2, 3)), "counts", 1.0, {"n": 1})
    assert a == b
    assert a != c
    assert Measurement("m", "p", 1.5, "W", 2.0) != Measurement("m", "p", 1.5, "W", 3.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.value = 3  # type: ignore[misc]
    now = Measurement.now("m", "power", 1e-9, "W", range=3)
    assert now.timestamp > 1.6e9 and now.metadata == {"range": 3}


def test_command_helpers_and_validation():
    assert Command.set("wavelength", 800) == Command("set", "wavelength", 800)
    assert Command.query("power").kind == "query"
    ex = Command.execute("home_2", direction=1)
    assert ex.kind == "execute" and ex.args == {"direction": 1}
    assert str(Command.set("wavelength", 800)) == "set wavelength=800"
    with pytest.raises(ValueError, match="kind"):
        Command("move", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        Command.query("")


def test_command_result_carries_typed_error_and_unwraps():
    ok = CommandResult.success(3)
    assert ok and ok.unwrap() == 3
    fault = InstrumentFault("OVER range", code="OVER", instrument="meter")
    bad = CommandResult.failure(fault)
    assert not bad and bad.error is fault and "OVER range" in bad.message
    with pytest.raises(InstrumentFault):
        bad.unwrap()
    plain = CommandResult.failure("refused", instrument="meter")
    assert isinstance(plain.error, LegacyInstrumentError)
    with pytest.raises(LegacyInstrumentError, match="meter"):
        plain.unwrap()


def test_info_records_reject_bad_declarations():
    with pytest.raises(ValueError, match="dtype"):
        ChannelInfo("x", dtype="float64")
    with pytest.raises(ValueError, match="limits"):
        ParameterInfo("x", limits=(5, 1))


def test_check_value_converts_and_rejects_before_the_wire():
    inst = CounterSource("c")
    assert inst.check_value("gain", "2.5") == 2.5
    for bad, match in [(11, "outside"), ("abc", "not a number"), (float("nan"), "finite")]:
        with pytest.raises(ValueRejected, match=match) as info:
            inst.check_value("gain", bad)
        assert "Fix:" in str(info.value) and "'c'" in str(info.value)
    with pytest.raises(ValueRejected, match="read-only"):
        inst.check_value("count", 3)
    with pytest.raises(ValueRejected, match="no parameter"):
        inst.check_value("gian", 3)


def test_publish_without_runtime_is_dropped_quietly():
    inst = CounterSource("c")
    inst.publish(inst.measurement("count", 1))  # no runtime bound: must not raise
    got = []
    inst.bind_publisher(got.append)
    inst.publish(inst.measurement("noise", 0.5))
    assert got[0].unit == "V" and got[0].instrument_id == "c"
