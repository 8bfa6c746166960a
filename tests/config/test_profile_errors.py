"""Schema errors: every one names the file, the key path and a fix, never a pydantic traceback."""

from __future__ import annotations

import pytest

from daqbridge.config import ProfileInvalid, load_profile
from daqbridge.errors import ConfigError
from tests.config.profile_support import (
    SIM_TOML,
    errors_of,
    index_of,
    instrument,
    one_issue,
    sim_data,
)


def _sim_text_with(old: str, new: str, tmp_path) -> str:
    text = SIM_TOML.read_text()
    assert old in text
    path = tmp_path / "lab.toml"
    path.write_text(text.replace(old, new, 1))
    return str(path)


def test_unknown_driver_lists_known_ones_and_suggests_the_nearest():
    data = sim_data()
    instrument(data, "sim_stage")["driver"] = "esp3000"
    issue = one_issue(data, "unknown-driver")
    assert issue.key == "instruments[0].driver"
    assert "unknown driver 'esp3000'" in issue.what
    assert "did you mean 'esp300'" in issue.fix
    for driver in ("newport1830c", "maitai", "elliptec", "scpi", "pvcam", "epics"):
        assert driver in issue.fix


def test_errors_in_a_file_give_file_line_and_key(tmp_path):
    path = _sim_text_with('driver = "maitai"', 'driver = "maitia"', tmp_path)
    with pytest.raises(ProfileInvalid) as info:
        load_profile(path)
    err = info.value
    issue = err.issues[0]
    assert issue.file == path and issue.key == "instruments[2].driver"
    lines = open(path).read().splitlines()
    assert lines[issue.line - 1].strip() == 'driver = "maitia"'
    assert str(err).startswith(f"[instrument 'sim_laser' on pty] {path}:{issue.line}:")
    assert err.key == "instruments[2].driver" and "maitai" in err.fix


def test_unknown_key_suggests_the_nearest_key():
    data = sim_data()
    instrument(data, "sim_meter")["baudrate"] = 9600
    issue = one_issue(data, "unknown-key")
    assert issue.key == "instruments[1].baudrate"
    assert "did you mean 'baud_rate'" in issue.fix
    assert issue.instrument == "sim_meter"


@pytest.mark.parametrize(
    ("where", "key", "expect_in_fix"),
    [
        (("lab",), "nmae", "'name'"),
        (("simulation",), "sped", "'speed'"),
        (("shutdown",), "runengine", "'run_engine'"),
        (("stacks",), "natve", "'native'"),
    ],
)
def test_typos_in_top_level_tables(where, key, expect_in_fix):
    data = sim_data()
    data[where[0]][key] = 1
    issue = one_issue(data, "unknown-key")
    assert issue.key == f"{where[0]}.{key}"
    assert expect_in_fix in issue.fix


def test_typo_deep_inside_an_axis():
    data = sim_data()
    instrument(data, "sim_stage")["esp300"]["axes"][1]["hihg_limit"] = 3.0
    issue = one_issue(data, "unknown-key")
    assert issue.key == "instruments[0].esp300.axes[1].hihg_limit"
    assert "'high_limit'" in issue.fix


def test_settings_table_of_another_driver():
    data = sim_data()
    meter = instrument(data, "sim_meter")
    meter["maitai"] = meter.pop("newport1830c")
    issue = one_issue(data, "unknown-key")
    assert issue.key == "instruments[1].maitai"
    assert "[instruments.newport1830c]" in issue.fix


def test_wrong_hardware_key_for_the_driver():
    data = sim_data()
    dmm = instrument(data, "sim_dmm")
    dmm["port"] = dmm.pop("resource")
    issues = errors_of(data)
    unknown = [i for i in issues if i.rule == "unknown-key"][0]
    assert unknown.key == "instruments[4].port" and "rename port to resource" in unknown.fix
    missing = [i for i in issues if i.rule == "missing-key"][0]
    assert missing.key == "instruments[4].resource" and "VISA" in missing.fix


def test_legacy_keys_point_to_their_new_place():
    data = sim_data()
    instrument(data, "sim_rotators")["device_addresses"] = [2, 3]
    issue = one_issue(data, "unknown-key")
    assert "elliptec.addresses" in issue.fix


