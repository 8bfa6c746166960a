"""The web panel's cost and speed, on a lab that is up (issue 13's targets).

    python benchmarks/bench_web.py          # prints a table
    from benchmarks.bench_web import run    # rows {name, value, unit, target, ratio, ok}

* delay from an event document to the page update: measured in the browser (headless chromium
  driven by selenium): for every event of the scans below, the time from the event's own
  ``time`` (set by the RunEngine in the worker) to the moment the page has drawn its point,
  on the same machine's clock. Target: median <= 100 ms.
* wall time of a 200-point scan (``scan([sim_meter], sim_stage_x, -5, 5, num=200)`` on the
  embedded simulated lab) with the panel open (``daqbridge web`` running and a page showing
  the lab) and closed (no panel process at all): the run's own duration, stop document's time
  minus start document's, median of interleaved repeats. Target: open at most 5 % slower.

Needs redis-server, bluesky-queueserver, chromium and chromedriver; the rows say what is missing.
"""

from __future__ import annotations

import importlib.util
import io
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

LATENCY_TARGET_MS = 100.0
OVERHEAD_TARGET = 0.05
POINTS = 200
REPEATS = 6
TIMEOUT = 600.0


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


def _missing() -> str | None:
    if shutil.which("redis-server") is None:
        return "no redis-server"
    for module in ("bluesky_queueserver_api", "selenium"):
        if importlib.util.find_spec(module) is None:
            return f"no {module}"
    if not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()):
        return "no chromium"
    if not (shutil.which("chromedriver") or Path("/usr/bin/chromedriver").exists()):
        return "no chromedriver"
    return None


def _env(data: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAQBRIDGE_PROFILE", "DISPLAY")}
    env["DAQBRIDGE_DATA"] = str(data)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _scan_seconds(data: Path, points: int = POINTS) -> float:
    """One scan on the lab; the run's own duration from its documents."""
    from daqbridge.catalog import open_catalog
    from daqbridge.cli._lab import submit_to_lab

    out = io.StringIO()
    status = submit_to_lab(
        "scan",
        [["sim_meter"], "sim_stage_x", -5, 5],
        {"num": points},
        table=False,
        stdout=out,
        stderr=io.StringIO(),
    )
    if status != 0:
        raise RuntimeError(f"the scan ended with exit status {status}: {out.getvalue()}")
    uid = next(line.split()[1] for line in out.getvalue().splitlines() if line.startswith("uid:"))
    catalog = open_catalog(data, readonly=True, recover=False)
    try:
        meta = catalog.client[uid].metadata
        return meta["stop"]["time"] - meta["start"]["time"]
    finally:
        catalog.close()


class _OpenPanel:
    """``daqbridge web`` and a headless chromium page on it."""

    def __init__(self, env: dict[str, str], cwd: Path, data: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import WebDriverWait

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        argv = [sys.executable, "-m", "daqbridge", "web", "--port", str(port)]
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while " on http://" not in (self.proc.stdout.readline() or "EOF on http://"):
            if time.monotonic() > deadline:
                raise RuntimeError("daqbridge web did not start")
        if self.proc.poll() is not None:
            raise RuntimeError("daqbridge web exited")
        self.profile_dir = tempfile.mkdtemp(prefix="daqbridge-bench-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for arg in (
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={self.profile_dir}",
        ):  # fmt: skip
            options.add_argument(arg)
        driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
        self.browser = webdriver.Chrome(options=options, service=Service(driver))
        self.browser.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(self.browser, 60).until(
            lambda d: d.execute_script(
                "return document.body.dataset.ready === '1' && window.daqbridgePanel.worker"
            )
        )
        # What an open panel costs while it is open, not while it starts: the catalog opened
        # (the first history search waits for it), the page has drawn a scan once.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/history", timeout=120):
            pass
        _scan_seconds(data, points=20)
        self.browser.execute_script("window.daqbridgePanel.latencies.length = 0")

    def latencies(self) -> list[float]:
        return list(self.browser.execute_script("return window.daqbridgePanel.latencies"))

    def close(self) -> None:
        self.browser.quit()
        shutil.rmtree(self.profile_dir, ignore_errors=True)
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def run(repeats: int = REPEATS) -> list[dict]:
    missing = _missing()
    if missing:
        return [_row("event to page update (median)", None, "ms", LATENCY_TARGET_MS, missing)]
    tmp = Path(tempfile.mkdtemp(prefix="daqbridge-bench-web-"))
    data = tmp / "data"
    env = _env(data)
    python = sys.executable
    up = subprocess.run(
        [python, "-m", "daqbridge", "lab", "up", "--no-web"],
        env=env, cwd=tmp, capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    if up.returncode != 0:
        return [_row("event to page update (median)", None, "ms", LATENCY_TARGET_MS, up.stderr)]
    saved = os.environ.get("DAQBRIDGE_DATA")
    os.environ["DAQBRIDGE_DATA"] = str(data)
    closed: list[float] = []
    opened: list[float] = []
    latencies: list[float] = []
    try:
        _scan_seconds(data)  # warm-up, untimed: the first run creates the catalog's tables
        for i in range(repeats):
            # Interleaved, closed-open then open-closed, so a busy neighbour's load (this
            # machine is shared) and its drift weigh on both alike.
            if i % 2 == 0:
                closed.append(_scan_seconds(data))
            panel = _OpenPanel(env, tmp, data)
            try:
                opened.append(_scan_seconds(data))
                latencies += panel.latencies()
            finally:
                panel.close()
            if i % 2 == 1:
                closed.append(_scan_seconds(data))
    finally:
        if saved is None:
            os.environ.pop("DAQBRIDGE_DATA", None)
        else:
            os.environ["DAQBRIDGE_DATA"] = saved
        subprocess.run(
            [python, "-m", "daqbridge", "lab", "down"],
            env=env, cwd=tmp, capture_output=True, timeout=TIMEOUT,
        )  # fmt: skip
        shutil.rmtree(tmp, ignore_errors=True)
    closed_median, open_median = statistics.median(closed), statistics.median(opened)
    overhead = open_median / closed_median - 1.0
    ordered = sorted(latencies)
    p95 = ordered[int(0.95 * (len(ordered) - 1))] if ordered else None
    return [
        _row(
            "event to page update (median)",
            statistics.median(latencies) if latencies else None,
            "ms",
            LATENCY_TARGET_MS,
            f"{len(latencies)} events; p95 {p95:.1f} ms" if p95 is not None else "no events",
        ),
        _row(
            f"{POINTS}-point scan, panel closed (median)",
            closed_median,
            "s",
            None,
            ", ".join(f"{t:.2f}" for t in closed),
        ),  # fmt: skip
        _row(
            f"{POINTS}-point scan, panel open (median)",
            open_median,
            "s",
            None,
            ", ".join(f"{t:.2f}" for t in opened),
        ),  # fmt: skip
        _row(
            "panel open: added to the scan's wall time",
            overhead,
            "x",
            OVERHEAD_TARGET,
            f"medians; fastest runs: {min(opened) / min(closed) - 1.0:+.3f}; "
            f"load average {os.getloadavg()[0]:.1f}",
        ),
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
