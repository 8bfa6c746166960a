"""Migration of the legacy configuration format, and the TOML writer it uses."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from daqbridge.config import dumps_toml, load_profile, migrate_legacy, parse_legacy
from daqbridge.errors import ConfigError
from daqbridge.legacy import build_instrument, parse_legacy_config, registered_drivers
from daqbridge.runtime._builders import BuildContext, build_legacy
from daqbridge.transport import SerialPortPool, VisaSessionManager
from tests.config.profile_support import sim_data

LEGACY = """\
[runtime]
restart_initial_s = 0.2
stop_timeout_s = 8

[instruments.power_meter]
type = "newport_1830c"
port = "/dev/ttyUSB0"
baud_rate = 9600
polling_rate_hz = 5
wavelength_nm = 800
filter = 2

[instruments.rotators]
type = "elliptec"
port = "/dev/ttyUSB1"
baud_rate = 9600
polling_rate_hz = 2
device_addresses = [2, 3]

[instruments.laser]
type = "maitai"
port = "/dev/ttyUSB2"
polling_rate_hz = 1
wavelength_min = 700
wavelength_max = 1000

[instruments.stage]
type = "esp300"
port = "/dev/ttyUSB3"
baud_rate = 19200
axes = [
    { number = 1, name = "x", units = "mm", low_limit = -10, high_limit = 10 },
    { number = 2, name = "y", units = 2, min = -5, max = 5, velocity = 2 },
]
"""


def test_complete_legacy_file_round_trips_into_a_loadable_profile(tmp_path):
    src = tmp_path / "legacy.toml"
    src.write_text(LEGACY)
    migration = migrate_legacy(src)
    assert migration.decisions == [] and migration.problems == [], migration
    assert migration.complete
    profile = load_profile(migration.profile_text)
    assert [i.id for i in profile.instruments] == ["power_meter", "rotators", "laser", "stage"]
    assert all(i.stack == "legacy" for i in profile.instruments)
    assert profile.native_instruments() == []
    meter = profile.instrument("power_meter")
    assert meter.driver == "newport1830c" and meter.port == "/dev/ttyUSB0"
    assert meter.polling_rate_hz == 5.0 and meter.newport1830c.wavelength_nm == 800
    assert meter.newport1830c.filter == "medium"
    rot = profile.instrument("rotators")
    assert [a.address for a in rot.elliptec.addresses] == ["2", "3"]
    assert {"rotators_2", "rotators_3"} <= set(profile.device_ids())
    assert profile.instrument("laser").maitai.wavelength_limits == [700.0, 1000.0]
    y = profile.instrument("stage").esp300.axes[1]
    assert (y.units, y.low_limit, y.high_limit, y.velocity) == ("mm", -5.0, 5.0, 2.0)
    assert profile.shutdown.legacy == 8.0
    assert profile.lab.name == "migrated from legacy.toml"
    assert any("restart_initial_s" in n for n in migration.notes)
    assert any("/dev/serial/by-id" in n for n in migration.notes)


def test_missing_axis_limits_are_reported_and_never_invented():
    legacy = '[instruments.stage]\ntype = "esp300"\nport = "/dev/ttyS0"\naxes = [1, 2]\n'
    migration = migrate_legacy(legacy)
    assert not migration.complete
    assert len(migration.decisions) == 2
    assert migration.decisions[0].startswith("instruments.stage.axes[0]:")
    assert "none were invented" in migration.decisions[0]
    assert "low_limit" not in migration.profile_text.split("[[instruments]]")[1]
    assert any("axes[0].low_limit" in p for p in migration.problems)


def test_unknown_type_is_written_commented_out():
    legacy = (
        '[instruments.smu]\ntype = "keithley_2400"\nport = "/dev/ttyS1"\ncompliance = 0.1\n'
        '[instruments.meter]\ntype = "newport_1830c"\nport = "/dev/ttyS0"\n'
    )
    migration = migrate_legacy(legacy)
    assert migration.problems == []
    (decision,) = migration.decisions
    assert decision.startswith("instruments.smu.type:") and "keithley_2400" in decision
    data = tomllib.loads(migration.profile_text)
    assert [i["id"] for i in data["instruments"]] == ["meter"]
    assert '# type = "keithley_2400"' in migration.profile_text
    assert "# compliance = 0.1" in migration.profile_text


def test_elliptec_tables_on_one_bus_are_merged():
    legacy = (
        '[instruments.hwp]\ntype = "elliptec"\nport = "/dev/ttyS2"\ndevice_addresses = [2]\n'
        '[instruments.pol]\ntype = "elliptec"\nport = "/dev/ttyS2"\ndevice_addresses = ["3", 2]\n'
    )
    migration = migrate_legacy(legacy)
    profile = load_profile(migration.profile_text)
    (bus,) = profile.instruments
    assert [a.address for a in bus.elliptec.addresses] == ["2", "3"]
    assert "hwp_pol_3" in profile.device_ids()
    assert any("merged" in n for n in migration.notes)
    assert any("address 2 is also listed" in d for d in migration.decisions)


def test_shared_serial_port_keeps_the_first_and_reports_the_second():
    legacy = (
        '[instruments.a]\ntype = "newport_1830c"\nport = "/dev/ttyS0"\n'
        '[instruments.b]\ntype = "maitai"\nport = "/dev/ttyS0"\n'
    )
    migration = migrate_legacy(legacy)
    assert migration.problems == []
    (decision,) = migration.decisions
    assert decision.startswith("instruments.b.port:") and "also used by 'a'" in decision
    assert [i.id for i in load_profile(migration.profile_text).instruments] == ["a"]


def test_unmapped_keys_and_sections_are_reported():
    legacy = (
        "[gui]\ntheme = 'dark'\n"
        '[instruments.m]\ntype = "newport_1830c"\nport = "/dev/ttyS0"\nbeeper = true\n'
    )
    migration = migrate_legacy(legacy)
    assert sorted(d.split(":")[0] for d in migration.decisions) == ["gui", "instruments.m.beeper"]


def test_missing_port_and_non_table_entries_are_decisions():
    legacy = '[instruments]\nodd = 3\n[instruments.m]\ntype = "maitai"\n'
    migration = migrate_legacy(legacy)
    assert any(d.startswith("instruments.odd:") for d in migration.decisions)
    assert any(d.startswith("instruments.m.port:") for d in migration.decisions)
    assert any("instruments[0].port" in p for p in migration.problems)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[runtime]\nx = 1\n", "no \\[instruments.<name>\\] tables"),
        ("[[instruments]]\nid = 'a'\n", "looks like a profile already"),
        ("[instruments.a\n", "TOML syntax"),
    ],
)
def test_unusable_legacy_files_are_config_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_legacy(text)


def test_missing_legacy_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        migrate_legacy(tmp_path / "nope.toml")


def test_dumps_toml_round_trips_the_sim_profile():
    data = sim_data()
    text = dumps_toml(data)
    assert tomllib.loads(text) == data
    assert load_profile(text).device_ids() == load_profile(data).device_ids()


def test_dumps_toml_escapes_awkward_strings_and_keys():
    data = {
        "a": {"we ird.key": 'quote " back\\slash \n tab\t del\x7f é', "n": float("inf")},
        "list": [[1, 2], {"x": [True, False]}],
    }
    assert tomllib.loads(dumps_toml(data)) == data


# --- issue 18.5: a migrated instrument behaves as it did on the legacy stack -------------------

# Every option of each legacy driver, each set to a value other than its default (the test below
# checks that against the driver's registered options model, so a new option cannot be missed).
EVERY_OPTION: dict[str, dict[str, Any]] = {
    "newport_1830c": {
        "wavelength_nm": 633,
        "units": "dBm",
        "range": 5,
        "filter": "fast",
        "attenuator": True,
        "timeout_s": 2.5,
        "lease_timeout_s": 7.0,
    },
    "maitai": {
        "terminator": "CRLF",
        "xonxoff": True,
        "wavelength_nm": 850.0,
        "timeout_s": 4.0,
        "command_gap_s": 0.1,
        "settle_timeout_s": 45.0,
        "settle_tolerance_nm": 0.5,
        "readback_timeout_s": 2.0,
        "lease_timeout_s": 8.0,
    },
    "elliptec": {
        "device_addresses": [2, 11],
        "timeout_s": 1.5,
        "move_timeout_s": 30.0,
        "command_spacing_s": 0.2,
        "position_tolerance_deg": 0.1,
        "lease_timeout_s": 6.0,
    },
}
REQUIRED = {"elliptec": {"device_addresses": [2, 11]}}


def _legacy_text(type_name: str, options: dict[str, Any], common: str = "") -> str:
    lines = ["[instruments.dev]", f'type = "{type_name}"', 'port = "/dev/ttyS7"', common]
    lines += [f"{k} = {json.dumps(v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


def _resolved(instrument: Any) -> dict[str, Any]:
    """What a legacy driver resolved from its options: every plain attribute (port settings,
    timeouts, flow control, terminator, tolerances, the settings applied at connect)."""
    plain = (bool, int, float, str, bytes, tuple, list, type(None))
    return {k: v for k, v in vars(instrument).items() if isinstance(v, plain)}


def _built_both_ways(text: str, tmp_path: Path) -> tuple[dict, float, dict, float]:
    """(resolved, polling rate) of the legacy driver built from the legacy file, and from the
    profile migrated from it, through the runtime's own builder."""
    config = parse_legacy_config(text, source="legacy.toml")
    (entry,) = config.instruments.values()
    migration = migrate_legacy(text)
    assert migration.problems == [], migration.problems
    profile = load_profile(migration.profile_text)
    (inst,) = profile.instruments
    with SerialPortPool() as pool:  # nothing is opened: drivers open their port at connect
        direct = build_instrument(entry, pool)
        ctx = BuildContext(profile, pool, VisaSessionManager(), tmp_path)
        via_profile, rate = build_legacy(inst, ctx)
    return _resolved(direct), entry.polling_rate_hz, _resolved(via_profile), rate


