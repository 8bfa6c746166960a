"""Profiles that used to crash the loader or pass the check and fail at start-up (issue 17,
items 9 and 12): nesting deeper than Python's stack, and a data directory nobody can write.
Both are profile issues with file, key and fix, found before any port opens."""

from __future__ import annotations

import os
import uuid

import pytest

import daqbridge.sim
from daqbridge.cli import main
from daqbridge.config import (
    PathExists,
    ProfileInvalid,
    check_profile,
    dumps_toml,
    load_profile,
)
from tests.config.profile_support import SIM_TOML, errors_of, index_of, sim_data

DEEP = 5000  # far beyond the recursion limit: tomllib itself gives up


@pytest.fixture(autouse=True)
def _profile_data_dir(monkeypatch):
    """The profile's own data_dir, not the test environment's."""
    monkeypatch.delenv("DAQBRIDGE_DATA", raising=False)


# --- nesting ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("[" * DEEP + "]" * DEEP, id="arrays"),
        pytest.param("{ a = " * DEEP + "1" + " }" * DEEP, id="inline-tables"),
    ],
)
def test_nesting_deeper_than_the_parser_is_an_issue_not_a_recursion_error(value, tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text(f'[lab]\nname = "deep"\nextra = {value}\n')
    (issue,) = errors_of(path)
    assert issue.rule == "nesting" and issue.line == 3
    assert "nested more than 16 levels deep" in issue.what
    assert issue.where == f"{path}:3"


def test_nesting_the_parser_survives_is_reported_with_its_key():
    (issue,) = errors_of('[lab]\nname = "deep"\nextra = ' + "[" * 40 + "]" * 40 + "\n")
    assert issue.rule == "nesting" and issue.line == 3
    assert issue.key == "lab.extra" + "[0]" * 14


def test_config_check_of_a_deep_profile_is_one_message(tmp_path, capsys):
    path = tmp_path / "deep.toml"
    path.write_text('[lab]\nname = "deep"\nextra = ' + "[" * DEEP + "]" * DEEP + "\n")
    assert main(["config", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "RecursionError" not in err
    assert f"{path}:3: error: arrays or tables are nested more than 16 levels deep" in err
    assert "1 error(s)" in err


# --- the data directory -------------------------------------------------------------------------


def data_dir_issues(data, cache=PathExists()):
    _, issues = check_profile(data, device_cache=cache)
    return [i for i in issues if i.rule == "data-dir-unwritable"]


def test_dev_null_as_data_dir_is_refused_naming_path_and_fix():
    data = sim_data()
    data["lab"]["data_dir"] = "/dev/null"
    (issue,) = data_dir_issues(data)  # said once: not again for the camera's frames under it
    assert issue.key == "lab.data_dir" and issue.resource == "/dev/null"
    assert "the data directory /dev/null (from lab.data_dir) is a character device" in issue.what
    assert "set lab.data_dir to a directory this user can write" in issue.fix


def test_a_data_dir_below_a_file_cannot_be_created(tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("not a directory")
    data = sim_data()
    data["lab"]["data_dir"] = str(blocker / "data")
    (issue,) = data_dir_issues(data)
    assert f"cannot be created: {blocker} is a regular file, not a directory" in issue.what


def test_daqbridge_data_is_checked_as_the_data_dir(monkeypatch):
    monkeypatch.setenv("DAQBRIDGE_DATA", "/dev/null")
    (issue,) = data_dir_issues(sim_data())
    assert "(from DAQBRIDGE_DATA)" in issue.what and "set DAQBRIDGE_DATA" in issue.fix


def test_a_cameras_frames_dir_is_checked_too(tmp_path):
    data = sim_data()
    data["lab"]["data_dir"] = str(tmp_path / "data")
    cam = index_of(data, "sim_camera")
    data["instruments"][cam]["pvcam"]["frames_dir"] = "/dev/null/frames"
    (issue,) = data_dir_issues(data)
    assert issue.key == f"instruments[{cam}].pvcam.frames_dir" and issue.instrument == "sim_camera"
    assert "cannot be created: /dev/null is a character device" in issue.what


def test_a_missing_data_dir_under_a_writable_one_is_fine_and_not_created(tmp_path):
    data = sim_data()
    data["lab"]["data_dir"] = str(tmp_path / "new" / "data")
    assert data_dir_issues(data) == []
    assert not (tmp_path / "new").exists()  # config check only looks


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any directory")
def test_a_read_only_data_dir_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    data = sim_data()
    data["lab"]["data_dir"] = str(locked)
    (issue,) = data_dir_issues(data)
    assert "is a directory this user cannot write to" in issue.what


def test_without_a_device_cache_the_machine_is_not_checked():
    """A profile for another machine (`config check --no-port-check`)."""
    data = sim_data()
    data["lab"]["data_dir"] = "/dev/null"
    assert data_dir_issues(data, cache=None) == []


def test_config_check_refuses_dev_null(tmp_path, capsys):
    data = sim_data()
    data["lab"]["data_dir"] = "/dev/null"
    path = tmp_path / "devnull.toml"
    path.write_text(dumps_toml(data))
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:" in err and "error: lab.data_dir: the data directory /dev/null" in err
    assert main(["config", "check", "--no-port-check", str(path)]) == 0
    assert "ports not checked, nor the data directory" in capsys.readouterr().out
    assert main(["config", "check", str(SIM_TOML)]) == 0  # a writable data_dir passes


def test_start_up_refuses_the_profile_before_any_port_opens(tmp_path, capsys):
    """The meter's simulator is the test's own: it would see the driver's first query if
    start-up got as far as opening ports."""
    name = f"datadir-{uuid.uuid4().hex[:8]}"
    meter = daqbridge.sim.register(name, daqbridge.sim.create_simulator("newport1830c"))
    try:
        path = tmp_path / "lab.toml"
        path.write_text(
            f"""
[lab]
name = "data dir test"
data_dir = "/dev/null"

[simulation]
enabled = true

[[instruments]]
id = "meter"
driver = "newport1830c"
port = "sim://newport1830c?name={name}"
"""
        )
        with pytest.raises(ProfileInvalid, match="/dev/null"):
            load_profile(path, device_cache=PathExists())
        code = main(["run", "count", "meter", "--profile", str(path)])
        out, err = capsys.readouterr()
        assert code == 1, err  # a profile problem: `daqbridge run` exits 1 for those
        assert "Traceback" not in out + err and "uid:" not in out
        assert "lab.data_dir: the data directory /dev/null" in err
        assert "starting" not in err
        assert meter.received_lines == []
    finally:
        daqbridge.sim.unregister(name)
