"""The profile and the drivers cannot disagree: each driver declares its own settings table.

The Newport 1830-C and the MaiTai declare their ``[instruments.<driver>]`` model in their driver
modules (``daqbridge.devices.register_driver``); the profile uses those models as they are, and
the device constructors validate through them. These tests hold that in place: what ``config
check`` accepts builds and connects through the runtime's own builder against the simulator,
what a device constructor refuses ``config check`` refuses, and the instruments' ranges are
written once. The bug they retire: a native 1830-C with ``units = "dBm"`` passed ``config check``
and failed only at start-up, after the simulators and the catalog had started.
"""

from __future__ import annotations

import ast
import io
import math
import re
import tokenize
import uuid
from pathlib import Path
from typing import Any

import pytest
import serial
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import daqbridge.sim  # noqa: F401 - registers the sim:// URL handler
from daqbridge.cli import main
from daqbridge.config import (
    LEGACY_DRIVER_TYPES,
    ElliptecInstrument,
    Esp300Instrument,
    MaiTaiInstrument,
    Newport1830cInstrument,
    check_profile,
    load_profile,
)
from daqbridge.devices import elliptec as elliptec_module
from daqbridge.devices import esp300 as esp300_module
from daqbridge.devices import maitai as maitai_module
from daqbridge.devices import newport1830c as meter_module
from daqbridge.devices import register_driver, registered_drivers
from daqbridge.devices.elliptec import ElliptecBus
from daqbridge.devices.esp300 import ESP300Controller
from daqbridge.devices.maitai import MaiTaiLaser
from daqbridge.devices.newport1830c import Newport1830C
from daqbridge.errors import ConfigError, DaqbridgeError, ValueRejected
from daqbridge.runtime._builders import (
    BuildContext,
    NativeInstrument,
    StartupFailed,
    build_native,
    connect_native,
)
from daqbridge.sim import known_kinds, lookup, unregister
from daqbridge.transport import SerialPortPool, VisaSessionManager
from tests.config.profile_support import ROOT

# Small: every accepted example connects a device to its simulator (a few ms each), and the
# whole file must stay well under a minute on a loaded machine.
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def profile_data(driver: str, table: dict[str, Any], *, port: str, stack: str = "native") -> dict:
    """A one-instrument simulated lab whose only entry carries ``table``."""
    return {
        "lab": {"name": "driver settings"},
        "simulation": {"enabled": True},
        "instruments": [
            {"id": "dut", "driver": driver, "stack": stack, "port": port, driver: table}
        ],
    }


def profile_errors(data: dict) -> list:
    """The errors ``config check`` reports for ``data`` (the same function it calls)."""
    _, issues = check_profile(data)
    return [i for i in issues if i.severity == "error"]


# --- the dBm reproduction ------------------------------------------------------------------------

DBM_PROFILE = """
[lab]
name = "dBm lab"
data_dir = "{data_dir}"

[simulation]
enabled = true

[[instruments]]
id = "meter"
driver = "newport1830c"
stack = "{stack}"
port = "sim://newport1830c?name=dbm-meter"

[instruments.newport1830c]
wavelength_nm = 800
units = "dBm"
"""


@pytest.fixture
def no_port_opens(monkeypatch):
    """Fails the test if anything opens a serial port or a simulator's URL."""
    opened: list[str] = []

    def refuse(url: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(url))
        raise AssertionError(f"a port was opened: {url}")

    monkeypatch.setattr(serial, "serial_for_url", refuse)
    monkeypatch.setattr(serial, "Serial", refuse)
    monkeypatch.setattr(SerialPortPool, "open", lambda self, url, **kw: refuse(url))
    return opened


@pytest.mark.parametrize("stack", ["native", "shadow"])
def test_config_check_refuses_a_native_meter_in_dbm(stack, tmp_path, capsys, no_port_opens):
    """Exit 1 (docs/errors.md: the profile has errors), the key and the fix, nothing opened."""
    path = tmp_path / "lab.toml"
    path.write_text(DBM_PROFILE.format(data_dir=tmp_path / "data", stack=stack))
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert "error: instruments[0].newport1830c.units: units 'dBm' are not supported" in err
    assert 'fix: set units = "W"' in err and 'stack = "legacy"' in err
    assert "1 error(s)" in err
    assert no_port_opens == []


