"""Whole-profile rules: ids, shared hardware, ports, simulation, data directories, couplings."""

from __future__ import annotations

import copy
import os

import pytest

from daqbridge.config import (
    PathExists,
    ProfileInvalid,
    load_profile,
    parse_profile,
    validate_profile,
)
from tests.config.profile_support import SetOfPorts, instrument, one_issue, sim_data


@pytest.fixture
def real_port():
    """A real serial device node (a pseudo-terminal) that exists while the test runs."""
    controller, device = os.openpty()
    try:
        yield os.ttyname(device)
    finally:
        os.close(controller)
        os.close(device)


def _real_lab(port_a: str, port_b: str) -> dict:
    """The sim lab with the stage and meter on real ports and simulation still on."""
    data = sim_data()
    instrument(data, "sim_stage")["port"] = port_a
    instrument(data, "sim_meter")["port"] = port_b
    data["couplings"] = []  # a real meter follows no simulated laser
    return data


def _add(data: dict, base_id: str, **changes) -> dict:
    entry = copy.deepcopy(instrument(data, base_id))
    entry.update(changes)
    data["instruments"].append(entry)
    return entry


# --- ids ----------------------------------------------------------------------------------------


def test_duplicate_instrument_id():
    data = sim_data()
    _add(data, "sim_laser", port="pty")
    issue = one_issue(data, "duplicate-id")
    assert issue.key == "instruments[6].id"
    assert "'sim_laser' is used twice" in issue.what and "instruments[2].id" in issue.what
    assert "rename one" in issue.fix and issue.file == "<mapping>"


def test_instrument_id_colliding_with_a_derived_axis_id():
    data = sim_data()
    _add(data, "sim_laser", id="sim_stage_x", port="pty")
    issue = one_issue(data, "duplicate-id")
    assert issue.key == "instruments[6].id"
    assert "'sim_stage_x'" in issue.what
    assert "instruments[0].esp300.axes[0].name" in issue.what
    assert "<instrument id>_<name>" in issue.fix


def test_derived_address_id_colliding_with_an_axis_id():
    data = sim_data()
    instrument(data, "sim_rotators")["id"] = "sim_stage"  # sim_stage_a.. vs sim_stage
    issues = [i for i in _issues(data) if i.rule == "duplicate-id"]
    assert [i.key for i in issues] == ["instruments[3].id"]
    data = sim_data()
    rot = instrument(data, "sim_rotators")
    rot["id"] = "sim"
    rot["elliptec"]["addresses"][0]["name"] = "stage_x"  # sim_stage_x again
    issue = one_issue(data, "duplicate-id")
    assert issue.key == "instruments[3].elliptec.addresses[0].name"
    assert "'sim_stage_x'" in issue.what


def test_legacy_twin_id_collides():
    data = sim_data()
    _add(data, "sim_laser", id="sim_meter_legacy", port="pty")
    issue = one_issue(data, "duplicate-id")
    assert "'sim_meter_legacy'" in issue.what and "legacy twin" in issue.what


def _issues(data):
    return validate_profile(parse_profile(data))


# --- shared hardware ----------------------------------------------------------------------------


def test_two_instruments_on_one_port():
    data = sim_data()
    instrument(data, "sim_laser")["port"] = "sim://maitai?name=sim_stage"
    issue = [i for i in _issues(data) if i.rule == "port-shared"][0]
    assert issue.key == "instruments[2].port"
    assert "instruments[0] ('sim_stage', esp300)" in issue.what
    assert "instruments[2] ('sim_laser', maitai)" in issue.what
    assert "shadow" in issue.fix and issue.instrument == "sim_laser"


def test_same_instrument_in_both_stacks_without_shadow(real_port):
    data = _real_lab("/dev/null", real_port)
    instrument(data, "sim_meter")["stack"] = "native"
    _add(data, "sim_meter", id="meter_old", stack="legacy")
    issue = one_issue(data, "stack-conflict")
    assert issue.key == "instruments[6].port"
    assert "declared in both stacks" in issue.what
    assert "native in instruments[1] ('sim_meter')" in issue.what
    assert 'stack = "shadow"' in issue.fix


