"""Wall time of a count of one point: against a lab that is up, and cold.

    python benchmarks/bench_lab.py            # prints a table
    from benchmarks.bench_lab import run      # rows {name, value, unit, target, ratio, ok}

Issue 15's target: against a lab that is up, ``daqbridge run count sim_meter num=1`` in at most
1.5 s. Each figure is one fresh process, timed from its start to its exit, as a scientist
waits for it at the terminal:

* lab: ``submit_to_lab("count", [["sim_meter"]], {"num": 1})`` with $DAQBRIDGE_DATA naming
  the lab (what ``daqbridge run`` calls when a lab is up);
* lab + profile: the same after loading the embedded profile, as ``daqbridge run`` does to
  check the device ids before it submits;
* cold: ``daqbridge run count sim_meter num=1`` with no lab up (it starts the lab, runs, shuts
  down), in a data directory of its own.

The lab figures are the median of several runs, interleaved with the cold ones so a busy
neighbour slows both; the first count on a fresh lab is run untimed (it opens the run's
catalog tables). The submitting process's CPU time is reported too: on a machine shared with
other work the wall time mostly measures the wait for a core, and the CPU time does not.
``lab up`` is timed once for information. Needs redis-server and
bluesky-queueserver; without them the rows say so.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 1.5
LAB_REPEATS = 7
COLD_REPEATS = 2
TIMEOUT = 600.0

_SUBMIT = (
    "import sys\n"
    "from daqbridge.cli._lab import submit_to_lab\n"
    "{load}"
    "sys.exit(submit_to_lab('count', [['sim_meter']], {{'num': 1}}{profile}))\n"
)
LAB_CODE = _SUBMIT.format(load="", profile="")
LAB_WITH_PROFILE_CODE = _SUBMIT.format(
    load="from daqbridge.config import PathExists, load_profile\n"
    "profile = load_profile(None, device_cache=PathExists())\n",
    profile=", profile=profile",
)


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAQBRIDGE_PROFILE", "DISPLAY")}
    env["DAQBRIDGE_DATA"] = str(data)
    env["MPLBACKEND"] = "Agg"
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def _timed(argv: list[str], env: dict[str, str], cwd: Path, cpu: list[float] | None = None):
    """Wall seconds of the process; its CPU seconds (user + system) appended to ``cpu``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[-1][:60]!r} exited {done.returncode}:\n{done.stderr[-2000:]}")
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return elapsed


def _row(name: str, value: float | None, unit: str, target: float | None = None, note=""):
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "target": target,
        "ratio": None if target is None or value is None else value / target,
        "ok": None if target is None or value is None else value <= target,
        "note": note,
    }


def run(lab_repeats: int = LAB_REPEATS, cold_repeats: int = COLD_REPEATS) -> list[dict]:
    """Start a lab, time counts through it and cold ones, stop it; one row per figure."""
    import importlib.util

    if shutil.which("redis-server") is None:
        return [_row("count num=1 via the lab", None, "s", TARGET_S, "no redis-server")]
    if importlib.util.find_spec("bluesky_queueserver_api") is None:
        return [_row("count num=1 via the lab", None, "s", TARGET_S, "no queue server")]
    from daqbridge.catalog import open_catalog

    tmp = Path(tempfile.mkdtemp(prefix="daqbridge-bench-lab-"))
    lab_env, cold_env = _env(tmp / "lab"), _env(tmp / "cold")
    for data in (tmp / "lab", tmp / "cold"):  # the catalog's one-time creation is not measured
        os.environ["DAQBRIDGE_DATA"] = str(data)
        try:
            open_catalog(data, recover=False).close()
        finally:
            os.environ.pop("DAQBRIDGE_DATA", None)
    python = sys.executable
    up = _timed([python, "-m", "daqbridge", "lab", "up"], lab_env, tmp)
    lab: list[float] = []
    lab_cpu: list[float] = []
    with_profile: list[float] = []
    cold: list[float] = []
    try:
        _timed([python, "-c", LAB_CODE], lab_env, tmp)  # warm-up, untimed
        for i in range(lab_repeats):
            lab.append(_timed([python, "-c", LAB_CODE], lab_env, tmp, lab_cpu))
            with_profile.append(_timed([python, "-c", LAB_WITH_PROFILE_CODE], lab_env, tmp))
            if i < cold_repeats:
                argv = [python, "-m", "daqbridge", "run", "count", "sim_meter", "num=1"]
                cold.append(_timed(argv, cold_env, tmp))
    finally:
        subprocess.run(
            [python, "-m", "daqbridge", "lab", "down"],
            env=lab_env,
            cwd=tmp,
            capture_output=True,
            timeout=TIMEOUT,
        )
        shutil.rmtree(tmp, ignore_errors=True)
    lab_median = statistics.median(lab)
    cold_median = statistics.median(cold)
    load = os.getloadavg()[0]
    return [
        _row("count num=1 via the lab (median)", lab_median, "s", TARGET_S, f"min {min(lab):.2f}"),
        _row(
            "count num=1 via the lab, profile loaded (median)",
            statistics.median(with_profile),
            "s",
            TARGET_S,
            f"min {min(with_profile):.2f}",
        ),
        _row(
            "count num=1 via the lab: the client's CPU (median)",
            statistics.median(lab_cpu),
            "s",
            None,
            "user + system of the submitting process: what load does not inflate",
        ),
        _row("count num=1 cold daqbridge run (median)", cold_median, "s", None),
        _row("cold / lab", cold_median / lab_median, "x", None),
        _row("lab up (once)", up, "s", None, f"load average {load:.1f}"),
    ]


def main() -> int:
    rows = run()
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark':<{width}}  {'value':>9}      {'target':>6}  ok   note")
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:9.3f}"
        target = "" if r["target"] is None else f"{r['target']:g}"
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        print(f"{r['name']:<{width}}  {value:>9} {r['unit']:<3}  {target:>6}  {ok:<3}  {r['note']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
