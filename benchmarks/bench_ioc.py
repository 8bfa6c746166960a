"""Cost of reaching an instrument through ``daqbridge ioc`` over Channel Access (loopback).

Run: ``python benchmarks/bench_ioc.py`` (prints a table, exits 0). ``run()`` returns the rows
for a collector (``python -m benchmarks``).

Setup: two server processes on 127.0.0.1, each on its own free CA port: the daqbridge IOC
serving a small simulated lab (an ESP300 axis and a 1830-C meter, simulator speed ``inf`` so
motion costs only the protocol), and a bare caproto PVGroup with one plain PV, the floor of what
any caproto IOC costs. The client is caproto's threading client in this process. Measurements
of the two servers alternate in blocks, so a burst of load from other jobs on the (shared,
2-core) machine hits both alike; each figure is a median.

Figures:
* get round trip of the IOC's ``<P>stage_x.RBV`` / of the bare PV: target <= 1.5 (a motor
  record field is served like any caproto PV: reading it must not cost more).
* put-to-DMOV of a zero-length move: VAL put (no callback) until the DMOV=1 monitor arrives,
  as ``EpicsMotor`` waits for it. It includes the controller's move command and status polls
  on the (simulated) serial line. Shown next to the bare PV's put-with-completion round trip;
  target <= 10 ms per move. (Before the IOC set TCP_NODELAY on its client sockets this was
  about 44 ms: Nagle's algorithm held DMOV=1 until the client's delayed ACK of DMOV=0.)
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from daqbridge.ioc import READY, free_port, ioc_command, loopback_ca_env, spawn

PREFIX = "BENCH:"
BLOCKS = 10
GETS_PER_BLOCK = 100
MOVES_PER_BLOCK = 10

_PROFILE = """
[lab]
name = "ioc benchmark lab"
data_dir = "data"

[simulation]
enabled = true
speed = inf

[[instruments]]
id = "stage"
driver = "esp300"
port = "sim://esp300?name=bench_stage"

[instruments.esp300]
axes = [{ number = 1, name = "x", units = "mm", low_limit = -5.0, high_limit = 5.0 }]

[[instruments]]
id = "meter"
driver = "newport1830c"
port = "sim://newport1830c?name=bench_meter"
"""

_BARE_IOC = r"""
import sys
from caproto.server import PVGroup, pvproperty, run

class Bare(PVGroup):
    value = pvproperty(value=0.0, name="value")

async def ready(async_lib):
    print("bare ready", flush=True)