@pytest.mark.parametrize(
    ("mutate", "key", "what", "fix"),
    [
        (
            lambda d: instrument(d, "sim_stage").__setitem__("baud_rate", "19200"),
            "instruments[0].baud_rate",
            "expected an integer, got the string '19200'",
            "remove the quotes: baud_rate = 19200",
        ),
        (
            lambda d: d["simulation"].__setitem__("enabled", "yes"),
            "simulation.enabled",
            "expected true or false",
            "enabled = true",
        ),
        (
            lambda d: d["lab"].__setitem__("name", 42),
            "lab.name",
            "expected a string, got 42",
            'name = "42"',
        ),
        (
            lambda d: instrument(d, "sim_stage")["esp300"]["axes"][0].__setitem__("number", 4),
            "instruments[0].esp300.axes[0].number",
            "number must be <= 3, got 4",
            "<= 3",
        ),
        (
            lambda d: instrument(d, "sim_meter")["newport1830c"].__setitem__("range", 9),
            "instruments[1].newport1830c.range",
            "range must be <= 8",
            "auto range",
        ),
        (
            lambda d: instrument(d, "sim_laser")["maitai"].__setitem__("reply_terminator", "LFF"),
            "instruments[2].maitai.reply_terminator",
            "'LFF' is not allowed",
            'did you mean "LF"',
        ),
        (
            lambda d: instrument(d, "sim_laser")["maitai"].__setitem__(
                "wavelength_limits", [650.0, 1000.0]
            ),
            "instruments[2].maitai.wavelength_limits",
            "690-1040",
            "690 <= low < high <= 1040",
        ),
        (
            lambda d: instrument(d, "sim_stage")["esp300"].__setitem__("axes", []),
            "instruments[0].esp300.axes",
            "at least 1 needed",
            "1 to 3 axes",
        ),
        (
            lambda d: instrument(d, "sim_stage").__setitem__("timeout", float("nan")),
            "instruments[0].timeout",
            "not a finite number",
            "nan and inf",
        ),
        (
            lambda d: instrument(d, "sim_stage").__setitem__("baud_rate", 12345),
            "instruments[0].baud_rate",
            "not a standard baud rate",
            "19200",
        ),
        (
            lambda d: instrument(d, "sim_stage").__setitem__("id", "stage-1"),
            "instruments[0].id",
            "not a valid id",
            "identifier",
        ),
        (
            lambda d: instrument(d, "sim_stage").__setitem__("port", "/dev/tty\x00USB0"),
            "instruments[0].port",
            "control character",
            "remove escapes",
        ),
        (
            lambda d: instrument(d, "sim_stage").__setitem__("port", "ftp://host/x"),
            "instruments[0].port",
            "'ftp'",
            "socket://",
        ),
        (
            lambda d: instrument(d, "sim_dmm").__setitem__("resource", "192.168.1.100"),
            "instruments[4].resource",
            "not a VISA resource string",
            "TCPIP0::",
        ),
        (
            lambda d: instrument(d, "sim_dmm").__setitem__("stack", "legacy"),
            "instruments[4].stack",
            "exists only in the native stack",
            'stack = "native"',
        ),
        (
            lambda d: instrument(d, "sim_meter").__setitem__("flow_control", "rtscts"),
            "instruments[1].flow_control",
            "breaks",
            '"none"',
        ),
        (
            lambda d: d["lab"].__setitem__("catalog_uri", "mongodb://x"),
            "lab.catalog_uri",
            "neither a Tiled server",
            "sqlite:///",
        ),
        (
            lambda d: d.__setitem__("instruments", {"a": 1}),
            "instruments",
            "expected an array",
            "[[instruments]]",
        ),
        (
            lambda d: d["instruments"].append("stage"),
            "instruments[6]",
            "expected a table",
            "[[instruments]]",
        ),
        (
            lambda d: instrument(d, "sim_stage").pop("driver"),
            "instruments[0]",
            "no driver key",
            "esp300",
        ),
        (
            lambda d: instrument(d, "sim_stage").__setitem__("driver", 7),
            "instruments[0].driver",
            "driver must be a string",
            "esp300",
        ),
        (
            lambda d: d.pop("lab"),
            "lab",
            "missing the [lab] table",
            "name =",
        ),
    ],
)
def test_value_errors(mutate, key, what, fix):
    data = sim_data()
    mutate(data)
    issues = errors_of(data)
    assert len(issues) == 1, [str(i) for i in issues]
    issue = issues[0]
    assert issue.key == key
    assert what in issue.what
    assert fix in issue.fix
    assert issue.file == "<mapping>"
    assert "pydantic" not in str(issue) and "function-after" not in str(issue)


def test_missing_settings_table_names_the_table():
    data = sim_data()
    instrument(data, "sim_stage").pop("esp300")
    issue = one_issue(data, "missing-key")
    assert issue.key == "instruments[0].esp300"
    assert "[instruments.esp300]" in issue.what


