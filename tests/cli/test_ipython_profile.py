"""The IPython profile (profiles/ipython) loaded non-interactively: ``python -m IPython
--profile-dir=<a copy> -c ...`` starts the lab, runs a plan, uses the magics and shuts down."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from daqbridge.catalog import open_catalog

from .conftest import (
    PROFILE_DIR,
    child_env,
    fresh_data_dir,
    ipython_command,
    slow_lab_profile,
    the_run,
    unique,
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_ipython_profile(lab_runs):
    run = lab_runs["ipython"]
    code, out, err = run.result()
    assert code == 0, out + err
    assert "['RE', 'bp', 'bps', 'catalog', 'sim_meter', 'sim_stage_x']" in out
    match = re.search(r"^UID ([0-9a-f-]{36})$", out, re.MULTILINE)
    assert match, out
    summary, table, _ = the_run(run.data, match.group(1))
    assert summary.exit_status == "success" and summary.num_events["primary"] == 2
    # %holders and %daqstatus
    assert "sim://esp300?name=sim_stage  [open]  free" in out
    assert "daqbridge runtime: running" in out
    # the lab was shut down in order at exit, and the run's write-ahead log closed
    assert "daqbridge: lab shut down in order" in err
    assert not list((run.data / "wal").glob("*.jsonl"))


def test_a_broken_profile_leaves_a_usable_session_that_says_why(tmp_path):
    profile_copy = tmp_path / "ipython-profile"
    shutil.copytree(PROFILE_DIR, profile_copy)
    bad = tmp_path / "bad.toml"
    bad.write_text('[lab]\nname = "bad"\n\n[[instruments]]\nid = "x"\ndriver = "esp301"\n')
    proc = subprocess.run(
        ipython_command(profile_copy, "print('runtime' in globals(), 'RE' in globals())"),
        env=child_env(tmp_path / "data", DAQBRIDGE_PROFILE=str(bad)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "False False" in proc.stdout
    assert "the lab did not start" in proc.stderr and "esp301" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# Each statement is its own cell, as typed at the prompt: an exception ends only its cell.
QUIET_CELLS = r'''
ip = get_ipython()
ip.run_cell("""
import os, signal, threading
points = []
second = threading.Event()
def count_points(name, doc):
    points.append(1)
    if len(points) == 2:
        second.set()
RE.subscribe(count_points, "event")
def ctrl_c():
    if second.wait(120):
        os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=ctrl_c, daemon=True).start()
""")
ip.run_cell("RE(bp.scan([meter], stage_x, 0, 20, 21))")
ip.run_cell("RE.abort()")
ip.run_cell("runtime.simulation.simulator('meter').faults.garble_next = 1")
ip.run_cell("RE(bp.count([meter], 5))")
'''


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pause_abort_and_an_instrument_failure_are_one_line_each(tmp_path, cli_catalog_template):
    # Issue 15 and issue 17, item 2: Ctrl-C, RE.abort() and an instrument's failure printed
    # bluesky's tracebacks (40 lines each) and the failure showed FailedStatus.
    profile_copy = tmp_path / "ipython-profile"
    shutil.copytree(PROFILE_DIR, profile_copy)
    lab = tmp_path / "slow_lab.toml"
    lab.write_text(slow_lab_profile(unique("ipython"), speed=1.0, velocity=1.0))
    data = fresh_data_dir(cli_catalog_template, tmp_path / "data")
    proc = subprocess.run(
        ipython_command(profile_copy, QUIET_CELLS),
        env=child_env(data, DAQBRIDGE_PROFILE=str(lab)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=500,
    )
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, out + err
    assert "Traceback" not in out + err, out + err
    paused = re.findall(r"^daqbridge: run (\S+) paused: RE.resume\(\) continues it", err, re.M)
    aborted = re.findall(r"^daqbridge: run (\S+) aborted \(exit status 'abort'\)", err, re.M)
    failed = re.findall(
        r"^daqbridge: run (\S+) failed \(exit status 'fail'\): ReplyError: "
        r"\[instrument 'meter' on sim://newport1830c\?name=",
        err,
        re.M,
    )
    assert len(paused) == 1 and aborted == paused and len(failed) == 1, err
    catalog = open_catalog(data, readonly=True)
    try:
        runs = {r.uid: r for r in catalog.runs(10)}
    finally:
        catalog.close()
    assert runs[aborted[0]].exit_status == "abort"
    assert runs[failed[0]].exit_status == "fail"
    assert runs[failed[0]].reason.startswith("[instrument 'meter' on sim://newport1830c?name=")


BEAMLINE_CELLS = """
%wa motors
%mov sim_stage_x 1
print('AT', runtime.simulation.simulator('sim_stage').axis_position(sim_stage_x.number))
uid, = RE(bp.count([sim_meter], 3))
table = db[-1].table()
print('LAST', db[-1].start['uid'] == uid, len(table), 'sim_meter_power' in table.columns)
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bluesky_magics_find_the_axes_by_label_and_db_reads_the_last_run(
    tmp_path, cli_catalog_template
):
    # Issue 15 "Daily use": no %wa/%mov, no motors/detectors labels, no db.
    profile_copy = tmp_path / "ipython-profile"
    shutil.copytree(PROFILE_DIR, profile_copy)
    data = fresh_data_dir(cli_catalog_template, tmp_path / "data")
    proc = subprocess.run(
        ipython_command(profile_copy, BEAMLINE_CELLS),
        env=child_env(data),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=500,
    )
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, out + err
    motors = out.split("motors\n", 1)[1].split("\n\n", 1)[0]  # %wa's positioner table
    assert re.search(r"^  sim_stage_x\s+0\.0", motors, re.M), out
    assert re.search(r"^  sim_stage_y\s", motors, re.M), out
    assert "sim_meter" not in motors  # a detector, not a motor
    assert re.search(r"^AT 1\.0$", out, re.M), out  # the simulated controller is at 1
    assert "LAST True 3 True" in out, out + err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_command_history_goes_to_the_data_directory_not_the_profile(
    tmp_path, cli_catalog_template
):
    # Issue 15: IPython wrote history.sqlite into profiles/ipython, which is in the checkout.
    profile_copy = tmp_path / "ipython-profile"
    shutil.copytree(PROFILE_DIR, profile_copy)
    empty_lab = tmp_path / "empty_lab.toml"  # no instruments: the session opens in seconds
    empty_lab.write_text('[lab]\nname = "empty"\ndata_dir = "unused"\n')
    data = fresh_data_dir(cli_catalog_template, tmp_path / "data")
    proc = subprocess.run(
        ipython_command(profile_copy, "print('RE' in globals())"),
        env=child_env(data, DAQBRIDGE_PROFILE=str(empty_lab)),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert proc.returncode == 0 and "True" in proc.stdout, proc.stdout + proc.stderr
    assert not (profile_copy / "history.sqlite").exists()
    assert (data / "ipython" / "history.sqlite").is_file()