@pytest.mark.parametrize("type_name", sorted(EVERY_OPTION))
def test_every_legacy_option_survives_migration(type_name, tmp_path):
    options = EVERY_OPTION[type_name]
    model = registered_drivers()[type_name].options
    assert set(options) == set(model.model_fields)
    assert all(options[k] != info.default for k, info in model.model_fields.items())
    text = _legacy_text(type_name, options, "baud_rate = 19200\npolling_rate_hz = 3.5")
    legacy, legacy_rate, migrated, migrated_rate = _built_both_ways(text, tmp_path)
    assert migrated == legacy
    assert migrated_rate == legacy_rate == 3.5


@pytest.mark.parametrize("type_name", sorted(EVERY_OPTION))
def test_legacy_defaults_survive_migration(type_name, tmp_path):
    """Keys the legacy file leaves out mean the legacy driver's defaults; where the profile's
    default differs (MaiTai: flow control, reply timeout) the migration writes it out."""
    text = _legacy_text(type_name, REQUIRED.get(type_name, {}))
    legacy, legacy_rate, migrated, migrated_rate = _built_both_ways(text, tmp_path)
    assert migrated == legacy
    assert migrated_rate == legacy_rate


def test_maitai_defaults_are_written_out_and_reported():
    migration = migrate_legacy(_legacy_text("maitai", {}))
    entry = tomllib.loads(migration.profile_text)["instruments"][0]
    assert (entry["flow_control"], entry["timeout"]) == ("none", 2.0)
    assert any(n.startswith("instruments.dev.xonxoff:") for n in migration.notes)
    assert any(n.startswith("instruments.dev.timeout_s:") for n in migration.notes)


def test_restart_policy_and_stop_timeout_survive_migration():
    text = (
        "[runtime]\nrestart_initial_s = 0.3\nrestart_max_s = 9.0\nmax_restarts = 4\n"
        "stop_timeout_s = 8.0\n" + _legacy_text("maitai", {})
    )
    legacy = parse_legacy_config(text)
    migration = migrate_legacy(text)
    profile = load_profile(migration.profile_text)
    assert profile.legacy.restart_policy() == legacy.restart_policy()
    assert profile.shutdown.legacy == legacy.runtime.stop_timeout_s


def test_every_dropped_key_is_listed_with_why():
    text = "[gui]\ntheme = 'dark'\n[runtime]\nrestart_jitter = 1\n" + _legacy_text(
        "maitai", {"settle_tolerance_nm": 0.5, "beeper": True}
    )
    migration = migrate_legacy(text)
    assert sorted(migration.dropped) == ["gui", "instruments.dev.beeper", "runtime.restart_jitter"]
    for key in migration.dropped:
        (line,) = [d for d in migration.decisions if d.startswith(f"{key}:")]
        assert "not migrated" in line
    entry = tomllib.loads(migration.profile_text)["instruments"][0]
    assert entry["legacy"] == {"settle_tolerance_nm": 0.5}