ioc = Bare(prefix=sys.argv[1])
run(ioc.pvdb, interfaces=["127.0.0.1"], startup_hook=ready)
"""


def _median_read(pv, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        pv.read(timeout=5)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _median_put_complete(pv, n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        pv.write([float(i)], wait=True, timeout=5)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _DmovWatch:
    """Time from a VAL put to the DMOV 0 -> 1 monitor (what EpicsMotor waits for)."""

    def __init__(self, ctx, record: str) -> None:
        self.val, dmov = ctx.get_pvs(record, f"{record}.DMOV")
        self.val.wait_for_connection(timeout=10)
        dmov.wait_for_connection(timeout=10)
        self._seen_zero = False
        self._done = threading.Event()
        self.sub = dmov.subscribe(data_type="time")
        self.sub.add_callback(self._on_dmov)

    def _on_dmov(self, sub, response) -> None:
        value = int(response.data[0])
        if value == 0:
            self._seen_zero = True
        elif self._seen_zero:
            self._done.set()

    def move(self, target: float) -> float:
        self._seen_zero = False
        self._done.clear()
        t0 = time.perf_counter()
        self.val.write([target], wait=False)
        if not self._done.wait(10):
            raise TimeoutError("no DMOV 0 -> 1 within 10 s")
        return time.perf_counter() - t0

    def median(self, target: float, n: int) -> float:
        return statistics.median(self.move(target) for _ in range(n))


def run() -> list[dict]:
    """Measure and return rows: name, value, unit, target, ratio, ok."""
    from caproto.threading.client import Context

    tmp = Path(tempfile.mkdtemp(prefix="daqbridge-bench-ioc-"))
    profile = tmp / "lab.toml"
    profile.write_text(_PROFILE)
    ioc_port, bare_port, repeater = free_port(), free_port(), free_port()
    ioc_env = {**loopback_ca_env(ioc_port, repeater), "DAQBRIDGE_DATA": str(tmp / "data")}
    bare_env = loopback_ca_env(bare_port, repeater)
    saved = {k: os.environ.get(k) for k in ioc_env}  # restored at the end
    ioc = spawn(
        ioc_command("--profile", str(profile), "--prefix", PREFIX, "--poll-period", "0"),
        env=ioc_env,
        ready=READY,
        timeout=180,
        stderr_path=str(tmp / "ioc.stderr"),
    )
    bare = None
    try:
        bare = spawn(
            [sys.executable, "-c", _BARE_IOC, "BARE:"],
            env=bare_env,
            ready="bare ready",
            timeout=60,
            stderr_path=str(tmp / "bare.stderr"),
        )
        # one client finds both servers: each address with its own port
        os.environ.update(ioc_env)
        os.environ["EPICS_CA_ADDR_LIST"] = f"127.0.0.1:{ioc_port} 127.0.0.1:{bare_port}"
        bare_ctx = ioc_ctx = Context()
        try:
            (bare_pv,) = bare_ctx.get_pvs("BARE:value")
            (rbv,) = ioc_ctx.get_pvs(f"{PREFIX}stage_x.RBV")
            bare_pv.wait_for_connection(timeout=10)
            rbv.wait_for_connection(timeout=10)
            watch = _DmovWatch(ioc_ctx, f"{PREFIX}stage_x")
            here = float(rbv.read(timeout=5).data[0])
            # warm-up
            _median_read(bare_pv, 20)
            _median_read(rbv, 20)
            watch.median(here, 3)
            ioc_get, bare_get, dmov, bare_put = [], [], [], []
            for _ in range(BLOCKS):
                bare_get.append(_median_read(bare_pv, GETS_PER_BLOCK))
                ioc_get.append(_median_read(rbv, GETS_PER_BLOCK))
                bare_put.append(_median_put_complete(bare_pv, MOVES_PER_BLOCK))
                dmov.append(watch.median(here, MOVES_PER_BLOCK))
            watch.sub.clear()
        finally:
            ioc_ctx.disconnect()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if bare is not None:
            bare.stop(timeout=10)
        ioc.stop(timeout=30)
    g_ioc, g_bare = statistics.median(ioc_get), statistics.median(bare_get)
    d, p = statistics.median(dmov), statistics.median(bare_put)
    get_ratio = g_ioc / g_bare
    return [
        _row("bare caproto PV get round trip", g_bare * 1e6, "us"),
        _row("IOC motor record .RBV get round trip", g_ioc * 1e6, "us"),
        _row("IOC get / bare get", get_ratio, "x", target=1.5, ok=get_ratio <= 1.5),
        _row("bare caproto PV put-with-completion round trip", p * 1e6, "us"),
        _row("IOC zero-length move: VAL put to DMOV=1", d * 1e3, "ms", target=10, ok=d <= 0.010),
        _row("IOC zero-length move / bare put round trip", d / p, "x"),
    ]


def _row(
    name: str, value: float, unit: str, target: float | None = None, ok: bool | None = None
) -> dict:
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "target": target,
        "ratio": None if target is None else value / target,
        "ok": ok,
        "group": "ioc",
    }


def main() -> int:
    rows = run()
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark':<{width}}  {'value':>12}  {'target':>8}  ok")
    for r in rows:
        target = "" if r["target"] is None else f"{r['target']:g}"
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        print(f"{r['name']:<{width}}  {r['value']:>9.3f} {r['unit']:<3}  {target:>8}  {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
