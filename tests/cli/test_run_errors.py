"""``daqbridge run`` mistakes: found from the profile's device ids before the lab starts, one
clear message on stderr, exit status 2, no traceback. In-process through the real entry point."""

from __future__ import annotations

import re
import subprocess

import pytest

from daqbridge.catalog import DATA_ENV, open_catalog
from daqbridge.cli import main

from .conftest import child_env, daqbridge_argv, fresh_data_dir, unique


@pytest.fixture(autouse=True)
def _no_inherited_lab(monkeypatch, tmp_path):
    monkeypatch.delenv("DAQBRIDGE_PROFILE", raising=False)
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "data"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["run", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


README_ARGS = ("sim_stage_x", "-5", "5", "11", "--detector", "sim_meter")


def test_unknown_plan(capsys, tmp_path):
    code, out, err = run(capsys, "scna", *README_ARGS)
    assert code == 2
    assert "no plan 'scna'" in err and "Did you mean 'scan'" in err
    assert "uid:" not in out
    assert not (tmp_path / "data").exists()  # nothing was started, nothing written


def test_unknown_device_lists_the_close_ids(capsys):
    code, _, err = run(capsys, "scan", "sim_stage_z", "-5", "5", "11", "--detector", "sim_meter")
    assert code == 2
    assert "no device 'sim_stage_z'" in err
    assert "'sim_stage_x'" in err and "'sim_stage_y'" in err
    code, _, err = run(capsys, "scan", "sim_stage_x", "-5", "5", "11", "--detector", "sim_metr")
    assert code == 2 and "--detector: no device 'sim_metr'" in err and "'sim_meter'" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ("scan", "sim_stage_x", "-5", "five", "11", "--detector", "sim_meter"),
            "STOP 1: expected a number, got 'five'",
        ),
        (
            ("scan", "sim_stage_x", "-5", "5", "three", "--detector", "sim_meter"),
            "num: expected a whole number, got 'three'",
        ),
        (("count", "sim_meter", "num=three"), "num: expected a whole number, got 'three'"),
        (("count", "sim_meter", "delay=soon"), "delay: expected a number, got 'soon'"),
        (("scan", "sim_stage_x", "-5", "5", "11.5", "--detector", "sim_meter"), "whole number"),
        (("scan", "sim_stage_x", "-5", "5", "--detector", "sim_meter"), "then NUM"),
        (("scan", "sim_meter", "-5", "5", "11"), "needs at least one detector"),
        (("count", "sim_meter", "num=2.5"), "num must be a whole number"),
        (("count", "sim_meter", "nmu=3"), "Did you mean 'num'"),
        (("polarization_scan", "sim_rotators_a", "sim_meter", "0,,90"), "empty element"),
        (("scan", *README_ARGS, "--detecter", "sim_meter"), "Did you mean --detector"),
        (("scan", *README_ARGS, "--md", "oops"), "--md 'oops'"),
    ],
)
def test_bad_arguments(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2, err
    assert message in err
    assert err.startswith("daqbridge run: error: ")
    assert "uid:" not in out


def test_a_word_for_a_number_says_so_from_the_command(tmp_path):
    """The command as typed, in its own process: the message, exit status 2, nothing started."""
    argv = daqbridge_argv(
        "run", "scan", "sim_stage_x", "-5", "5", "three", "--detector", "sim_meter"
    )
    done = subprocess.run(
        argv, env=child_env(tmp_path / "data"), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        "daqbridge run: error: num: expected a whole number, got 'three'."
    ), done.stderr
    assert "no device" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "data").exists()  # refused before the lab started


def test_arguments_are_never_evaluated(capsys, tmp_path):
    mark = tmp_path / "evaluated"
    code_word = f"__import__('os').system('touch {mark}')"
    code, _, err = run(capsys, "count", "sim_meter", f"num={code_word}")
    assert code == 2 and "nothing is evaluated as Python" in err
    code, _, err = run(capsys, "count", code_word)
    assert code == 2 and "cannot read" in err
    code, _, err = run(capsys, "os.system", "ls")
    assert code == 2 and "no plan 'os.system'" in err
    assert not mark.exists()