def test_start_up_refuses_it_before_anything_starts(tmp_path, no_port_opens):
    """The runtime loads the same profile first: no simulator, port or catalog is started."""
    from daqbridge.runtime import Runtime

    path = tmp_path / "lab.toml"
    path.write_text(DBM_PROFILE.format(data_dir=tmp_path / "data", stack="native"))
    with pytest.raises(ConfigError, match=r"newport1830c\.units"):
        Runtime.from_profile(path)
    assert no_port_opens == []
    assert not (tmp_path / "data").exists()  # the catalog was never created


def test_the_legacy_stack_still_reads_dbm(tmp_path, capsys):
    """The legacy driver reads every unit: a legacy entry keeps dBm, and its driver gets it."""
    path = tmp_path / "lab.toml"
    path.write_text(DBM_PROFILE.format(data_dir=tmp_path / "data", stack="legacy"))
    assert main(["config", "check", str(path)]) == 0
    meter = load_profile(path).instrument("meter")
    assert meter.newport1830c.units == "dBm"
    assert meter.legacy_options()["units"] == "dBm"


def test_the_constructor_refuses_dbm_in_the_same_words(pool):
    port = pool.open(f"sim://newport1830c?name=words-{uuid.uuid4().hex[:8]}", baudrate=9600)
    with pytest.raises(ConfigError) as info:
        Newport1830C(port, name="meter", units="dBm")
    _, issues = check_profile(
        profile_data("newport1830c", {"units": "dBm"}, port="sim://newport1830c?name=x")
    )
    (issue,) = issues
    assert issue.what.rstrip(".") in info.value.what
    assert issue.fix.rstrip(".") in info.value.fix
    assert info.value.key == "units" and issue.key == "instruments[0].newport1830c.units"
    assert info.value.resource == port.url  # the constructor knows the port: it names it


# --- property: what the profile accepts the device builds, and the other way round ---------------

junk = st.one_of(
    st.integers(min_value=-5, max_value=2000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=4),
)
"""Values of the wrong type or far outside any range (TOML can hold each of them)."""


def mostly(near: st.SearchStrategy) -> st.SearchStrategy:
    """``near`` (values around the limits, on both sides) three times in four, else junk: enough
    accepted tables that most examples also build and connect."""
    return st.integers(0, 3).flatmap(lambda i: junk if i == 0 else near)


@st.composite
def meter_tables(draw) -> dict[str, Any]:
    """``[instruments.newport1830c]`` tables: in range, out of range, wrong types, unknown keys."""
    low, high = meter_module.WAVELENGTH_RANGE_NM
    candidates = {
        "wavelength_nm": mostly(st.integers(low - 20, high + 20)),
        "range": mostly(st.integers(-1, 9)),
        "filter": mostly(st.sampled_from(["slow", "medium", "fast", "slow", "Fast", "turbo"])),
        "units": mostly(st.sampled_from(["W", "W", "W", "dBm", "dB", "REL", "mW"])),
        "attenuator": mostly(st.booleans()),
    }
    table = {key: draw(candidates[key]) for key in sorted(candidates) if draw(st.booleans())}
    if draw(st.integers(0, 9)) == 0:
        table["wavelength"] = draw(st.integers(low, high))  # a misspelt key
    return table


@st.composite
def laser_tables(draw) -> dict[str, Any]:
    """``[instruments.maitai]`` tables around the laser's tuning range and its terminators."""
    low, high = maitai_module.TUNING_RANGE_NM
    edge = st.one_of(st.floats(low - 20, high + 20), st.integers(int(low) - 20, int(high) + 20))
    candidates = {
        "wavelength_limits": mostly(
            st.one_of(
                st.lists(edge, min_size=2, max_size=2).map(sorted),
                st.lists(edge, min_size=2, max_size=2),
                st.lists(edge, max_size=3),
            )
        ),
        "reply_terminator": st.sampled_from(["LF", "CR", "CRLF", "LF", "lf", "NUL"]),
    }
    table = {key: draw(candidates[key]) for key in sorted(candidates) if draw(st.booleans())}
    if draw(st.integers(0, 9)) == 0:
        table["tuning_range"] = [low, high]  # not a key of the table
    return table


def constructor_refuses(factory: Any, port: Any, table: dict[str, Any]) -> bool:
    """Whether the device constructor refuses these settings (a DaqbridgeError or a TypeError
    for a keyword it does not have), before any byte is sent."""
    try:
        device = factory(port, name="dut", **table)
    except (DaqbridgeError, TypeError):
        return True
    device.close()
    return False


