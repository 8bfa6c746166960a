"""Fixtures of the CLI tests: data directories with a ready catalog, child process environments,
and a small lab profile for the tests that need their own timing (Ctrl-C during a scan).

Creating a catalog costs about 3 s (a schema migration in a subprocess): every data directory
here is a copy of one empty, initialised catalog.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from daqbridge.catalog import DATA_ENV, open_catalog

CLI_TIMEOUT = 300.0
"""Seconds a CLI process may take: start-up is a few seconds alone, much more on a loaded box."""


@pytest.fixture(scope="session")
def cli_catalog_template(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("cli-catalog-template")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(DATA_ENV, raising=False)
        open_catalog(directory, recover=False).close()
    return directory


def fresh_data_dir(template: Path, target: Path) -> Path:
    shutil.copytree(template, target, ignore=shutil.ignore_patterns("wal"))
    return target


def child_env(data_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment of a CLI process: this interpreter's sys.path, its own data directory, no
    inherited profile, unbuffered output (the tests read it while the process runs)."""
    env = {k: v for k, v in os.environ.items() if k not in (DATA_ENV, "DAQBRIDGE_PROFILE")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    env["MPLBACKEND"] = "Agg"
    if data_dir is not None:
        env[DATA_ENV] = str(data_dir)
    env.update(extra)
    return env


class Cli:
    """One ``daqbridge`` process started in the background; ``result()`` waits for it."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.argv = argv
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._result: tuple[int, str, str] | None = None

    def result(self, timeout: float = CLI_TIMEOUT) -> tuple[int, str, str]:
        if self._result is None:
            try:
                out, err = self.proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                out, err = self.proc.communicate(timeout=30)
                pytest.fail(f"{self.argv} did not finish in {timeout} s:\n{out}\n{err}")
            self._result = (self.proc.returncode, out, err)
        return self._result


def daqbridge_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "daqbridge", *args]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def slow_lab_profile(tag: str, *, speed: float = 1.0, velocity: float = 1.0) -> str:
    """Stage axis ``stage_x`` (slow) and a native power meter ``meter``, on sim:// ports."""
    return f"""
[lab]
name = "cli test lab {tag}"
data_dir = "unused"

[simulation]
enabled = true
speed = {speed}

[[instruments]]
id = "stage"
driver = "esp300"
port = "sim://esp300?name={tag}_stage"

[instruments.esp300]
axes = [{{ number = 1, name = "x", velocity = {velocity}, low_limit = -25.0, high_limit = 25.0 }}]

[[instruments]]
id = "meter"
driver = "newport1830c"
port = "sim://newport1830c?name={tag}_meter"
"""


IPYTHON_CODE = (
    "print(sorted(k for k in ['RE','catalog','sim_meter','sim_stage_x','bp','bps'] "
    "if k in globals())); uid, = RE(bp.count([sim_meter], 2)); print('UID', uid); "
    "get_ipython().run_line_magic('holders', ''); "
    "get_ipython().run_line_magic('daqstatus', '')"
)

PROFILE_DIR = Path(__file__).resolve().parents[2] / "profiles" / "ipython"


def ipython_command(profile_dir: Path, cells: str) -> list[str]:
    """IPython running the beamline profile in ``profile_dir`` (a copy: IPython writes its
    history and logs there) non-interactively: it exits 1 on an exception in the cells."""
    return [
        sys.executable,
        "-m",
        "IPython",
        f"--profile-dir={profile_dir}",
        "--no-banner",
        "-c",
        cells,
    ]


class LabRun:
    def __init__(self, cli: Cli, data: Path) -> None:
        self.cli = cli
        self.data = data

    def result(self) -> tuple[int, str, str]:
        return self.cli.result()


@pytest.fixture(scope="session")
def lab_runs(cli_catalog_template, tmp_path_factory):
    """The long end-to-end commands on the embedded simulated lab, started all at once.

    Each starts the whole lab (simulators, both stacks, RunEngine, catalog): seconds each, and
    mostly waiting on I/O and imports, so running them side by side costs about one of them.
    Each has its own data directory; tests wait only for the one they look at.
    """
    root = tmp_path_factory.mktemp("lab-runs")
    runs: dict[str, LabRun] = {}

    def start(key: str, argv: list[str]) -> None:
        data = fresh_data_dir(cli_catalog_template, root / f"{key}-data")
        runs[key] = LabRun(Cli(argv, child_env(data), cwd=root), data)

    start(
        "scan",
        daqbridge_argv("run", "scan", "sim_stage_x", "-5", "5", "11", "--detector", "sim_meter"),
    )
    start("count", daqbridge_argv("run", "count", "sim_meter", "num=3", "--md", "sample=A1"))
    start(
        "polarization",
        daqbridge_argv("run", "polarization_scan", "sim_rotators_a", "sim_meter", "0,45,90"),
    )
    start(
        "limits",
        daqbridge_argv("run", "scan", "sim_stage_x", "-5", "50", "11", "--detector", "sim_meter"),
    )
    start("status", daqbridge_argv("status"))
    profile_copy = root / "ipython-profile"  # IPython writes its history into the profile dir
    shutil.copytree(PROFILE_DIR, profile_copy)
    start(
        "ipython",
        ipython_command(profile_copy, IPYTHON_CODE),
    )
    yield runs
    for run in runs.values():
        if run.cli.proc.poll() is None:
            run.cli.proc.kill()
            run.cli.proc.communicate(timeout=30)


def the_run(data: Path, uid: str):
    """(RunSummary, primary table, start document) of run ``uid``, read by another process."""
    catalog = open_catalog(data, readonly=True)
    try:
        summary = next(r for r in catalog.runs(50) if r.uid == uid)
        table = catalog.client[uid].primary.read()
        start = catalog.client[uid].metadata["start"]
    finally:
        catalog.close()
    return summary, table, start
