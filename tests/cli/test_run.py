"""``daqbridge run`` end to end: real processes on the embedded simulated lab (simulators on
their wire protocols, both driver stacks, a RunEngine, the Tiled catalog on SQLite)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

import pytest

from daqbridge.catalog import open_catalog
from daqbridge.sim import serve_pty

from .conftest import (
    Cli,
    child_env,
    daqbridge_argv,
    fresh_data_dir,
    slow_lab_profile,
    the_run,
    unique,
)

UID = re.compile(r"^uid: ([0-9a-f-]{36})$", re.MULTILINE)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_readme_command(lab_runs):
    """`daqbridge run scan sim_stage_x -5 5 11 --detector sim_meter` on a fresh install."""
    run = lab_runs["scan"]
    code, out, err = run.result()
    assert code == 0, err
    assert "Traceback" not in err
    uids = UID.findall(out)
    assert len(uids) == 1, out
    uid = uids[0]
    # how to read it back, with the data directory spelled out
    assert f"daqbridge catalog show {uid} --data {run.data}" in out
    assert f"open_catalog('{run.data}', readonly=True).client['{uid}'].primary.read()" in out
    assert "plan: scan([sim_meter], sim_stage_x, -5, 5, num=11)" in out
    assert "sim_meter_power" in out  # the live table
    summary, table, start = the_run(run.data, uid)
    assert summary.exit_status == "success"
    assert summary.num_events["primary"] == 11
    assert list(table["sim_stage_x"].values) == pytest.approx([float(x) for x in range(-5, 6)])
    assert "sim_meter_power" in table
    assert start["plan_name"] == "scan"
    assert start["daqbridge_command"] == (
        "daqbridge run scan sim_stage_x -5 5 11 --detector sim_meter"
    )
    # The printed command works when pasted into the user's shell, where the README's venv is
    # not activated (a bare `daqbridge` there said "command not found").
    (show,) = [line.strip() for line in out.splitlines() if " catalog show " in line]
    env = {k: v for k, v in os.environ.items() if k != "DAQBRIDGE_DATA"}
    pasted = subprocess.run(show, shell=True, env=env, capture_output=True, text=True, timeout=120)
    assert pasted.returncode == 0, pasted.stderr
    assert uid in pasted.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_count_with_keyword_and_metadata(lab_runs):
    run = lab_runs["count"]
    code, out, err = run.result()
    assert code == 0, err
    (uid,) = UID.findall(out)
    summary, table, start = the_run(run.data, uid)
    assert summary.num_events["primary"] == 3 and summary.exit_status == "success"
    assert start["sample"] == "A1"
    assert start["plan_name"] == "count"
    assert "sim_meter_power" in table


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_lab_plan(lab_runs):
    run = lab_runs["polarization"]
    code, out, err = run.result()
    assert code == 0, err
    (uid,) = UID.findall(out)
    summary, table, start = the_run(run.data, uid)
    assert summary.exit_status == "success"
    assert summary.num_events["primary"] == 3
    assert start["plan_name"] == "polarization_scan"
    angles = [v for k, v in table.items() if k.startswith("sim_rotators_a")]
    assert angles, list(table)
    assert list(angles[0].values) == pytest.approx([0, 45, 90], abs=0.1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_target_outside_the_soft_limits_is_refused_before_any_run(lab_runs):
    run = lab_runs["limits"]
    code, out, err = run.result()
    assert code == 2, err
    assert "Traceback" not in err
    assert "sim_stage_x cannot go to 50" in err
    assert "uid:" not in out
    catalog = open_catalog(run.data, readonly=True)
    try:
        assert catalog.runs(10) == []  # nothing opened, nothing moved
    finally:
        catalog.close()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ctrl_c_aborts_the_run_keeps_its_data_and_exits_130(cli_catalog_template, tmp_path):
    tag = unique("sigint")
    profile = tmp_path / "slow_lab.toml"
    # 1 mm per second: a 20-point scan over 19 mm takes well over 20 s
    profile.write_text(slow_lab_profile(tag, speed=1.0, velocity=1.0))
    data = fresh_data_dir(cli_catalog_template, tmp_path / "data")
    argv = daqbridge_argv(
        "run", "scan", "stage_x", "0", "19", "20", "--detector", "meter", "--profile", str(profile)
    )
    proc = subprocess.Popen(
        argv,
        env=child_env(data),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    rows = threading.Event()

    def read_stdout() -> None:
        for line in proc.stdout:
            lines.append(line)
            if sum(1 for row in lines if re.match(r"^\|\s+\d+ \|", row)) >= 2:
                rows.set()

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        assert rows.wait(240), (
            "".join(lines) + proc.stderr.read() if proc.poll() else "".join(lines)
        )
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    reader.join(timeout=30)
    err = proc.stderr.read()
    out = "".join(lines)
    assert code == 130, out + err
    assert "Traceback" not in err
    assert "SIGINT received: the run was aborted" in err
    (uid,) = UID.findall(out)
    summary, table, _ = the_run(data, uid)
    assert summary.exit_status == "abort"
    points = summary.num_events["primary"]
    assert 2 <= points < 20  # what was measured is kept; the scan did not finish
    assert len(table["stage_x"]) == points
    assert max(table["stage_x"].values) < 19  # it stopped on the way


LASER_AND_METER = """
[lab]
name = "cli laser test {tag}"
data_dir = "unused"