def build_entry(data: dict, pool: SerialPortPool, data_dir: Path) -> NativeInstrument:
    """Build (not connect) the entry as start-up does (``build_native``)."""
    profile = load_profile(data)
    (inst,) = profile.native_instruments()
    return build_native(inst, BuildContext(profile, pool, VisaSessionManager(), data_dir))


def build_and_connect(data: dict, pool: SerialPortPool, data_dir: Path) -> Any:
    """Build and connect the entry as start-up does (``build_native``, ``connect_native``)."""
    built = build_entry(data, pool, data_dir)
    try:
        connect_native(built, 10.0)
    except BaseException:
        built.close()
        raise
    assert built.connected
    return built


@PROPERTY
@given(table=meter_tables())
def test_every_meter_table_the_profile_accepts_builds_and_every_refusal_agrees(
    table, pool, data_dir
):
    name = f"prop-meter-{uuid.uuid4().hex[:8]}"
    url = f"sim://newport1830c?name={name}&speed=100&noise=0"
    try:
        errors = profile_errors(profile_data("newport1830c", table, port=url))
        assert all(e.key.startswith("instruments[0].newport1830c") for e in errors), errors
        refused = constructor_refuses(Newport1830C, pool.open(url, baudrate=9600), table)
        assert refused == bool(errors), (table, [str(e) for e in errors])
        event("refused by both" if errors else "accepted by both: built and connected")
        if errors:
            return
        built = build_and_connect(profile_data("newport1830c", table, port=url), pool, data_dir)
        meter = built.root
        try:
            expected = {
                "wavelength": table.get("wavelength_nm"),
                "range": table.get("range"),
                "filter": meter_module.FILTERS.get(table.get("filter")),
                "attenuator": None if "attenuator" not in table else int(table["attenuator"]),
            }
            for signal, value in expected.items():
                if value is None:
                    continue
                # what the meter answered at connect (the ophyd-async signal's last reading)
                got = getattr(meter, signal)._connector.backend.last_reading["value"]
                if signal == "range" and value == 0:
                    assert 1 <= got <= 8, (signal, table)  # auto: R? names the range in use
                else:
                    assert got == value, (signal, table)
        finally:
            built.close()
    finally:
        unregister(name)


@PROPERTY
@given(table=laser_tables())
def test_every_laser_table_the_profile_accepts_builds_and_every_refusal_agrees(
    table, pool, data_dir
):
    name = f"prop-laser-{uuid.uuid4().hex[:8]}"
    terminator = table.get("reply_terminator", "LF")
    url = f"sim://maitai?name={name}&warmed_up=1&speed=100&reply_latency=0"
    if terminator in maitai_module.REPLY_TERMINATORS:
        url += f"&reply_terminator={terminator}"
    try:
        data = profile_data("maitai", table, port=url)
        data["instruments"][0]["flow_control"] = "none"
        errors = profile_errors(data)
        assert all(e.key.startswith("instruments[0].maitai") for e in errors), errors
        refused = constructor_refuses(MaiTaiLaser, pool.open(url, baudrate=9600), table)
        assert refused == bool(errors), (table, [str(e) for e in errors])
        event("refused by both" if errors else "accepted by both: built and connected")
        if errors:
            return
        built = build_and_connect(data, pool, data_dir)
        try:
            laser = built.root
            limits = table.get("wavelength_limits", list(maitai_module.TUNING_RANGE_NM))
            assert laser.wavelength_limits == tuple(float(v) for v in limits)
            assert laser.reply_terminator == terminator
            # where the laser said it is at connect (READ:WAV?, the read-back's last reading)
            assert math.isfinite(laser.wavelength.readback._connector.backend.last_reading["value"])
        finally:
            built.close()
    finally:
        unregister(name)


# --- the ESP300 and the Elliptec bus: tables of parts (axes, mounts) -----------------------------

SIM_MAX_VELOCITY = 50.0
"""The simulated stages' maximum velocity (``nVU?``), given in the simulator's URL."""


def spoil(draw: Any, entries: list[dict[str, Any]], edits: dict[str, Any]) -> None:
    """Half the time, one or two edits that make a valid table wrong (or maybe wrong: junk can
    land on a valid value), so about half the examples are accepted and build."""
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        if not entries:
            break  # "no axes" (or mounts) came first: nothing left to edit
        edit = draw(st.sampled_from(sorted(edits)))
        event(f"edit: {edit}")
        edits[edit](draw, entries)


def _junk_value(draw: Any, entries: list[dict[str, Any]]) -> None:
    entry = draw(st.sampled_from(entries))
    # an earlier edit may have dropped every key of the entry: junk under a key it must have
    entry[draw(st.sampled_from(sorted(entry) or ["name"]))] = draw(junk)


