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
import tokenize
import uuid
from pathlib import Path
from typing import Any

import pytest
import serial
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import daqbridge.sim  # noqa: F401 - registers the sim:// URL handler
from daqbridge.cli import main
from daqbridge.config import (
    LEGACY_DRIVER_TYPES,
    MaiTaiInstrument,
    Newport1830cInstrument,
    check_profile,
    load_profile,
)
from daqbridge.devices import maitai as maitai_module
from daqbridge.devices import newport1830c as meter_module
from daqbridge.devices import register_driver, registered_drivers
from daqbridge.devices.maitai import MaiTaiLaser
from daqbridge.devices.newport1830c import Newport1830C
from daqbridge.errors import ConfigError, DaqbridgeError
from daqbridge.runtime._builders import BuildContext, build_native, connect_native
from daqbridge.sim import known_kinds, unregister
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


@pytest.fixture(scope="module")
def pool():
    with SerialPortPool() as p:
        yield p


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


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


def build_and_connect(data: dict, pool: SerialPortPool, data_dir: Path) -> Any:
    """Build and connect the entry as start-up does (``build_native``, ``connect_native``)."""
    profile = load_profile(data)
    (inst,) = profile.native_instruments()
    built = build_native(inst, BuildContext(profile, pool, VisaSessionManager(), data_dir))
    connect_native(built, 10.0)
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


# --- one home for each fact ----------------------------------------------------------------------


def test_the_profile_uses_the_drivers_own_models():
    specs = registered_drivers()
    assert Newport1830cInstrument.model_fields["newport1830c"].annotation is (
        specs["newport1830c"].settings
    )
    assert specs["newport1830c"].settings is meter_module.Newport1830cSettings
    assert MaiTaiInstrument.model_fields["maitai"].annotation is specs["maitai"].settings
    assert specs["maitai"].settings is maitai_module.MaiTaiSettings


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


def test_each_driver_names_a_simulator_and_a_legacy_twin_that_exist():
    from daqbridge.legacy import registered_drivers as legacy_drivers

    for driver in ("newport1830c", "maitai"):
        spec = registered_drivers()[driver]
        assert spec.simulator in known_kinds()
        assert spec.legacy_twin in legacy_drivers()
        assert LEGACY_DRIVER_TYPES[driver] == spec.legacy_twin  # the profile's own mapping agrees
        assert spec.module == f"daqbridge.devices.{driver}"


def test_a_second_home_for_a_driver_is_refused():
    spec = registered_drivers()["maitai"]

    def build(port: Any, **kwargs: Any) -> Any:  # declared here, in the test module
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="already declared by daqbridge.devices.maitai"):
        register_driver("maitai", settings=spec.settings, build=build)
    assert registered_drivers()["maitai"] is spec


def test_the_profile_reference_is_generated_from_the_drivers_models():
    """docs/profile.md documents the drivers' own fields (tests/config/test_profile_cli.py
    checks that the file is current)."""
    from daqbridge.config import profile_reference_markdown

    reference = profile_reference_markdown()
    low, high = meter_module.WAVELENGTH_RANGE_NM
    assert f"Calibration wavelength ({low}-{high} nm); unset: keep." in reference
    lo, hi = maitai_module.TUNING_RANGE_NM
    assert f"inside the laser's {lo:g}-{hi:g} nm." in reference