def test_shadow_instrument_declared_again_on_its_legacy_stack():
    data = sim_data()
    _add(data, "sim_meter", id="meter_old", stack="legacy")
    issue = one_issue(data, "stack-conflict")
    assert "already runs in both stacks" in issue.what
    assert "sim_meter_legacy" in issue.fix


def test_elliptec_bus_split_over_two_entries():
    data = sim_data()
    instrument(data, "sim_rotators")["port"] = "sim://elliptec?name=bus"
    entry = _add(data, "sim_rotators", id="more_rotators")
    entry["elliptec"] = {"addresses": [{"address": "5"}]}
    entry.pop("sim")
    issue = one_issue(data, "bus-split")
    assert issue.key == "instruments[6].port"
    assert "elliptec.addresses" in issue.fix and "one bus driver" in issue.fix


def test_symlink_and_target_are_one_port(real_port, tmp_path):
    link = tmp_path / "usb-FTDI_by-id-port0"
    link.symlink_to(real_port)
    data = _real_lab(str(link), real_port)
    issue = one_issue(data, "port-shared", device_cache=PathExists())
    assert issue.key == "instruments[1].port"


def test_visa_spellings_of_one_resource():
    data = sim_data()
    data["simulation"]["enabled"] = False
    data["instruments"] = [instrument(data, "sim_dmm")]
    dmm = data["instruments"][0]
    dmm["resource"] = "TCPIP::192.168.1.5::INSTR"
    dmm.pop("sim", None)
    _add(data, "sim_dmm", id="dmm2", resource="tcpip0::192.168.1.5::instr")
    issue = one_issue(data, "port-shared")
    assert issue.key == "instruments[1].resource"


def test_visa_serial_resource_shares_the_serial_port(real_port):
    data = _real_lab(real_port, "/dev/null")
    _add(data, "sim_dmm", id="dmm2", resource=f"ASRL{real_port}::INSTR")
    issue = one_issue(data, "port-shared")
    assert issue.key == "instruments[6].resource"
    assert "sim_stage" in issue.what


def test_pty_and_sim_tcp_are_never_shared_and_disabled_entries_are_ignored():
    data = sim_data()
    _add(data, "sim_laser", id="laser2")  # port = "pty": its own pty
    entry = _add(data, "sim_dmm", id="dmm2")  # resource = "sim-tcp": its own server
    entry["scpi"] = copy.deepcopy(entry["scpi"])
    _add(data, "sim_stage", id="stage_alt", enabled=False)  # same port, but disabled
    instrument(data, "stage_alt")["esp300"]["axes"][0]["name"] = "u"
    instrument(data, "stage_alt")["esp300"]["axes"][1]["name"] = "v"
    profile = load_profile(data)
    assert "stage_alt" not in profile.device_ids()


# --- ports --------------------------------------------------------------------------------------


def test_missing_port_is_found_before_anything_opens_it(real_port, tmp_path):
    missing = str(tmp_path / "ttyUSB9")
    data = _real_lab(real_port, missing)
    issue = one_issue(data, "port-missing", device_cache=PathExists())
    assert issue.key == "instruments[1].port" and issue.resource == missing
    assert f"port {missing} does not exist" in issue.what
    assert "daqbridge hardware" in issue.fix and "by-id" in issue.fix
    load_profile(_real_lab(real_port, real_port + "x"))  # no cache: not checked


def test_port_check_takes_any_object_with_exists_and_skips_urls(real_port):
    cache = SetOfPorts("/dev/ttyLAB0")
    data = _real_lab("/dev/ttyLAB0", "/dev/ttyLAB1")
    data["instruments"].append(
        {
            "id": "remote_meter",
            "driver": "newport1830c",
            "port": "socket://127.0.0.1:4001",
        }
    )
    issue = one_issue(data, "port-missing", device_cache=cache)
    assert issue.key == "instruments[1].port"
    assert "/dev/ttyLAB0" in cache.asked and "/dev/ttyLAB1" in cache.asked
    assert not any("://" in p or p == "pty" for p in cache.asked)


def test_a_broken_device_cache_is_a_warning_not_a_crash():
    class Broken:
        def exists(self, port):
            raise OSError("udev is gone")

    data = _real_lab("/dev/ttyLAB0", "/dev/ttyLAB1")
    profile = load_profile(data, device_cache=Broken())
    assert {w.rule for w in profile.warnings} == {"port-unchecked"}
    assert "udev is gone" in profile.warnings[0].what