def _set(key: str, values: list[Any]) -> Any:
    def edit(draw: Any, entries: list[dict[str, Any]]) -> None:
        draw(st.sampled_from(entries))[key] = draw(st.sampled_from(values))

    return edit


def _drop(keys: list[str]) -> Any:
    def edit(draw: Any, entries: list[dict[str, Any]]) -> None:
        draw(st.sampled_from(entries)).pop(draw(st.sampled_from(keys)), None)

    return edit


def _twice(key: str) -> Any:
    def edit(draw: Any, entries: list[dict[str, Any]]) -> None:
        if len(entries) > 1 and key in entries[0]:
            entries[-1][key] = entries[0][key]

    return edit


def _disorder(draw: Any, entries: list[dict[str, Any]]) -> None:
    entry = draw(st.sampled_from(entries))
    if "low_limit" in entry and "high_limit" in entry:
        low, high = entry["low_limit"], entry["high_limit"]
        entry["low_limit"], entry["high_limit"] = (high, low) if draw(st.booleans()) else (low, low)


def limit_pair(span: float) -> st.SearchStrategy:
    """Two different limits within +/-``span``, low first: integers or decimals."""
    value = st.one_of(st.integers(int(-span), int(span)), st.floats(-span, span))
    return st.lists(value, min_size=2, max_size=2, unique=True).map(sorted)


def reported_rates(top: float) -> st.SearchStrategy:
    """Positive rates up to ``top`` as the controller reports them: integers, or decimals with
    at most ``REPLY_DECIMALS`` places."""
    scale = 10**esp300_module.REPLY_DECIMALS
    return st.one_of(
        st.integers(1, int(top)), st.integers(1, int(top * scale)).map(lambda k: k / scale)
    )


