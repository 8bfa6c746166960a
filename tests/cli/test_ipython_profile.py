"""The IPython profile (profiles/ipython) loaded non-interactively: ``python -m IPython
--profile-dir=<a copy> -c ...`` starts the lab, runs a plan, uses the magics and shuts down."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from .conftest import PROFILE_DIR, child_env, the_run


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
    assert summary.exit_status == "success" and summary.events == 2
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
        [
            sys.executable,
            "-m",
            "IPython",
            f"--profile-dir={profile_copy}",
            "--no-banner",
            "-c",
            "print('runtime' in globals(), 'RE' in globals())",
        ],
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
