"""The baseline stream through the front ends: `daqbridge run` and the IPython profile, each a
real process on the embedded simulated lab with a fresh HOME and data directory, the catalog
read back from this process as a user would (``run.baseline.read()``)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from daqbridge.catalog import open_catalog
from daqbridge.config import Profile
from daqbridge.sim.maitai import PEAK_WAVELENGTH_NM

from .conftest import (
    PROFILE_DIR,
    Cli,
    child_env,
    daqbridge_argv,
    fresh_data_dir,
    ipython_command,
)


def _sim_lab_with(baseline: str, path: Path) -> Path:
    """The embedded simulated lab's profile with ``baseline = ...`` in its [lab] table."""
    text = Profile.default_path().read_text()
    path.write_text(text.replace("[lab]\n", f"[lab]\nbaseline = {baseline}\n", 1))
    return path


@pytest.fixture(scope="module")
def baseline_runs(cli_catalog_template, tmp_path_factory):
    """The commands of this module, started side by side (each starts the whole lab)."""
    root = tmp_path_factory.mktemp("baseline-runs")
    runs: dict[str, tuple[Cli, Path]] = {}

    def start(key: str, argv: list[str]) -> None:
        data = fresh_data_dir(cli_catalog_template, root / f"{key}-data")
        home = root / f"{key}-home"
        home.mkdir()
        runs[key] = (Cli(argv, child_env(data, HOME=str(home)), cwd=root), data)

    scan = ["scan", "sim_stage_x", "-5", "5", "3", "--detector", "sim_meter", "--no-plot"]
    start("default", daqbridge_argv("run", *scan))
    chosen = _sim_lab_with('["sim_laser", "sim_rotators_c", "sim_dmm.source"]', root / "c.toml")
    start("chosen", daqbridge_argv("run", "count", "sim_meter", "--profile", str(chosen)))
    off = _sim_lab_with("[]", root / "off.toml")
    start("off", daqbridge_argv("run", "count", "sim_meter", "--profile", str(off)))
    typo = _sim_lab_with('["sim_lazer"]', root / "typo.toml")
    start("typo", daqbridge_argv("run", "count", "sim_meter", "--profile", str(typo)))
    profile_copy = root / "ipython-profile"  # IPython writes its history into the profile dir
    shutil.copytree(PROFILE_DIR, profile_copy)
    cells = "uid, = RE(bp.count([sim_meter], 1)); print('UID', uid)"
    start("ipython", ipython_command(profile_copy, cells))
    yield runs
    for cli, _ in runs.values():
        if cli.proc.poll() is None:
            cli.proc.kill()
            cli.proc.communicate(timeout=30)


def _finished(runs, key: str) -> tuple[str, Path]:
    cli, data = runs[key]
    code, out, err = cli.result()
    assert code == 0, f"{out}\n{err}"
    return out + err, data


def _streams(data: Path, uid: str | None = None) -> dict:
    """Every stream of run ``uid`` (default: the newest run) as xarray Datasets."""
    catalog = open_catalog(data, readonly=True)
    try:
        run = catalog.client[uid if uid is not None else -1]
        return {name: run[name].read() for name in run}
    finally:
        catalog.close()


def test_run_records_each_instrument_at_the_start_and_the_end(baseline_runs):
    _, data = _finished(baseline_runs, "default")
    streams = _streams(data)
    baseline, primary = streams["baseline"], streams["primary"]
    assert baseline.sizes["time"] == 2
    # Start: where the stage's simulator powers up; end: what the axis reported at the scan's
    # last point (the same reading, taken again), not the 5 mm it was commanded to.
    stage = [float(v) for v in baseline["sim_stage_x"].values]
    assert stage == [0.0, float(primary["sim_stage_x"].values[-1])]
    laser = [float(v) for v in baseline["sim_laser_wavelength"].values]
    assert laser == [PEAK_WAVELENGTH_NM, PEAK_WAVELENGTH_NM]  # the legacy laser, untouched
    # Both stacks; a shadow twin only through its native device; no camera exposure.
    assert {"sim_rotators_c", "sim_dmm_source", "sim_meter_power", "sim_meter_wavelength"} <= set(
        baseline
    )
    assert not [k for k in baseline if k.startswith(("sim_meter_legacy", "sim_camera"))]


def test_the_profile_names_the_baseline_devices(baseline_runs):
    _, data = _finished(baseline_runs, "chosen")
    baseline = _streams(data)["baseline"]
    assert baseline.sizes["time"] == 2
    chosen = ("sim_laser_", "sim_rotators_c", "sim_dmm_source")
    assert {"sim_laser_wavelength", "sim_rotators_c", "sim_dmm_source"} <= set(baseline)
    assert [key for key in baseline if not key.startswith(chosen)] == []


def test_an_empty_baseline_switches_it_off(baseline_runs):
    _, data = _finished(baseline_runs, "off")
    assert sorted(_streams(data)) == ["primary"]


def test_an_unknown_baseline_device_is_a_profile_error_before_the_lab_starts(baseline_runs):
    cli, data = baseline_runs["typo"]
    code, out, err = cli.result()
    assert code == 1, err  # a profile error, as every ProfileInvalid (docs/errors.md)
    assert "lab.baseline" in err and "did you mean 'sim_laser'" in err
    assert "starting" not in err  # refused before the lab (simulators, ports) started
    assert not (data / "wal").exists()


def test_the_ipython_profile_records_a_baseline(baseline_runs):
    output, data = _finished(baseline_runs, "ipython")
    uid = output.split("UID ", 1)[1].split()[0]
    baseline = _streams(data, uid)["baseline"]
    assert baseline.sizes["time"] == 2
    assert "sim_meter_wavelength" in baseline and "sim_laser_wavelength" in baseline