def test_bad_profile_is_one_message(capsys, tmp_path):
    code, _, err = run(capsys, "count", "sim_meter", "--profile", str(tmp_path / "nope.toml"))
    assert code == 2  # a path typed wrong is a mistake in the command
    assert "nope.toml" in err


def test_no_plan_prints_usage(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "give a PLAN" in err


def test_list_shows_every_plan_with_its_call(capsys):
    code, out, _ = run(capsys, "--list")
    assert code == 0
    assert "scan MOTOR START STOP [MOTOR START STOP ...] NUM --detector DET" in out
    assert "-> bluesky.plans.scan([DET, ...], MOTOR, START, STOP, ..., num=NUM)" in out
    assert "polarization_scan ROTATOR METER ANGLES" in out


def test_help_documents_the_mapping_and_lists_the_plans(capsys):
    with pytest.raises(SystemExit) as info:
        main(["run", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--detector" in out and "scan MOTOR START STOP [MOTOR START STOP ...] NUM" in out
    assert "bluesky.plans.grid_scan([D], M1, START, STOP, NUM, M2, START, STOP, NUM)" in out
    assert "wavelength_scan LASER METER START STOP NUM" in out
    assert "Exit status" in out


def test_help_of_one_plan(capsys):
    code, out, _ = run(capsys, "polarization_scan", "--help")
    assert code == 0
    assert out.startswith("usage: daqbridge run polarization_scan ROTATOR METER ANGLES")
    assert "calls: daqbridge.plans.polarization_scan(" in out
    assert "extra_rotators" in out


def test_negative_numbers_and_lists_are_arguments_not_options(capsys):
    code, _, err = run(
        capsys,
        "raster",
        "sim_stage_x",
        "sim_stage_y",
        "sim_meter",
        "-1,1,2",
        "-.5,.5,2",
        "--detectr",
        "x",
    )
    assert code == 2
    assert "unknown option '--detectr'" in err and "Did you mean --detector" in err


def test_the_profile_comes_from_the_environment(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DAQBRIDGE_PROFILE", str(tmp_path / "from-env.toml"))
    code, _, err = run(capsys, "count", "sim_meter")
    assert code == 1 and "from-env.toml" in err
    # --profile wins over the environment
    code, _, err = run(capsys, "count", "sim_meter", "--profile", str(tmp_path / "flag.toml"))
    assert code == 2 and "flag.toml" in err and "from-env.toml" not in err


GARBLING_METER = """
[lab]
name = "garbling meter lab"

[simulation]
enabled = true

[[instruments]]
id = "meter"
driver = "newport1830c"
stack = "native"
port = "sim://newport1830c?name={name}"
sim = {{ faults = {{ garble_probability = 0.05, seed = 3 }} }}
"""


def test_an_instrument_failure_is_reported_in_the_instruments_words(
    capsys, monkeypatch, tmp_path, cli_catalog_template
):
    # Issue 17, item 2: the plan failed with "FailedStatus: DeviceStatus(device=meter, ...)".
    data = fresh_data_dir(cli_catalog_template, tmp_path / "garble-data")
    monkeypatch.setenv(DATA_ENV, str(data))
    profile = tmp_path / "garble.toml"
    profile.write_text(GARBLING_METER.format(name=unique("garbling_meter")))
    code, out, err = run(capsys, "count", "meter", "200", "--no-table", "--profile", str(profile))
    assert code == 1, err
    failure = next(line for line in err.splitlines() if "the plan failed" in line)
    assert failure.startswith(
        "daqbridge run: error: the plan failed: [instrument 'meter' on sim://newport1830c?name="
    ), failure
    # Whichever query the noise hit first (a reading, or a setting the baseline asks for).
    assert re.search(r"reply to '[A-Z]+\?'", failure) and "Fix:" in failure, failure
    assert "FailedStatus" not in err and "DeviceStatus" not in err
    # Said once: the runtime's own line about the failed run is this command's to say.
    assert err.count("[instrument 'meter'") == 1, err
    (uid,) = re.findall(r"^uid: (\S+)$", out, re.MULTILINE)
    catalog = open_catalog(data, readonly=True)
    try:
        (summary,) = catalog.runs(1)
    finally:
        catalog.close()
    assert summary.uid == uid and summary.exit_status == "fail"
    assert failure.endswith(summary.reason)  # the stop document says the same