def test_instruments_not_started_are_not_port_checked(tmp_path):
    data = _real_lab(str(tmp_path / "a"), str(tmp_path / "b"))
    instrument(data, "sim_stage")["enabled"] = False
    data["stacks"]["native"] = False  # sim_meter is shadow: its legacy twin still runs
    issue = one_issue(data, "port-missing", device_cache=PathExists())
    assert issue.key == "instruments[1].port"


# --- simulation ---------------------------------------------------------------------------------


def test_simulated_hardware_in_a_real_lab():
    data = sim_data()
    data["simulation"]["enabled"] = False
    issues = [i for i in _issues(data) if i.rule == "simulation-off"]
    keys = [i.key for i in issues]
    assert keys == [
        "instruments[0].port",
        "instruments[1].port",
        "instruments[2].port",
        "instruments[3].port",
        "instruments[4].resource",
        "instruments[5].pvcam.backend",
    ]
    assert "[simulation] enabled = false" in issues[0].what
    assert "enabled = true" in issues[0].fix


def test_pty_needs_the_runtime_to_start_simulators():
    data = sim_data()
    data["simulation"]["start_simulators"] = False
    issues = [i for i in _issues(data) if i.rule == "simulators-not-started"]
    assert [i.key for i in issues] == [
        "instruments[2].port",
        "instruments[3].port",
        "instruments[4].resource",
    ]
    assert "start_simulators = true" in issues[0].fix


def test_sim_url_kind_must_match_the_driver():
    data = sim_data()
    instrument(data, "sim_stage")["port"] = "sim://maitai?name=sim_stage"
    issue = one_issue(data, "sim-kind")
    assert issue.key == "instruments[0].port"
    assert "sim://esp300?name=sim_stage" in issue.fix


def test_sim_table_rules():
    data = sim_data()
    instrument(data, "sim_stage")["sim"] = {"kind": "maitai", "addresses": [1]}
    keys = {i.key for i in _issues(data) if i.severity == "error"}
    assert keys == {"instruments[0].sim.kind", "instruments[0].sim.addresses"}


def test_sim_table_on_real_hardware_and_absent_simulated_address_are_warnings(real_port):
    data = _real_lab(real_port, "/dev/null")
    instrument(data, "sim_stage")["sim"] = {"speed": 5.0}
    instrument(data, "sim_rotators")["sim"]["addresses"] = [2, 3]
    profile = load_profile(data)
    by_rule = {w.rule: w for w in profile.warnings}
    assert by_rule["sim-ignored"].key == "instruments[0].sim"
    absent = by_rule["sim-absent-address"]
    assert absent.key == "instruments[3].elliptec.addresses[2].address"
    assert "sim_rotators_c" in absent.what and "add 8" in absent.fix


# --- data directories ---------------------------------------------------------------------------


def test_two_cameras_with_the_same_frames_dir():
    data = sim_data()
    instrument(data, "sim_camera")["pvcam"]["frames_dir"] = "frames/shared"
    cam2 = _add(data, "sim_camera", id="cam2", camera="Other")
    cam2["pvcam"] = dict(cam2["pvcam"], frames_dir="frames/shared/cam2")  # nested: same tree
    issue = one_issue(data, "frames-dir-shared")
    assert issue.key == "instruments[6].pvcam.frames_dir"
    assert "'cam2' and 'sim_camera'" in issue.what and "its own" in issue.fix


def test_frames_inside_the_catalog_or_log(tmp_path):
    data = sim_data()
    data["lab"]["data_dir"] = str(tmp_path)
    instrument(data, "sim_camera")["pvcam"]["frames_dir"] = "catalog/frames"
    issue = one_issue(data, "frames-dir-reserved")
    assert str(tmp_path / "catalog") in issue.what
    instrument(data, "sim_camera")["pvcam"]["frames_dir"] = str(tmp_path / "wal")
    assert one_issue(data, "frames-dir-reserved").key == "instruments[5].pvcam.frames_dir"
    instrument(data, "sim_camera")["pvcam"]["frames_dir"] = "frames/cam"
    data["lab"]["catalog_uri"] = f"sqlite:///{tmp_path}/frames/catalog.db"
    one_issue(data, "frames-dir-reserved")  # frames/ holds the SQLite catalog
    instrument(data, "sim_camera")["pvcam"]["frames_dir"] = "."  # would contain the catalog
    one_issue(data, "frames-dir-reserved")


