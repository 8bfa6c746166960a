"""Headless plots of runs on a lab that is up (``daqbridge lab up``): the worker, which has no
display to show a window on even where DISPLAY is set, saves each run's PNG in the data
directory, and ``daqbridge run`` prints a 1-D scan's peak statistics below the live table."""

from __future__ import annotations

import os
import re
import signal

import pytest

from .conftest import child_env, fresh_data_dir
from .test_headless_plot import assert_a_drawn_png, printed_stat, the_run
from .test_lab import NO_REDIS, REDIS, RUN_TIMEOUT, Lab, _processes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab_with_a_display(cli_catalog_template, tmp_path_factory):
    if REDIS is None:
        pytest.skip(NO_REDIS)
    root = tmp_path_factory.mktemp("plot-lab")
    data = fresh_data_dir(cli_catalog_template, root / "data")
    home = root / "home"
    home.mkdir()
    # A desktop's DISPLAY, inherited by the worker: still nobody to show a window to.
    the_lab = Lab(root, data, child_env(data, HOME=str(home), DISPLAY=":0"))
    rc, out, err = the_lab.cli("lab", "up")
    started = the_lab.state if (data / "lab.json").exists() else {}
    try:
        assert rc == 0, f"lab up failed ({rc}):\n{out}\n{err}"
        yield the_lab
    finally:
        if (data / "lab.json").exists():
            the_lab.cli("lab", "down")
        for proc in _processes(started).values():  # hygiene if lab down itself failed
            if proc.alive():
                os.kill(proc.pid, signal.SIGKILL)


def test_a_scan_on_the_lab_prints_peak_statistics_and_the_worker_saves_the_png(
    lab_with_a_display,
):
    lab = lab_with_a_display
    rc, out, err = lab.cli(
        "run", "scan", "sim_stage_x", "-2", "2", "5", "--detector", "sim_meter",
        timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert rc == 0, f"{out}\n{err}"
    assert "the lab is up" in err
    uid = re.search(r"^uid: (\S+)$", out, re.MULTILINE).group(1)
    assert out.index("peak statistics of sim_meter_power vs sim_stage_x:") > out.rindex("+----")
    _, table, start = the_run(lab.data, uid)
    x, y = table["sim_stage_x"].values, table["sim_meter_power"].values
    assert printed_stat(out, "max") == pytest.approx((y.max(), x[y.argmax()]), rel=1e-5)
    # The queue server reports the plan done after every subscriber had the stop document.
    assert_a_drawn_png(lab.data / "plots" / f"scan_{start['scan_id']}_{uid[:8]}.png")
