"""The baseline stream in the lab server: a plan run by the queue server's worker (which builds
the runtime from daqbridge/cli/lab_startup) records it too. A real `daqbridge lab up` (Redis,
document proxy, RE Manager) in a fresh HOME and data directory; `daqbridge run` submits to it."""

from __future__ import annotations

import shutil

import pytest

from daqbridge.runtime.catalog import open_catalog

from .conftest import Cli, child_env, daqbridge_argv, fresh_data_dir

pytest.importorskip("bluesky_queueserver", reason="bluesky-queueserver is not installed")
pytest.importorskip("bluesky_queueserver_api", reason="bluesky-queueserver-api is not installed")

LAB_TIMEOUT = 300.0  # lab up starts the whole simulated lab in the worker: slow on a busy box


@pytest.mark.slow
def test_a_plan_run_in_the_lab_server_records_a_baseline(cli_catalog_template, tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed; run tests/runtime/install_redis.sh")
    data = fresh_data_dir(cli_catalog_template, tmp_path / "data")
    home = tmp_path / "home"
    home.mkdir()
    env = child_env(data, HOME=str(home))

    def cli(*args: str) -> tuple[int, str, str]:
        return Cli(daqbridge_argv(*args), env, cwd=tmp_path).result(LAB_TIMEOUT)

    rc, out, err = cli("lab", "up")
    try:
        assert rc == 0, f"lab up failed ({rc}):\n{out}\n{err}"
        rc, out, err = cli("run", "count", "sim_meter")
        assert rc == 0, f"{out}\n{err}"
        assert "daqbridge run: starting" not in err, err  # submitted to the lab, not run cold
        (uid,) = [line.split()[1] for line in out.splitlines() if line.startswith("uid:")]
    finally:
        if (data / "lab.json").exists():
            cli("lab", "down")
    catalog = open_catalog(data, readonly=True)
    try:
        baseline = catalog.client[uid]["baseline"].read()
    finally:
        catalog.close()
    assert baseline.sizes["time"] == 2
    assert {"sim_meter_wavelength", "sim_laser_wavelength", "sim_stage_x"} <= set(baseline)