@pytest.mark.parametrize(
    ("mutate", "key", "what"),
    [
        (
            lambda d: instrument(d, "sim_stage")["esp300"]["axes"][1].__setitem__("number", 1),
            "instruments[0].esp300.axes[1].number",
            "axis number 1 appears twice",
        ),
        (
            lambda d: instrument(d, "sim_stage")["esp300"]["axes"][1].__setitem__("name", "x"),
            "instruments[0].esp300.axes[1].name",
            "axis name 'x' appears twice",
        ),
        (
            lambda d: instrument(d, "sim_stage")["esp300"]["axes"][0].__setitem__(
                "low_limit", 30.0
            ),
            "instruments[0].esp300.axes[0].high_limit",
            "low_limit 30 is not below high_limit 25",
        ),
        (
            lambda d: instrument(d, "sim_rotators")["elliptec"]["addresses"][1].__setitem__(
                "address", "2"
            ),
            "instruments[3].elliptec.addresses[1].address",
            "address '2' appears twice",
        ),
        (
            lambda d: instrument(d, "sim_rotators")["elliptec"]["addresses"][1].__setitem__(
                "address", "G"
            ),
            "instruments[3].elliptec.addresses[1].address",
            "not one hex digit",
        ),
        (
            lambda d: instrument(d, "sim_rotators")["sim"].__setitem__("addresses", [2, 16]),
            "instruments[3].sim.addresses[1]",
            "outside the Elliptec range",
        ),
        (
            lambda d: instrument(d, "sim_dmm")["scpi"]["signals"][1].__setitem__(
                "command", "SOUR:VOLT {val}"
            ),
            "instruments[4].scpi.signals[1].command",
            "exactly one {value}",
        ),
        (
            lambda d: instrument(d, "sim_dmm")["scpi"]["signals"][0].__setitem__(
                "query", "MEAS:VOLT:DC"
            ),
            "instruments[4].scpi.signals[0].query",
            "does not end in '?'",
        ),
        (
            lambda d: instrument(d, "sim_dmm")["scpi"]["signals"][0].__setitem__(
                "query", "*RST;MEAS?"
            ),
            "instruments[4].scpi.signals[0].query",
            "contains a command terminator or separator [';']",
        ),
        (
            lambda d: instrument(d, "sim_camera")["pvcam"].__setitem__("binning", [3, 3]),
            "instruments[5].pvcam.roi",
            "not a multiple of binning",
        ),
        (
            lambda d: instrument(d, "sim_laser")["sim"]["options"].__setitem__("bad", {"x": 1}),
            "instruments[2].sim.options.bad",
            "option bad has a value of type dict",
        ),
    ],
)
def test_table_rules_point_at_the_offending_key(mutate, key, what):
    data = sim_data()
    mutate(data)
    issues = errors_of(data)
    assert [i.key for i in issues] == [key], [str(i) for i in issues]
    assert what in issues[0].what
    assert issues[0].fix


def test_all_problems_are_reported_at_once():
    data = sim_data()
    instrument(data, "sim_stage")["baudrate"] = 1
    instrument(data, "sim_meter")["driver"] = "newport"
    data["simulation"]["speed"] = -1.0
    with pytest.raises(ProfileInvalid) as info:
        load_profile(data)
    keys = {i.key for i in info.value.issues}
    assert keys == {"instruments[0].baudrate", "instruments[1].driver", "simulation.speed"}
    text = str(info.value)
    assert "3 problems" in text and "instruments[1].driver" in text and "Fix:" in text


@pytest.mark.parametrize(
    ("text", "line", "col", "fix"),
    [
        ('[lab]\nname = "x"\nport = /dev/ttyUSB0\n', 3, 8, "quote strings"),
        ("[lab\nname = 'x'\n", 1, 5, "TOML syntax"),
        ("[lab]\nname = 'a'\nname = 'b'\n", 3, 11, "defined twice"),
        ('[lab]\nname = "unclosed\n', 2, 17, None),
    ],
)
def test_toml_syntax_errors_give_line_and_column(text, line, col, fix):
    issues = errors_of(text)
    assert len(issues) == 1
    issue = issues[0]
    assert issue.rule == "toml-syntax" and issue.line == line
    assert f"column {col}" in issue.what
    assert "^" in issue.what  # the offending line is shown with a caret
    if fix:
        assert fix in issue.fix
    assert str(issue).startswith(f"<string>:{line}:")


def test_toml_syntax_error_in_a_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[lab]\nname = 'x'\n\n[[instruments]\nid = 'a'\n")
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    assert f"{path}:4:" in str(info.value)


def test_line_numbers_of_cross_checks_in_a_file(tmp_path):
    path = _sim_text_with(
        'port = "sim://newport1830c?name=sim_meter"',
        'port = "sim://esp300?name=sim_stage"',
        tmp_path,
    )
    with pytest.raises(ProfileInvalid) as info:
        load_profile(path)
    shared = [i for i in info.value.issues if i.rule == "port-shared"][0]
    assert shared.key == "instruments[1].port"
    lines = open(path).read().splitlines()
    assert lines[shared.line - 1] == 'port = "sim://esp300?name=sim_stage"'
    assert index_of(sim_data(), "sim_meter") == 1
