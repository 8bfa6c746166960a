"""What a scientist waits for every day: the install, one short run, the run list, the exit.

    python benchmarks/bench_daily.py [--venv DIR] [--runs N]
    python -m benchmarks --only daily --venv DIR
    from benchmarks.bench_daily import run      # rows {name, value, unit, target, ratio, ok}

Figures, each against the target of issue 15 (all five in one run):

* the size of a venv (``du``-style, allocated blocks), 500 MB for a fresh
  ``pip install -e .`` (the README's first command); give that venv with ``--venv`` or
  ``DAQBRIDGE_BENCH_VENV``; the default is the venv running this;
* ``daqbridge run count sim_meter num=1`` as a new process (cold: nothing of it in memory,
  an existing catalog), median wall time of ``--runs`` runs, 4 s; also its CPU time, which a
  loaded machine disturbs less than the wall clock, and the first run in a new data directory
  (it creates the catalog: a schema migration in a subprocess) for information;
* the process exit after the lab's shutdown, 0.3 s: the same command run as
  ``sys.exit(main(argv))`` (what the console script does) with the monotonic clock read when
  ``main`` has returned, that is when the lab is shut down, compared with the moment the
  parent sees the process end. It is the interpreter's teardown and the exit handlers;
* ``daqbridge catalog list``, 1.0 s, median of ``--runs``: with no lab up (it opens the
  catalog's files itself) and with one up (it asks the lab's catalog server);
* the same ``daqbridge run count sim_meter num=1`` against a lab that is up (``daqbridge lab
  up`` in the same HOME, brought down with ``daqbridge lab down`` afterwards, also when a
  figure fails), 1.5 s, median of ``--runs`` after one untimed run (the first run of a lab
  opens the catalog's tables); ``lab up`` and ``lab down`` are timed for information. Needs
  redis-server and bluesky-queueserver (``daqbridge[queue]``); without them these rows say
  why they are missing.

Every command runs in one new HOME, so the data directory (``~/daqbridge-data/sim``) is its own
and the lab of the last figures is the one ``daqbridge run`` finds. Wall times on a shared
machine mostly measure the wait for a core: the CPU time (the process and its children) of
each timed command is given beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_TARGET_MB = 500.0
RUN_TARGET_S = 4.0
EXIT_TARGET_S = 0.3
LIST_TARGET_S = 1.0
LAB_RUN_TARGET_S = 1.5
RUNS = 3
RUN_TIMEOUT = 300.0  # one run on a loaded two-core machine; a hang is reported, not waited on
LAB_TIMEOUT = 600.0  # lab up starts the whole simulated lab in the queue server's worker
COMMAND = ["run", "count", "sim_meter", "num=1"]
LIST = ["catalog", "list"]
VENV_ENV = "DAQBRIDGE_BENCH_VENV"

_EXIT_PROBE = """
import sys, time
from daqbridge.cli import main
status = main(sys.argv[1:])
print(f"shut down at {time.monotonic():.6f}", flush=True)
sys.exit(status)
"""


def venv_size_mb(venv: Path) -> float:
    """Allocated size of every file under ``venv``, as ``du -sm`` counts it (links not followed,
    hard links once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for directory, subdirectories, files in os.walk(venv):
        for name in [".", *subdirectories, *files]:
            try:
                st = os.lstat(os.path.join(directory, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total / 2**20


def _environment(home: Path) -> dict[str, str]:
    # The embedded simulated lab in HOME's data directory, headless as on a lab's ssh session.
    # Python's bytecode cache as a scientist's shell has it: with PYTHONDONTWRITEBYTECODE (set
    # on some CI and test machines) every start compiled daqbridge's own modules from source,
    # about 0.7 s of CPU that no installed daqbridge pays (measured with cProfile).
    dropped = (
        "DAQBRIDGE_DATA",
        "DAQBRIDGE_PROFILE",
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "PYTHONDONTWRITEBYTECODE",
    )
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def _timed(
    args: list[str], env: dict[str, str], timeout: float = RUN_TIMEOUT
) -> tuple[float, float, float, str]:
    """(wall s, CPU s of the process and its children, monotonic time at its end, stdout).

    Run in HOME, not here: ``python -c`` puts its working directory first on sys.path, and a
    checkout's ``daqbridge/`` would shadow the one installed in the venv measured.
    """
    before = os.times()
    t0 = time.monotonic()
    proc = subprocess.run(
        args, env=env, cwd=env["HOME"], capture_output=True, text=True, timeout=timeout
    )
    t1 = time.monotonic()
    after = os.times()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {proc.returncode}: {proc.stderr[-2000:]}")
    cpu = (after.children_user - before.children_user) + (
        after.children_system - before.children_system
    )
    return t1 - t0, cpu, t1, proc.stdout


def _row(name: str, value: float, unit: str, target: float | None, **extra) -> dict:
    return {
        "name": name,
        "value": round(value, 3),
        "unit": unit,
        "target": target,
        "ratio": round(value / target, 3) if target else None,
        "ok": value <= target if target else None,
        **extra,
    }


def _repeated(args: list[str], env: dict[str, str], runs: int) -> tuple[float, float]:
    """(median wall s, median CPU s) of ``runs`` runs of ``args``."""
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu, _, _ = _timed(args, env)
        walls.append(wall)
        cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus)


def _lab_rows(script: Path, env: dict[str, str], runs: int) -> list[dict]:
    """``daqbridge run`` and ``catalog list`` against a lab that is up, then ``lab down``."""
    run_cmd, list_cmd = " ".join(["daqbridge", *COMMAND]), " ".join(["daqbridge", *LIST])
    up, _, _, _ = _timed([str(script), "lab", "up"], env, LAB_TIMEOUT)
    try:
        _timed([str(script), *COMMAND], env)  # opens the catalog's tables in the worker
        run_wall, run_cpu = _repeated([str(script), *COMMAND], env, runs)
        list_wall, list_cpu = _repeated([str(script), *LIST], env, runs)
    finally:
        down, _, _, _ = _timed([str(script), "lab", "down"], env, LAB_TIMEOUT)
    return [
        _row(f"{run_cmd}, lab up: wall, median of {runs}", run_wall, "s", LAB_RUN_TARGET_S),
        _row(f"{run_cmd}, lab up: CPU, median of {runs}", run_cpu, "s", None),
        _row(f"{list_cmd}, lab up: wall, median of {runs}", list_wall, "s", LIST_TARGET_S),
        _row(f"{list_cmd}, lab up: CPU, median of {runs}", list_cpu, "s", None),
        _row("daqbridge lab up (for information)", up, "s", None),
        _row("daqbridge lab down (for information)", down, "s", None),
    ]


def run(venv: str | Path | None = None, runs: int = RUNS) -> list[dict]:
    venv = Path(venv or os.environ.get(VENV_ENV) or sys.prefix).resolve()
    python, script = venv / "bin" / "python", venv / "bin" / "daqbridge"
    if not script.exists():
        raise FileNotFoundError(f"{script} does not exist: is daqbridge installed in {venv}?")
    rows = [_row(f"venv size ({venv})", venv_size_mb(venv), "MB", VENV_TARGET_MB)]
    run_cmd, list_cmd = " ".join(["daqbridge", *COMMAND]), " ".join(["daqbridge", *LIST])
    with tempfile.TemporaryDirectory(prefix="bench-daily-") as tmp:
        env = _environment(Path(tmp))
        first, first_cpu, _, _ = _timed([str(script), *COMMAND], env)
        walls, cpus, exits = [], [], []
        for _ in range(runs):
            wall, cpu, _, _ = _timed([str(script), *COMMAND], env)
            walls.append(wall)
            cpus.append(cpu)
            _, _, ended, out = _timed([str(python), "-c", _EXIT_PROBE, *COMMAND], env)
            marks = [line for line in out.splitlines() if line.startswith("shut down at ")]
            if not marks:
                raise RuntimeError(f"the exit probe printed no time: {out[-2000:]}")
            exits.append(ended - float(marks[-1].removeprefix("shut down at ")))
        list_wall, list_cpu = _repeated([str(script), *LIST], env, runs)
        rows += [
            _row(f"{run_cmd}: wall, median of {runs}", statistics.median(walls), "s", RUN_TARGET_S),
            _row(f"{run_cmd}: CPU, median of {runs}", statistics.median(cpus), "s", None),
            _row(f"{run_cmd}: first run, new data directory", first, "s", None, cpu=first_cpu),
            _row(
                f"process exit after shutdown, median of {runs}",
                statistics.median(exits),
                "s",
                EXIT_TARGET_S,
            ),
            _row(f"{list_cmd}, no lab: wall, median of {runs}", list_wall, "s", LIST_TARGET_S),
            _row(f"{list_cmd}, no lab: CPU, median of {runs}", list_cpu, "s", None),
        ]
        try:
            rows += _lab_rows(script, env, runs)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:  # no Redis, a lab that failed
            rows.append(
                _row(
                    f"{run_cmd} and {list_cmd}, lab up: NOT MEASURED", 0.0, "s", None, note=str(exc)
                )
            )
            rows[-1]["ok"] = False
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", help=f"the venv to measure (default: ${VENV_ENV} or this one)")
    parser.add_argument("--runs", type=int, default=RUNS, help="timed runs of the command")
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for row in run(args.venv, args.runs):
        target = f"  target {row['target']}" if row["target"] else ""
        verdict = "" if row["ok"] is None else ("  ok" if row["ok"] else "  NOT OK")
        print(f"  {row['name']:70s} {row['value']:9.3f} {row['unit']}{target}{verdict}")
        if row.get("note"):
            print(f"      {row['note'][-1500:]}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
