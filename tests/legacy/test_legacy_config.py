"""Legacy TOML configuration: parsing, the driver registry, and errors naming file, key and fix."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from daqbridge.errors import ConfigError
from daqbridge.legacy import (
    Command,
    LegacyRuntime,
    build_instrument,
    load_legacy_config,
    parse_legacy_config,
    register_driver,
    registered_drivers,
    unregister_driver,
)
from tests.legacy.legacy_test_instruments import CounterSource, wait_until


class CounterOptions(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    start: int = pydantic.Field(0, description="start = 0: first value of the counter")
    gain: float = pydantic.Field(1.0, ge=0, le=10, description="gain = 1.0 (0 to 10)")


def _counter_factory(entry, ports):
    inst = CounterSource(entry.name)
    inst.count = entry.options["start"]
    inst.gain = entry.options["gain"]
    inst.ports_seen = ports
    return inst


@pytest.fixture(autouse=True)
def test_driver():
    register_driver(
        "test_counter", _counter_factory, options=CounterOptions, default_baud_rate=9600
    )
    register_driver("test_portless", _counter_factory, options=CounterOptions, needs_port=False)
    yield
    unregister_driver("test_counter")
    unregister_driver("test_portless")


GOOD = """
[runtime]
restart_initial_s = 0.05
restart_max_s = 1
max_restarts = 3

[instruments.meter_a]
type = "test_counter"
port = "/dev/ttyUSB0"
polling_rate_hz = 20
start = 5

[instruments.meter_b]
type = "test_counter"
port = "/dev/ttyUSB0"
baud_rate = 9600
gain = 2.5

[instruments.clock]
type = "test_portless"
polling_rate_hz = 0
"""


def test_good_file_parses_with_defaults(tmp_path: Path):
    f = tmp_path / "lab.toml"
    f.write_text(GOOD)
    cfg = load_legacy_config(f)
    assert cfg.source == str(f)
    a, b, clock = cfg.instruments["meter_a"], cfg.instruments["meter_b"], cfg.instruments["clock"]
    assert (a.type, a.port, a.baud_rate, a.polling_rate_hz) == (
        "test_counter",
        "/dev/ttyUSB0",
        9600,
        20,
    )
    assert a.options["start"] == 5 and a.options["gain"] == 1.0
    assert b.options["gain"] == 2.5 and b.polling_rate_hz == 1.0
    assert clock.port is None and clock.polling_rate_hz == 0
    assert cfg.ports() == {"/dev/ttyUSB0": ["meter_a", "meter_b"]}
    policy = cfg.restart_policy()
    assert (policy.initial_delay, policy.max_delay, policy.max_restarts) == (0.05, 1, 3)


def test_from_config_builds_and_runs_instruments():
    cfg = parse_legacy_config(GOOD, source="inline.toml")
    pool = object()
    rt = LegacyRuntime.from_config(cfg, pool)
    try:
        assert set(rt.instruments) == {"meter_a", "meter_b", "clock"}
        assert rt.instruments["meter_a"].ports_seen is pool
        assert rt.restart_policy.max_restarts == 3
        rt.start()
        assert wait_until(lambda: rt.health()["meter_a"]["polls"] >= 2, 10)
        assert rt.submit("meter_b", Command.query("gain"), timeout=5).value == 2.5
        assert rt.health()["clock"]["polls"] == 0
    finally:
        assert rt.stop(3)


def _err(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_legacy_config(text, source="lab.toml")
    err = info.value
    assert err.file == "lab.toml" and "Fix:" in str(err) and "lab.toml" in str(err)
    return err


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[instruments.m]\ntype = test_counter\n", None, "not valid TOML"),
        ("[instrument.m]\ntype = 'test_counter'\n", "instrument", "did you mean 'instruments'"),
        ("", "instruments", "no instruments"),
        ("[instruments.m]\nport = '/dev/x'\n", "instruments.m.type", "missing key 'type'"),
        ("[instruments.m]\ntype = 'test_countr'\nport='x'\n", "instruments.m.type", "test_counter"),
        ("[instruments.m]\ntype = 3\n", "instruments.m.type", "must be a string"),
        ("[instruments.m]\ntype = 'test_counter'\n", "instruments.m.port", "missing key 'port'"),
        ("[instruments.m]\ntype='test_counter'\nport=5\n", "instruments.m.port", "non-empty"),
        (
            "[instruments.m]\ntype='test_counter'\nport='x'\nbaud_rate='fast'\n",
            "instruments.m.baud_rate",
            "positive integer",
        ),
        (
            "[instruments.m]\ntype='test_counter'\nport='x'\npolling_rate_hz=-1\n",
            "instruments.m.polling_rate_hz",
            ">= 0",
        ),
        (
            "[instruments.m]\ntype='test_counter'\nport='x'\npolling_rate=5\n",
            "instruments.m.polling_rate",
            "did you mean 'polling_rate_hz'",
        ),
        (
            "[instruments.m]\ntype='test_counter'\nport='x'\ngain=11\n",
            "instruments.m.gain",
            "0 to 10",
        ),
        (
            "[instruments.m]\ntype='test_counter'\nport='x'\nstart='five'\n",
            "instruments.m.start",
            "five",
        ),
        (
            "[instruments.'my meter']\ntype='test_counter'\nport='x'\n",
            "instruments.my meter",
            "identifier",
        ),
        ("[instruments]\nm = 3\n", "instruments.m", "expected a table"),
        (
            "[instruments.a]\ntype='test_counter'\nport='p'\n"
            "[instruments.b]\ntype='test_counter'\nport='p'\nbaud_rate=19200\n",
            "instruments.b.baud_rate",
            "shared with 'a'",
        ),
        (
            "[runtime]\nrestart_max=3\n[instruments.m]\ntype='test_portless'\n",
            "runtime.restart_max",
            "did you mean 'restart_max_s'",
        ),
        (
            "[runtime]\nmax_restarts=-2\n[instruments.m]\ntype='test_portless'\n",
            "runtime.max_restarts",
            "integer >= 0",
        ),
        (
            "[runtime]\nrestart_initial_s=9\n[instruments.m]\ntype='test_portless'\n",
            "runtime.restart_initial_s",
            "exceeds",
        ),
    ],
)
def test_bad_entries_name_file_key_and_fix(text, key, words):
    err = _err(text)
    assert err.key == key
    assert words in str(err)


def test_missing_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found") as info:
        load_legacy_config(tmp_path / "nope.toml")
    assert info.value.file.endswith("nope.toml")


def test_registry_guards_and_factory_failures():
    assert "test_counter" in registered_drivers()
    with pytest.raises(ValueError, match="already registered"):
        register_driver("test_counter", lambda e, p: CounterSource(e.name))
    with pytest.raises(ValueError, match="identifier"):
        register_driver("bad type", _counter_factory)

    def broken(entry, ports):
        raise KeyError("wavelength")

    register_driver("test_broken", broken, needs_port=False)
    try:
        cfg = parse_legacy_config("[instruments.x]\ntype='test_broken'\n", source="lab.toml")
        with pytest.raises(ConfigError, match="building test_broken instrument 'x' failed"):
            build_instrument(cfg.instruments["x"])
        register_driver("test_broken", lambda e, p: "not an instrument", replace=True)
        with pytest.raises(ConfigError, match="not a LegacyInstrument"):
            LegacyRuntime.from_config(cfg)
    finally:
        unregister_driver("test_broken")
