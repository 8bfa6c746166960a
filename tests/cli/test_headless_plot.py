"""Headless plots through the real ``daqbridge run`` and the IPython profile: no DISPLAY, a fresh
HOME, the embedded simulated lab. Each run's plot is a PNG in ``<data_dir>/plots``; a 1-D scan
prints bluesky's peak statistics; a plot that cannot be written never fails the run."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from .conftest import (
    PROFILE_DIR,
    Cli,
    child_env,
    daqbridge_argv,
    fresh_data_dir,
    ipython_command,
    the_run,
)

pytestmark = pytest.mark.slow

SCAN = ("run", "scan", "sim_stage_x", "-5", "5", "11", "--detector", "sim_meter")


class HeadlessRun:
    def __init__(self, cli: Cli, home: Path) -> None:
        self.cli = cli
        self.home = home
        self.data = home / "daqbridge-data" / "sim"  # the simulated lab's lab.data_dir

    def result(self) -> tuple[int, str, str]:
        return self.cli.result()


@pytest.fixture(scope="module")
def headless_runs(cli_catalog_template, tmp_path_factory):
    """The commands of this module, started at once (each is mostly start-up, waiting on
    imports and simulators); each in a fresh HOME whose ``~/daqbridge-data/sim`` holds an empty
    catalog, with no DISPLAY and no DAQBRIDGE_DATA."""
    runs: dict[str, HeadlessRun] = {}

    def start(key: str, argv: list[str], prepare=None) -> None:
        home = tmp_path_factory.mktemp(f"home-{key}")
        fresh_data_dir(cli_catalog_template, home / "daqbridge-data" / "sim")
        if prepare is not None:
            prepare(home)
        env = child_env(None, HOME=str(home))
        env.pop("XDG_DATA_HOME", None)
        runs[key] = HeadlessRun(Cli(argv, env, cwd=home), home)

    def block_plots(home: Path) -> None:
        (home / "daqbridge-data" / "sim" / "plots").write_text("not a directory")

    def copy_profile(home: Path) -> None:
        shutil.copytree(PROFILE_DIR, home / "ipython-profile")

    start("scan", daqbridge_argv(*SCAN))
    start("count", daqbridge_argv("run", "count", "sim_meter", "num=3"))
    start("blocked", daqbridge_argv(*SCAN), prepare=block_plots)
    start("no_plot", daqbridge_argv(*SCAN, "--no-plot"))
    cells = "uid, = RE(bp.scan([sim_meter], sim_stage_x, -1, 1, 3)); print('UID', uid)"
    home = tmp_path_factory.mktemp("home-ipython")
    fresh_data_dir(cli_catalog_template, home / "daqbridge-data" / "sim")
    copy_profile(home)
    env = child_env(None, HOME=str(home))
    env.pop("XDG_DATA_HOME", None)
    runs["ipython"] = HeadlessRun(
        Cli(ipython_command(home / "ipython-profile", cells), env, cwd=home), home
    )
    yield runs
    for run in runs.values():
        if run.cli.proc.poll() is None:
            run.cli.proc.kill()
            run.cli.proc.communicate(timeout=30)


def finished(run: HeadlessRun, pattern: str = r"^uid: (\S+)$") -> tuple[str, str, str]:
    code, out, err = run.result()
    assert code == 0, out + err
    match = re.search(pattern, out, re.MULTILINE)
    assert match, out
    return match.group(1), out, err


def documented_png(run: HeadlessRun, uid: str) -> Path:
    _, _, start = the_run(run.data, uid)
    return run.data / "plots" / f"scan_{start['scan_id']}_{uid[:8]}.png"


def assert_a_drawn_png(path: Path) -> None:
    """A PNG that matplotlib reads back, with something drawn on it (not one flat colour)."""
    from matplotlib.image import imread

    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(np.var(pixels[..., :3])) > 0


def printed_stat(out: str, name: str) -> tuple[float, float]:
    """(value, position) of a ``max``/``min`` line of the printed peak statistics."""
    match = re.search(rf"^\s+{name}\s+(\S+) at (\S+)$", out, re.MULTILINE)
    assert match, out
    return float(match.group(1)), float(match.group(2))


def test_a_headless_scan_saves_its_plot_and_prints_peak_statistics(headless_runs):
    run = headless_runs["scan"]
    uid, out, _ = finished(run)
    png = documented_png(run, uid)
    assert f"plot: {png}\n" in out
    assert_a_drawn_png(png)
    assert not [p for p in png.parent.iterdir() if p.name.startswith(".")]  # no temp file left

    assert "peak statistics of sim_meter_power vs sim_stage_x:" in out
    _, table, _ = the_run(run.data, uid)
    x = table["sim_stage_x"].values
    y = table["sim_meter_power"].values
    assert printed_stat(out, "max") == pytest.approx((y.max(), x[np.argmax(y)]), rel=1e-5)
    assert printed_stat(out, "min") == pytest.approx((y.min(), x[np.argmin(y)]), rel=1e-5, abs=1e-9)
    # After the live table, before the read-back lines.
    assert out.index("peak statistics") > out.rindex("+----") and out.index("plot: ") < out.index(
        "uid: "
    )


def test_a_count_saves_its_plot_but_prints_no_peak_statistics(headless_runs):
    run = headless_runs["count"]
    uid, out, _ = finished(run)
    png = documented_png(run, uid)
    assert f"plot: {png}\n" in out
    assert_a_drawn_png(png)
    assert "peak statistics" not in out


def test_a_plot_that_cannot_be_written_leaves_the_run_a_success(headless_runs):
    run = headless_runs["blocked"]
    uid, out, err = finished(run)
    summary, _, _ = the_run(run.data, uid)
    assert summary.exit_status == "success"
    blocked = run.data / "plots"
    assert f"the plot of run {uid} was not saved to {blocked}/" in err
    assert "Fix:" in err and "Traceback" not in err
    assert "plot: " not in out
    assert "peak statistics of sim_meter_power vs sim_stage_x:" in out


def test_no_plot_saves_no_png_but_prints_peak_statistics(headless_runs):
    run = headless_runs["no_plot"]
    _, out, _ = finished(run)
    assert not (run.data / "plots").exists()
    assert "plot: " not in out
    assert "peak statistics of sim_meter_power vs sim_stage_x:" in out


def test_the_ipython_profile_saves_the_plot_and_prints_peak_statistics(headless_runs):
    run = headless_runs["ipython"]
    uid, out, _ = finished(run, r"^UID (\S+)$")
    png = documented_png(run, uid)
    assert f"plot: {png}\n" in out
    assert_a_drawn_png(png)
    assert "peak statistics of sim_meter_power vs sim_stage_x:" in out