def test_two_cameras_with_default_dirs_are_fine():
    data = sim_data()
    _add(data, "sim_camera", id="cam2", camera="Other")
    profile = load_profile(data)
    assert profile.frames_path(profile.instrument("cam2")).name == "cam2"


# --- couplings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "rule", "key", "text"),
    [
        ({"source": "sim_lasr"}, "coupling-unknown", "couplings[0].source", "did you mean"),
        ({"sink": "sim_stage"}, "coupling-kind", "couplings[0].sink", "newport1830c"),
        ({"source": "sim_meter"}, "coupling-kind", "couplings[0].source", "maitai"),
    ],
)
def test_coupling_rules(change, rule, key, text):
    data = sim_data()
    data["couplings"][0].update(change)
    issue = one_issue(data, rule)
    assert issue.key == key and text in (issue.fix + issue.what)


def test_coupling_on_real_hardware_and_duplicate_sink(real_port):
    data = _real_lab("/dev/null", real_port)
    data["couplings"] = sim_data()["couplings"]
    issue = one_issue(data, "coupling-real")
    assert issue.key == "couplings[0].sink"
    data = sim_data()
    data["couplings"].append(dict(data["couplings"][0]))
    assert one_issue(data, "coupling-duplicate").key == "couplings[1].sink"


def test_coupling_with_disabled_end_is_a_warning():
    data = sim_data()
    instrument(data, "sim_laser")["enabled"] = False
    profile = load_profile(data)
    assert [w.rule for w in profile.warnings] == ["coupling-disabled"]


# --- stacks and lab warnings --------------------------------------------------------------------


def test_stack_warnings():
    data = sim_data()
    data["stacks"] = {"native": False, "legacy": False}
    assert [w.rule for w in load_profile(data).warnings] == ["stacks-off"]
    data = sim_data()
    data["stacks"]["native"] = False
    warnings = load_profile(data).warnings
    meter = [w for w in warnings if w.instrument == "sim_meter"][0]
    assert "runs only one twin" in meter.what
    assert len([w for w in warnings if w.rule == "stack-off"]) == 5


def test_polling_rate_on_a_native_instrument_is_a_warning():
    data = sim_data()
    instrument(data, "sim_stage")["polling_rate_hz"] = 10.0
    (w,) = load_profile(data).warnings
    assert w.rule == "polling-ignored" and w.key == "instruments[0].polling_rate_hz"


def test_api_key_warnings():
    data = sim_data()
    data["lab"]["catalog_api_key"] = "abc"
    assert [w.rule for w in load_profile(data).warnings] == ["api-key-unused"]
    data["lab"]["catalog_uri"] = "http://127.0.0.1:8000"
    (w,) = load_profile(data).warnings
    assert w.rule == "api-key-in-file" and "env:TILED_API_KEY" in w.fix
    data["lab"]["catalog_api_key"] = "env:1BAD"
    with pytest.raises(ProfileInvalid, match="environment variable"):
        load_profile(data)


def test_error_message_names_instrument_resource_file_key_and_fix(tmp_path):
    missing = str(tmp_path / "ttyUSB7")
    data = _real_lab(missing, "/dev/null")
    data["instruments"] = data["instruments"][:1]
    data["couplings"] = []
    with pytest.raises(ProfileInvalid) as info:
        load_profile(data, device_cache=PathExists())
    err = info.value
    assert err.instrument == "sim_stage" and err.resource == missing
    assert err.file == "<mapping>" and err.key == "instruments[0].port"
    assert str(err).startswith(f"[instrument 'sim_stage' on {missing}] <mapping>:instruments[0]")
    assert "Fix:" in str(err)


def test_the_runtime_device_cache_is_accepted_as_port_checker(real_port, tmp_path):
    from daqbridge.transport import DeviceCache

    cache = DeviceCache()
    load_profile(_real_lab(real_port, "sim://newport1830c?name=m"), device_cache=cache)
    missing = str(tmp_path / "ttyUSB3")
    issue = one_issue(_real_lab(real_port, missing), "port-missing", device_cache=cache)
    assert issue.resource == missing
