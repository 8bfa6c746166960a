"""Loading the shipped profiles, and the Profile API the runtime uses."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from daqbridge.config import (
    Esp300Instrument,
    PathExists,
    Profile,
    ProfileInvalid,
    PvcamInstrument,
    check_profile,
    dumps_toml,
    load_profile,
    parse_profile,
)
from daqbridge.errors import ConfigError
from tests.config.profile_support import EMBEDDED_SIM, LAB_EXAMPLE, SIM_TOML, sim_data


def test_embedded_sim_profile_is_identical_to_profiles_sim_toml():
    assert EMBEDDED_SIM.read_bytes() == SIM_TOML.read_bytes()
    assert Profile.default_path().resolve() == EMBEDDED_SIM.resolve()


def test_sim_profile_loads_without_warnings():
    profile = load_profile(SIM_TOML)
    assert profile.source == SIM_TOML.resolve()
    assert profile.warnings == []
    assert profile.simulation.enabled and profile.simulation.speed == 20.0


def test_default_profile_is_the_embedded_sim_lab():
    profile = load_profile(None)
    assert profile.source == EMBEDDED_SIM.resolve()
    assert profile.lab.name == "simulated lab"


def test_sim_profile_has_the_ids_the_readme_uses():
    ids = load_profile().device_ids()
    for needed in ("sim_stage_x", "sim_stage_y", "sim_meter"):
        assert needed in ids
    assert {"sim_rotators_a", "sim_rotators_b", "sim_rotators_c"} <= set(ids)
    assert {"sim_laser", "sim_dmm", "sim_camera", "sim_meter_legacy"} <= set(ids)
    assert len(ids) == len(set(ids))


def test_sim_profile_covers_the_whole_lab():
    profile = load_profile()
    drivers = {i.driver for i in profile.instruments}
    assert drivers == {"esp300", "newport1830c", "maitai", "elliptec", "scpi", "pvcam"}
    stage = profile.instrument("sim_stage")
    assert isinstance(stage, Esp300Instrument) and 2 <= len(stage.esp300.axes) <= 3
    assert stage.port.startswith("sim://esp300")
    assert profile.instrument("sim_dmm").resource == "sim-tcp"
    assert profile.instrument("sim_camera").pvcam.backend == "sim"
    rot = profile.instrument("sim_rotators")
    assert [a.address for a in rot.elliptec.addresses] == ["2", "3", "8"]
    assert rot.sim.addresses == [2, 3, 8]
    # a legacy driver shares hardware with a native one
    assert any(i.stack == "shadow" for i in profile.instruments)
    assert [(c.source, c.sink) for c in profile.couplings] == [("sim_laser", "sim_meter")]


def test_lab_example_loads_without_port_check():
    profile = load_profile(LAB_EXAMPLE)
    assert not profile.simulation.enabled
    assert all(not i.simulated for i in profile.instruments)
    assert profile.instrument("dmm").resource.startswith("TCPIP0::")
    assert profile.instrument("bench2_x").enabled is False
    assert "bench2_x" not in profile.device_ids()


def test_lab_example_fails_port_check_on_a_machine_without_the_adapters():
    with pytest.raises(ProfileInvalid) as info:
        load_profile(LAB_EXAMPLE, device_cache=PathExists())
    rules = {i.rule for i in info.value.issues}
    assert rules == {"port-missing"}
    assert len(info.value.issues) == 4  # the four serial instruments; VISA, camera, EPICS skipped


def test_stack_helpers_follow_stacks_and_shadow():
    profile = load_profile()
    native = [i.id for i in profile.native_instruments()]
    legacy = [i.id for i in profile.legacy_instruments()]
    assert "sim_meter" in native and "sim_meter" in legacy  # shadow: both
    assert "sim_laser" in legacy and "sim_laser" not in native
    assert "sim_stage" in native and "sim_stage" not in legacy

    data = sim_data()
    data["stacks"]["legacy"] = False
    profile = load_profile(data)
    assert profile.legacy_instruments() == []
    assert "sim_meter_legacy" not in profile.device_ids()
    assert "sim_laser" not in profile.device_ids()
    assert {w.rule for w in profile.warnings} == {"stack-off"}


def test_devices_name_their_instrument_stack_and_part():
    refs = {r.id: r for r in load_profile().devices()}
    assert refs["sim_stage_x"].instrument == "sim_stage" and refs["sim_stage_x"].part == "x"
    assert refs["sim_meter_legacy"].stack == "legacy"
    assert refs["sim_meter"].stack == "native"
    assert refs["sim_rotators_c"].part == "c"


def test_sources_path_text_mapping_and_bytes_agree(tmp_path):
    text = SIM_TOML.read_text()
    copy = tmp_path / "lab.toml"
    copy.write_text(text)
    a = load_profile(str(copy))
    b = load_profile(text)
    c = load_profile(sim_data())
    d = load_profile(text.encode())
    assert a.device_ids() == b.device_ids() == c.device_ids() == d.device_ids()
    assert a.source == copy.resolve() and b.source is None
    assert b.label == "<string>" and c.label == "<mapping>"


def test_relative_data_dir_is_relative_to_the_profile_file(tmp_path, monkeypatch):
    data = sim_data()
    data["lab"]["data_dir"] = "data"
    path = tmp_path / "lab.toml"
    path.write_text(dumps_toml(data))
    monkeypatch.delenv("DAQBRIDGE_DATA", raising=False)
    profile = load_profile(path)
    assert profile.data_path() == tmp_path / "data"
    cam = profile.instrument("sim_camera")
    assert isinstance(cam, PvcamInstrument)
    assert profile.frames_path(cam) == tmp_path / "data" / "frames" / "sim_camera"
    assert profile.catalog_dir() == tmp_path / "data" / "catalog"
    assert profile.data_path({"DAQBRIDGE_DATA": str(tmp_path / "x")}) == tmp_path / "x"


def test_defaults_per_driver():
    profile = load_profile()
    assert profile.instrument("sim_stage").baud_rate == 19200
    assert profile.instrument("sim_meter").baud_rate == 9600
    laser = profile.instrument("sim_laser")
    assert laser.flow_control == "xonxoff" and laser.timeout == 3.0
    assert [p for p, _ in profile.shutdown.phases()][0] == "run_engine"


def test_sim_options_for_the_simulator_factory():
    profile = load_profile()
    rot = profile.instrument("sim_rotators")
    opts = rot.sim.simulator_options(default_speed=profile.simulation.speed)
    assert opts == {"speed": 20.0, "addresses": [2, 3, 8]}
    laser = profile.instrument("sim_laser")
    assert laser.sim.simulator_options(default_speed=math.inf)["warmed_up"] is True
    # the instrument-level helper adds what the entry already says about the device
    assert laser.simulator_kind == "maitai"
    assert laser.simulator_options(20.0) == {
        "speed": 20.0,
        "warmed_up": True,
        "emission_on": True,
        "shutter_open": True,
        "reply_terminator": "LF",
    }
    stage = profile.instrument("sim_stage")
    assert stage.sim is None and stage.simulator_options(5.0) == {"speed": 5.0}
    data = sim_data()
    del data["instruments"][3]["sim"]
    rot = load_profile(data).instrument("sim_rotators")
    assert rot.simulator_options(1.0)["addresses"] == [2, 3, 8]


def test_env_api_key_is_resolved_from_the_environment():
    profile = load_profile(LAB_EXAMPLE)
    assert profile.lab.catalog_api_key == "env:TILED_API_KEY"
    assert profile.lab.resolved_api_key({"TILED_API_KEY": "s3cret"}) == "s3cret"
    assert profile.lab.resolved_api_key({}) is None


def test_check_profile_returns_everything_without_raising():
    data = sim_data()
    data["instruments"][0]["baudrate"] = 1
    profile, issues = check_profile(data)
    assert profile is None and [i.rule for i in issues] == ["unknown-key"]
    data = sim_data()
    data["simulation"]["enabled"] = False
    profile, issues = check_profile(data)
    assert profile is not None and len(issues) == 6
    assert {i.rule for i in issues} == {"simulation-off"}


def test_parse_profile_skips_whole_profile_rules():
    data = sim_data()
    data["instruments"].append(dict(data["instruments"][0]))  # duplicate id and port
    profile = parse_profile(data)  # models only
    assert len(profile.instruments) == 7
    with pytest.raises(ProfileInvalid):
        load_profile(data)


def test_unreadable_sources_are_config_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_profile(tmp_path / "missing.toml")
    assert info.value.file == str(tmp_path / "missing.toml")
    assert "not found" in str(info.value) and info.value.fix
    with pytest.raises(ConfigError, match="directory"):
        load_profile(tmp_path)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[lab]\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="UTF-8") as info:
        load_profile(bad)
    assert info.value.key == "2"
    if os.geteuid() != 0:  # root reads anything
        locked = tmp_path / "locked.toml"
        locked.write_text("[lab]\nname='x'\n")
        locked.chmod(0)
        with pytest.raises(ConfigError, match="permission"):
            load_profile(locked)


def test_a_profile_without_instruments_loads_with_a_warning():
    profile = load_profile('[lab]\nname = "empty"\n')
    assert profile.instruments == [] and profile.device_ids() == []
    assert [w.rule for w in profile.warnings] == ["no-instruments"]


def test_default_path_points_into_the_package():
    path = Profile.default_path()
    assert path.name == "sim.toml" and path.parent.name == "profiles"
    assert Path(path).is_file()


def test_every_simulator_of_the_sim_profile_can_be_built_from_its_entry():
    """The profile's sim wiring matches what the simulators accept (options, kinds)."""
    from daqbridge.config import SerialInstrument
    from daqbridge.sim import create_simulator

    profile = load_profile()
    built = {}
    for inst in profile.instruments:
        if isinstance(inst, SerialInstrument):
            sim = create_simulator(
                inst.simulator_kind, **inst.simulator_options(profile.simulation.speed)
            )
            built[inst.id] = sim
            assert sim.speed == 20.0
    assert set(built) == {"sim_stage", "sim_meter", "sim_laser", "sim_rotators"}