[[instruments]]
id = "sim_laser"
driver = "maitai"
stack = "legacy"
port = "{laser}"
polling_rate_hz = 1.0

[[instruments]]
id = "sim_meter"
driver = "newport1830c"
stack = "native"
port = "{meter}"

[instruments.newport1830c]
wavelength_nm = 800
range = 0
units = "W"
attenuator = true
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_list_scan_of_the_legacy_laser_wavelength_tunes_the_laser(cli_catalog_template, tmp_path):
    """Issue 18: `list_scan sim_laser.wavelength 760,790 --detector sim_meter` recorded 760 and
    790 while the laser stayed at 800 nm. The laser and the meter here are the lab's simulators,
    served by this test on ptys (the laser on the legacy stack, as in the embedded lab), so the
    test can ask them afterwards what really happened."""
    with (
        serve_pty("maitai", warmed_up=True, emission_on=True, shutter_open=True, speed=20) as laser,
        serve_pty("newport1830c", noise=0, speed=20) as meter,
    ):
        beam = laser.simulator
        meter.simulator.optical_input = lambda: 0.5 * beam.output_power_w()
        profile = tmp_path / "laser_lab.toml"
        profile.write_text(
            LASER_AND_METER.format(tag=unique("laser"), laser=laser.path, meter=meter.path)
        )
        data = fresh_data_dir(cli_catalog_template, tmp_path / "data")
        argv = daqbridge_argv(
            "run",
            "list_scan",
            "sim_laser.wavelength",
            "760,790",
            "--detector",
            "sim_meter",
            "--profile",
            str(profile),
        )
        code, out, err = Cli(argv, child_env(data), cwd=tmp_path).result()
        assert code == 0, out + err
        assert "Traceback" not in err
        # the laser was told, in this order, and is where the last point left it
        tunes = [line for line in beam.received_lines if line.upper().startswith("WAVELENGTH ")]
        assert tunes == ["WAVELENGTH 760", "WAVELENGTH 790"], beam.received_lines
        assert beam.wavelength_nm() == 790.0
    (uid,) = UID.findall(out)
    summary, table, _ = the_run(data, uid)
    assert summary.exit_status == "success" and summary.num_events["primary"] == 2
    recorded = list(table["sim_laser_wavelength"].values)
    assert recorded == [760.0, 790.0]
    # the meter saw the laser's gain curve at the recorded wavelengths, not a flat 800 nm
    expected = [0.5 * beam.peak_power_w * beam.gain(nm) for nm in recorded]
    assert list(table["sim_meter_power"].values) == pytest.approx(expected, rel=1e-2)