@st.composite
def esp300_tables(draw) -> dict[str, Any]:
    """``[instruments.esp300]`` tables: 1-3 valid axes (numbers, names, units, limits,
    velocities up to 1.5 times the stage maximum, accelerations), ``motor_on`` or not; then half
    the time the edits a user gets wrong: axis numbers out of 1-3 or twice, names twice or that
    no device id can take (upper case, spaces), limits equal or swapped, unknown units, speeds
    of 0 or less, a missing or unknown key, no axes or four, a value of the wrong type."""
    count = draw(st.integers(1, 3))
    numbers = draw(st.permutations([1, 2, 3]))[:count]
    names = draw(
        st.lists(
            st.sampled_from(["x", "y", "focus", "z_2", "stage_a"]),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    axes: list[dict[str, Any]] = []
    for number, name in zip(numbers, names, strict=True):
        low, high = draw(limit_pair(50.0))
        axis: dict[str, Any] = {
            "number": number,
            "name": name,
            "low_limit": low,
            "high_limit": high,
        }
        if draw(st.booleans()):
            axis["units"] = draw(st.sampled_from(sorted(esp300_module.ESP300_UNITS)))
        for key, top in (
            ("velocity", 1.5 * SIM_MAX_VELOCITY),
            ("acceleration", 100.0),
            ("deceleration", 100.0),
        ):
            if draw(st.booleans()):
                axis[key] = draw(reported_rates(top))
        axes.append(axis)
    spoil(
        draw,
        axes,
        {
            "junk": _junk_value,
            "number out of 1-3": _set("number", [0, 4, -1, 10]),
            "number twice": _twice("number"),
            "name twice": _twice("name"),
            "name no id takes": _set("name", ["X", "my axis", "2x", "", "x-y", "Focus"]),
            "limits not increasing": _disorder,
            "more decimals than reported": _set(
                draw(st.sampled_from(["velocity", "acceleration", "deceleration"])),
                [1.765625, 1e-7, 0.123456, draw(st.floats(0.0, 10.0, exclude_min=True))],
            ),
            "velocity above the stage maximum": _set(
                "velocity", [SIM_MAX_VELOCITY + 0.5, 2 * SIM_MAX_VELOCITY, 1000]
            ),
            "unknown units": _set("units", ["MM", "nm", "degree", "", "mm/s"]),
            "speed of 0 or less": _set(
                draw(st.sampled_from(["velocity", "acceleration", "deceleration"])), [0, -1, -0.5]
            ),
            "missing key": _drop(["number", "name", "low_limit", "high_limit"]),
            "unknown key": _set("home", [0.0]),
            "no axes": lambda draw, entries: entries.clear(),
            "four axes": lambda draw, entries: entries.extend(
                [{"number": 4, "name": "w", "low_limit": -1, "high_limit": 1}] * (4 - len(entries))
            ),
        },
    )
    table: dict[str, Any] = {"axes": axes}
    if draw(st.booleans()):
        table["motor_on"] = draw(mostly(st.booleans()))
    return table


def esp300_constructor_refuses(port: Any, table: dict[str, Any]) -> bool:
    """Whether ``ESP300Controller`` refuses the table, before any byte is sent: given its
    ``axes`` entries as they are (what ``build`` passes on) and, when every entry has a name of
    its own, by name as Python code gives them (``{name: the other keys}``); both forms agree."""
    options = {k: v for k, v in table.items() if k != "axes"}
    refused = constructor_refuses(
        lambda p, **kw: ESP300Controller(p, axes=table["axes"], **kw), port, options
    )
    names = [axis.get("name") for axis in table["axes"]]
    if all(isinstance(n, str) for n in names) and len(set(names)) == len(names):
        by_name = {
            axis["name"]: {k: v for k, v in axis.items() if k != "name"} for axis in table["axes"]
        }
        assert refused == constructor_refuses(
            lambda p, **kw: ESP300Controller(p, axes=by_name, **kw), port, options
        ), table
    return refused


ONE_AXIS = {"number": 1, "name": "x", "low_limit": -5, "high_limit": 5}
"""An axis both accept; the examples below each break one rule the profile once held alone."""


@PROPERTY
@given(table=esp300_tables())
@example(table={"axes": [{"number": 1, "name": "x", "low_limit": -5}]})  # a limit left out
@example(table={"axes": [{**ONE_AXIS, "number": 1.0}]})  # TOML types are strict
@example(table={"axes": [ONE_AXIS], "motor_on": 1})
@example(table={"axes": [{**ONE_AXIS, "acceleration": 1.765625}]})  # more decimals than reported
def test_every_esp300_table_the_profile_accepts_builds_and_every_refusal_agrees(
    table, pool, data_dir
):
    """The profile accepts a table if and only if ``ESP300Controller`` accepts it (one copy of
    the rules: the constructor validates through the driver's model), and an accepted table
    builds and connects with each axis's limits, units, velocities and motor state on the
    controller.

    One rule only the controller knows: its stage's maximum velocity (``nVU?``, asked at
    connect). A faster profile velocity passes ``config check`` and the constructor by design and
    is refused at connect, before ``VA`` is sent, in words that name the velocity, the axis and
    the maximum.
    """
    name = f"prop-esp300-{uuid.uuid4().hex[:8]}"
    url = f"sim://esp300?name={name}&speed=100&motors_on=0&max_velocity={SIM_MAX_VELOCITY:g}"
    try:
        data = profile_data("esp300", table, port=url)
        errors = profile_errors(data)
        assert all(e.key.startswith("instruments[0].esp300") for e in errors), errors
        refused = esp300_constructor_refuses(pool.open(url, baudrate=19200), table)
        assert refused == bool(errors), (table, [str(e) for e in errors])
        if errors:
            event("refused by both")
            return
        too_fast = [a for a in table["axes"] if a.get("velocity", 0) > SIM_MAX_VELOCITY]
        if too_fast:
            event("accepted, refused at connect: velocity above the stage maximum")
            built = build_entry(data, pool, data_dir)
            try:
                with pytest.raises(StartupFailed) as info:
                    connect_native(built, 10.0)
            finally:
                built.close()
            axis = too_fast[0]
            assert isinstance(info.value.cause, ValueRejected), info.value
            assert (
                f"velocity {axis['velocity']:g} (from the profile) is above the maximum of axis "
                f"{axis['number']} (dut_{axis['name']}), {SIM_MAX_VELOCITY:g}"
            ) in info.value.what, info.value.what
            return
        event("accepted by both: built and connected")
        built = build_and_connect(data, pool, data_dir)
        try:
            sim = lookup(name)
            for axis in table["axes"]:
                n, device = axis["number"], built.devices[f"dut_{axis['name']}"]
                assert device.limits == (axis["low_limit"], axis["high_limit"]), axis
                on_sim = sim.axes[n]
                units = esp300_module.ESP300_UNITS[axis.get("units", "mm")]
                assert on_sim.units == units, axis  # what the controller holds after nSN
                for key in ("velocity", "acceleration", "deceleration"):
                    if key in axis:
                        assert getattr(on_sim, key) == pytest.approx(axis[key], abs=1e-6), key
                assert on_sim.motor_on is table.get("motor_on", False), axis
        finally:
            built.close()
    finally:
        unregister(name)


@st.composite
def elliptec_tables(draw) -> dict[str, Any]:
    """``[instruments.elliptec]`` tables: 1-3 devices at different addresses (one hex digit as
    text in either case, or an integer), with or without a name, with none, one or both limits
    (inside and beyond a turn); then half the time the edits a user gets wrong: an address that
    is not one hex digit or twice, a name twice or that no device id takes, limits equal or
    swapped, a missing or unknown key, a value of the wrong type."""
    count = draw(st.integers(1, 3))
    digits = draw(st.lists(st.integers(0, 15), min_size=count, max_size=count, unique=True))
    names = draw(
        st.lists(
            st.sampled_from(["rot", "rot_a", "Rot2", "hwp", "qwp_1"]),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    turn = elliptec_module.FULL_TURN_DEG
    entries: list[dict[str, Any]] = []
    for digit, name in zip(digits, names, strict=True):
        form = draw(st.sampled_from(["int", "upper", "lower"]))
        address = digit if form == "int" else f"{digit:X}" if form == "upper" else f"{digit:x}"
        entry: dict[str, Any] = {"address": address}
        if draw(st.booleans()):
            entry["name"] = name
        low, high = draw(limit_pair(turn + 40))
        sides = draw(st.sampled_from(["none", "both", "low", "high"]))
        if sides in ("both", "low"):
            entry["low_limit"] = low
        if sides in ("both", "high"):
            entry["high_limit"] = high
        entries.append(entry)
    spoil(
        draw,
        entries,
        {
            "junk": _junk_value,
            "address not one hex digit": _set("address", [16, -1, "G", "10", "", "0x2"]),
            "address twice": _twice("address"),
            "name twice": _twice("name"),
            "name no id takes": _set("name", ["rot a", "rot-a", "", "é"]),
            "limits not increasing": _disorder,
            "missing address": _drop(["address"]),
            "unknown key": _set("velocity", [50]),
        },
    )
    return {"addresses": entries}


def hex_digit(address: Any) -> str | None:
    """The bus address character of a valid profile address, else None (written out here,
    not taken from the driver, so the test does not share the rule it checks)."""
    if isinstance(address, int) and not isinstance(address, bool) and 0 <= address <= 15:
        return "0123456789ABCDEF"[address]
    if isinstance(address, str) and len(address) == 1 and address.upper() in "0123456789ABCDEF":
        return address.upper()
    return None


def elliptec_constructor_refuses(port: Any, table: dict[str, Any]) -> bool:
    """Whether ``ElliptecBus`` and ``mount`` refuse the table in their own words: one
    ``mount(address, name=, limits=)`` per entry, a side the profile leaves out one turn away
    (``FULL_TURN_DEG``, the profile's documented meaning)."""
    turn = elliptec_module.FULL_TURN_DEG
    known = {"address", "name", "low_limit", "high_limit"}
    try:
        bus = ElliptecBus(port, name="dut")
        for entry in table["addresses"]:
            if set(entry) - known:
                raise TypeError(f"mount() has no {sorted(set(entry) - known)}")
            limits = None
            if "low_limit" in entry or "high_limit" in entry:
                limits = (entry.get("low_limit", -turn), entry.get("high_limit", turn))
            name = entry.get("name")
            bus.mount(entry["address"], name=f"dut_{name}" if name else None, limits=limits)
    except (DaqbridgeError, TypeError, KeyError):
        return True
    bus.close()
    return False


def elliptec_profile_only_refusal(table: dict[str, Any]) -> bool:
    """Rules of the profile that the bus's constructor leaves to its caller: names are parts
    of device ids (ASCII letters, digits, ``_``; one device per id), and limits are TOML
    numbers (the constructor reads text and booleans with ``float()``)."""
    names = []
    for entry in table["addresses"]:
        name = entry.get("name")
        if name is not None and not (isinstance(name, str) and re.fullmatch(r"\w+", name, re.A)):
            return True
        for key in ("low_limit", "high_limit"):
            value = entry.get(key)
            if isinstance(value, bool | str):
                return True
        digit = hex_digit(entry.get("address"))
        names.append(name if name is not None else (digit or "?").lower())
    return len(set(names)) < len(names)


@PROPERTY
@given(table=elliptec_tables())
def test_every_elliptec_table_the_profile_accepts_builds_and_every_refusal_agrees(
    table, pool, data_dir
):
    """The profile refuses what the bus's constructor refuses (plus the device-id and type
    rules above), and an accepted table builds and connects against a bus with those addresses:
    one mount per address, with its id and soft limits."""
    name = f"prop-elliptec-{uuid.uuid4().hex[:8]}"
    digits = {hex_digit(e.get("address")) for e in table["addresses"]} - {None}
    addresses = ",".join(sorted(digits)) or "0"
    url = f"sim://elliptec?name={name}&addresses={addresses}&speed=100&reply_latency=0"
    try:
        data = profile_data("elliptec", table, port=url)
        data["instruments"][0]["flow_control"] = "none"
        errors = profile_errors(data)
        assert all(e.key.startswith("instruments[0].elliptec") for e in errors), errors
        refused = elliptec_constructor_refuses(pool.open(url, baudrate=9600), table)
        expected = refused or elliptec_profile_only_refusal(table)
        assert expected == bool(errors), (table, refused, [str(e) for e in errors])
        event("refused by both" if errors else "accepted by both: built and connected")
        if errors:
            return
        built = build_and_connect(data, pool, data_dir)
        try:
            turn = elliptec_module.FULL_TURN_DEG
            mounts = {}
            for entry in table["addresses"]:
                digit = hex_digit(entry["address"])
                mount = built.devices[f"dut_{entry.get('name', digit.lower())}"]
                mounts[digit] = mount
                assert mount.address == digit
                assert mount.identity is not None and mount.identity.address == digit
                if "low_limit" in entry or "high_limit" in entry:
                    low, high = entry.get("low_limit", -turn), entry.get("high_limit", turn)
                    assert mount.soft_limits == (low, high), entry
                else:
                    assert mount.soft_limits is None, entry
            assert sorted(mounts) == sorted(lookup(name).addresses)
        finally:
            built.close()
    finally:
        unregister(name)


# --- one home for each fact ----------------------------------------------------------------------


def test_the_profile_uses_the_drivers_own_models():
    specs = registered_drivers()
    assert Newport1830cInstrument.model_fields["newport1830c"].annotation is (
        specs["newport1830c"].settings
    )
    assert specs["newport1830c"].settings is meter_module.Newport1830cSettings
    assert MaiTaiInstrument.model_fields["maitai"].annotation is specs["maitai"].settings
    assert specs["maitai"].settings is maitai_module.MaiTaiSettings
    assert Esp300Instrument.model_fields["esp300"].annotation is specs["esp300"].settings
    assert specs["esp300"].settings is esp300_module.Esp300Settings
    assert ElliptecInstrument.model_fields["elliptec"].annotation is specs["elliptec"].settings
    assert specs["elliptec"].settings is elliptec_module.ElliptecSettings


def test_the_esp300_and_elliptec_entries_use_the_drivers_entry_models():
    """The axis and address entries too: no copy of ``Esp300Axis`` or ``ElliptecAddress``
    in the profile."""
    import daqbridge.config as config

    axes = esp300_module.Esp300Settings.model_fields["axes"].annotation
    assert axes == list[esp300_module.Esp300Axis]
    addresses = elliptec_module.ElliptecSettings.model_fields["addresses"].annotation
    assert addresses == list[elliptec_module.ElliptecAddress]
    for name, model in (
        ("Esp300Axis", esp300_module.Esp300Axis),
        ("ElliptecAddress", elliptec_module.ElliptecAddress),
    ):
        assert getattr(config._models, name) is model, name


def test_the_models_bounds_are_the_driver_modules_constants():
    fields = meter_module.Newport1830cSettings.model_fields
    bounds = {type(m).__name__: m for m in fields["wavelength_nm"].metadata}
    assert (bounds["Ge"].ge, bounds["Le"].le) == meter_module.WAVELENGTH_RANGE_NM
    bounds = {type(m).__name__: m for m in fields["range"].metadata}
    assert (bounds["Ge"].ge, bounds["Le"].le) == meter_module.RANGE_RANGE
    laser = maitai_module.MaiTaiSettings
    assert laser.model_fields["wavelength_limits"].default == list(maitai_module.TUNING_RANGE_NM)
    low, high = maitai_module.TUNING_RANGE_NM
    assert laser.for_stack({"wavelength_limits": [low, high]}).wavelength_limits == [low, high]
    for outside in ([low - 0.5, high], [low, high + 0.5]):
        with pytest.raises(ValueError, match="increasing pair"):
            laser.for_stack({"wavelength_limits": outside})


@pytest.mark.parametrize(
    ("number", "home"),
    [(1100, "newport1830c.py"), (690, "maitai.py"), (1040, "maitai.py")],
)
def test_each_range_is_written_once_in_the_drivers_and_the_profile(number, home):
    """As a number in code (docstrings may quote it): the 1830-C's 300-1100 nm and the MaiTai's
    690-1040 nm. A second home (a driver's twin module, the profile) must import the constant
    (``WAVELENGTH_RANGE_NM``, ``TUNING_RANGE_NM``) instead."""
    hits = []
    for package in ("devices", "config"):
        for path in sorted((ROOT / "daqbridge" / package).rglob("*.py")):
            tokens = tokenize.tokenize(io.BytesIO(path.read_bytes()).readline)
            for tok in tokens:
                if tok.type == tokenize.NUMBER and ast.literal_eval(tok.string) == number:
                    hits.append(f"{path.relative_to(ROOT)}:{tok.start[0]}")
    assert len(hits) == 1 and hits[0].split(":")[0].endswith(home), hits


@pytest.mark.parametrize("driver", ["newport1830c", "maitai", "esp300", "elliptec"])
def test_each_driver_names_a_simulator_and_a_legacy_twin_that_exist(driver):
    """The ESP300 has no legacy driver: it names none, and the profile maps it to none."""
    from daqbridge.legacy import registered_drivers as legacy_drivers

    spec = registered_drivers()[driver]
    assert spec.simulator in known_kinds()
    assert spec.module == f"daqbridge.devices.{driver}"
    # the profile's own mapping agrees (None both ways for a native-only driver)
    assert LEGACY_DRIVER_TYPES.get(driver) == spec.legacy_twin
    if spec.legacy_twin is not None:
        assert spec.legacy_twin in legacy_drivers()


@pytest.mark.parametrize(
    ("driver", "parts"),
    [
        ("esp300", {"axes": [{"number": 2, "name": "focus", "low_limit": -1, "high_limit": 1}]}),
        ("elliptec", {"addresses": [{"address": "A", "name": "hwp"}, {"address": 3}]}),
    ],
)
def test_the_parts_the_profile_names_are_the_parts_the_driver_builds(driver, parts, pool, data_dir):
    """``parts()`` of the profile entry (the device ids ``config check`` reserves) and the
    driver's ``parts`` (what the runtime registers) name the same devices."""
    name = f"parts-{driver}-{uuid.uuid4().hex[:8]}"
    url = f"sim://{driver}?name={name}" + ("&addresses=3,A" if driver == "elliptec" else "")
    data = profile_data(driver, parts, port=url)
    data["instruments"][0]["flow_control"] = "none"
    try:
        (inst,) = load_profile(data).native_instruments()
        built = build_entry(data, pool, data_dir)
        try:
            expected = {f"dut_{part}" for part in inst.parts()}
            assert set(built.devices) == {"dut"} | expected, (built.devices, expected)
        finally:
            built.close()
    finally:
        unregister(name)


def test_a_second_home_for_a_driver_is_refused():
    spec = registered_drivers()["maitai"]

    def build(port: Any, **kwargs: Any) -> Any:  # declared here, in the test module
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="already declared by daqbridge.devices.maitai"):
        register_driver("maitai", settings=spec.settings, build=build)
    assert registered_drivers()["maitai"] is spec


def test_parts_are_declared_with_the_class_they_are_parts_of():
    """``addressed_parts`` finds a device's declaration by its class: a driver with parts and
    no ``device`` would leave the plans' metadata unable to find them."""
    spec = registered_drivers()["esp300"]
    with pytest.raises(ValueError, match="device="):
        register_driver("parts-alone", settings=spec.settings, build=spec.build, parts=dict)
    assert "parts-alone" not in registered_drivers()
    assert spec.device is ESP300Controller and spec.parts is esp300_module.axes_of


def test_the_profile_reference_is_generated_from_the_drivers_models():
    """docs/profile.md documents the drivers' own fields (tests/config/test_profile_cli.py
    checks that the file is current)."""
    from daqbridge.config import profile_reference_markdown

    reference = profile_reference_markdown()
    low, high = meter_module.WAVELENGTH_RANGE_NM
    assert f"Calibration wavelength ({low}-{high} nm); unset: keep." in reference
    lo, hi = maitai_module.TUNING_RANGE_NM
    assert f"inside the laser's {lo:g}-{hi:g} nm." in reference
