"""Per-point cost of a bluesky scan with the native ESP300 + 1830-C devices.

Run: ``python benchmarks/bench_scan.py`` (prints a table, exits 0). ``run()`` returns the rows
(name, value, unit, target, ratio, ok) for a collector.

Setup: simulators in zero-latency mode (``speed=inf``, no reply delay, no noise), reached as
``sim://`` URLs (in-process, microseconds per query: what remains is the devices' and the
RunEngine's own overhead) and, for reference, as real pseudo-terminals. Three ways of doing the
same 200-point scan, interleaved in rounds so machine load hits all alike; each figure is the
median over rounds:

* native: ``bp.scan([meter], axis, 0, 10, 200)`` with ESP300Axis and Newport1830C;
* ophyd.sim: the same plan with ``ophyd.sim.motor`` / ``ophyd.sim.det``;
* plain loop: no RunEngine, no ophyd: the same serial calls per point (``PA``, ``MD?``, ``TP?``,
  ``D?``) through the same leased ports.

Target: native / ophyd.sim <= 1.5 per point (DEVICES.md).

A second section (``[sim:// URL, ophyd-async]``) measures the 1830-C alone (``Newport1830C``,
ophyd-async: every read a ``C``, ``D?``, ``Q?`` lease; every wavelength step a ``Wnnnn`` plus
``W?`` read-back lease) in ``bp.count([meter], 200)`` and in a wavelength scan
``bp.scan([meter], meter.wavelength, 400, 997, 200)``, next to ``ophyd.sim``'s ``det``/``motor``
and ophyd-async's own simulated devices (``SimPointDetector`` with one channel and zero
acquire time, ``SimMotor(instant=True)``) in the same plans, interleaved in rounds the same way.
Target (issue 12): native-async / ophyd.sim <= 1.0 per point, in both plans.
"""

from __future__ import annotations

import math
import statistics
import sys
from contextlib import ExitStack
from time import perf_counter, process_time

POINTS = 200
ROUNDS = 11
"""Rounds of each way, interleaved; the median is reported. 5 left the count ratio swinging
by +-0.1 between runs on the 2-core machine; 11 costs a few seconds more."""
TARGET = 1.5


def _scan_time(RE, plan_factory) -> tuple[float, float]:  # noqa: N803
    """(wall, process CPU) seconds per point; CPU covers every thread, so it is the machine
    cost of a point and moves less with load from other processes than wall time does."""
    c0, t0 = process_time(), perf_counter()
    RE(plan_factory())
    return (perf_counter() - t0) / POINTS, (process_time() - c0) / POINTS


def _plain_loop(esp_port, pm_port) -> tuple[float, float]:
    targets = [10.0 * i / (POINTS - 1) for i in range(POINTS)]
    c0, t0 = process_time(), perf_counter()
    for x in targets:
        with esp_port.lease("bench", 5.0) as lease:
            lease.write(f"1PA{x:.6f}\r\n".encode())
            while lease.query(b"1MD?\r\n", b"\n", 1.0).strip() != b"1":
                pass
            float(lease.query(b"1TP?\r\n", b"\n", 1.0))
        with pm_port.lease("bench", 5.0) as lease:
            float(lease.query(b"D?\n", b"\n", 1.0))
    return (perf_counter() - t0) / POINTS, (process_time() - c0) / POINTS


def _measure(transport: str) -> dict[str, float]:
    import bluesky.plans as bp
    from bluesky import RunEngine
    from bluesky.run_engine import call_in_bluesky_event_loop
    from ophyd.sim import det, motor

    import daqbridge.sim as sim
    from daqbridge.devices.esp300 import ESP300Controller
    from daqbridge.devices.newport1830c import Newport1830C
    from daqbridge.transport import SerialPortPool

    esp_opts = {"speed": math.inf}
    pm_opts = {"speed": math.inf, "response_time": 0.0, "noise": 0.0, "input_power": 1e-6}
    with ExitStack() as stack:
        pool = stack.enter_context(SerialPortPool())
        if transport == "sim":
            tag = f"{id(stack):x}"
            esp_url = f"sim://esp300?name=bench-esp-{tag}&speed=inf"
            pm_url = (
                f"sim://newport1830c?name=bench-pm-{tag}&speed=inf&response_time=0&noise=0"
                "&input_power=1e-6"
            )
            stack.callback(sim.unregister, f"bench-esp-{tag}")
            stack.callback(sim.unregister, f"bench-pm-{tag}")
        else:
            esp_url = stack.enter_context(sim.serve_pty("esp300", **esp_opts)).path
            pm_url = stack.enter_context(sim.serve_pty("newport1830c", **pm_opts)).path
        esp_port = pool.open(esp_url, baudrate=19200)
        pm_port = pool.open(pm_url, baudrate=9600)
        # ophyd-async devices: the RunEngine (its loop) first, then connect them there.
        RE = RunEngine({}, context_managers=[])  # noqa: N806
        axes = {"x": {"number": 1, "units": "mm", "low_limit": -100, "high_limit": 100}}
        controller = ESP300Controller(esp_port, name="esp", axes=axes)
        stack.callback(controller.close)
        call_in_bluesky_event_loop(controller.connect(), timeout=30)
        x = controller.x
        meter = Newport1830C(pm_port, name="pm", range=0)
        stack.callback(meter.close)
        call_in_bluesky_event_loop(meter.connect(), timeout=30)

        native = lambda: bp.scan([meter], x, 0, 10, POINTS)  # noqa: E731
        simulated = lambda: bp.scan([det], motor, 0, 10, POINTS)  # noqa: E731
        # Warm-up: imports, first-call caches, thread start-up.
        RE(bp.scan([meter], x, 0, 1, 5))
        RE(bp.scan([det], motor, 0, 1, 5))
        _plain_loop(esp_port, pm_port)
        got: dict[str, list[tuple[float, float]]] = {"native": [], "ophyd.sim": [], "loop": []}
        for _ in range(ROUNDS):
            got["native"].append(_scan_time(RE, native))
            got["ophyd.sim"].append(_scan_time(RE, simulated))
            got["loop"].append(_plain_loop(esp_port, pm_port))
        out = {k: statistics.median(w for w, _ in v) for k, v in got.items()}
        out.update({f"{k} cpu": statistics.median(c for _, c in v) for k, v in got.items()})
        return out


def _measure_async() -> dict[str, float]:
    """Per-point wall and CPU of count and scan: async 1830-C, ophyd.sim, ophyd_async.sim."""
    import bluesky.plans as bp
    from bluesky import RunEngine
    from bluesky.run_engine import call_in_bluesky_event_loop
    from ophyd.sim import det, motor
    from ophyd_async.sim import SimMotor, SimPointDetector

    import daqbridge.sim as sim
    from daqbridge.devices.newport1830c import Newport1830C
    from daqbridge.transport import SerialPortPool

    with ExitStack() as stack:
        pool = stack.enter_context(SerialPortPool())
        name = f"bench-pm-async-{id(stack):x}"
        stack.callback(sim.unregister, name)
        url = (
            f"sim://newport1830c?name={name}&speed=inf&response_time=0&noise=0"
            "&input_power=1e-6&power_range=4"
        )
        RE = RunEngine({}, context_managers=[])  # noqa: N806
        meter = Newport1830C(pool.open(url, baudrate=9600), name="pm")
        oa_det = SimPointDetector(None, num_channels=1, name="oa_det")
        oa_motor = SimMotor(name="oa_motor", instant=True)

        async def connect() -> None:
            await meter.connect()
            await oa_det.connect()
            await oa_motor.connect()
            await oa_det.acquire_time.set(0.0)

        call_in_bluesky_event_loop(connect(), timeout=30)
        plans = {
            "async count": lambda: bp.count([meter], POINTS),
            "ophyd.sim count": lambda: bp.count([det], POINTS),
            "ophyd_async.sim count": lambda: bp.count([oa_det], POINTS),
            # 400 nm up in whole steps (400..997 for 200 points): the meter takes whole nm only.
            "async scan": lambda: bp.scan(
                [meter], meter.wavelength, 400, 400 + 3 * (POINTS - 1), POINTS
            ),
            "ophyd.sim scan": lambda: bp.scan([det], motor, 0, 10, POINTS),
            "ophyd_async.sim scan": lambda: bp.scan([oa_det], oa_motor, 0, 10, POINTS),
        }
        for factory in plans.values():  # warm-up: imports, first-call caches, threads
            RE(factory())
        got: dict[str, list[tuple[float, float]]] = {k: [] for k in plans}
        for _ in range(ROUNDS):
            for key, factory in plans.items():
                got[key].append(_scan_time(RE, factory))
        out = {k: statistics.median(w for w, _ in v) for k, v in got.items()}
        out.update({f"{k} cpu": statistics.median(c for _, c in v) for k, v in got.items()})
        errors = sim.lookup(name).protocol_errors
        if errors:
            raise RuntimeError(f"the simulated 1830-C saw protocol errors: {errors[:3]}")
        return out


def _async_rows() -> list[dict]:
    m = _measure_async()
    label = "[sim:// URL, ophyd-async]"
    rows = []
    for plan in ("count", "scan"):
        what = "1830-C" if plan == "count" else "1830-C wavelength"
        rows += [
            _row(
                f"{label} bp.{plan} per point, {what} (native async)",
                m[f"async {plan}"] * 1e3,
                "ms",
            ),
            _row(f"{label} bp.{plan} per point, ophyd.sim", m[f"ophyd.sim {plan}"] * 1e3, "ms"),
            _row(
                f"{label} bp.{plan} per point, ophyd_async.sim",
                m[f"ophyd_async.sim {plan}"] * 1e3,
                "ms",
            ),
            _row(
                f"{label} bp.{plan} native-async / ophyd.sim per point",
                ratio := m[f"async {plan}"] / m[f"ophyd.sim {plan}"],
                "x",
                target=1.0,
                ok=ratio <= 1.0,
            ),
            _row(
                f"{label} bp.{plan} native-async / ophyd_async.sim per point",
                m[f"async {plan}"] / m[f"ophyd_async.sim {plan}"],
                "x",
            ),
            _row(
                f"{label} bp.{plan} CPU per point, native async", m[f"async {plan} cpu"] * 1e3, "ms"
            ),
            _row(
                f"{label} bp.{plan} CPU native-async / ophyd.sim per point",
                m[f"async {plan} cpu"] / m[f"ophyd.sim {plan} cpu"],
                "x",
            ),
        ]
    return rows


def _row(name, value, unit, target=None, ok=None) -> dict:
    return {
        "name": name,
        "value": value,
        "unit": unit,
        "target": target,
        "ratio": None if target is None else value / target,
        "ok": ok,
    }


def run() -> list[dict]:
    """Measure and return rows: name, value, unit, target, ratio, ok."""
    rows = []
    for transport, label in (("sim", "sim:// URL"), ("pty", "pty")):
        m = _measure(transport)
        ratio = m["native"] / m["ophyd.sim"]
        rows += [
            _row(f"[{label}] bp.scan per point, native ESP300 + 1830-C", m["native"] * 1e3, "ms"),
            _row(f"[{label}] bp.scan per point, ophyd.sim motor + det", m["ophyd.sim"] * 1e3, "ms"),
            _row(f"[{label}] plain loop per point (PA, MD?, TP?, D?)", m["loop"] * 1e3, "ms"),
            _row(
                f"[{label}] native / ophyd.sim per point",
                ratio,
                "x",
                target=TARGET if transport == "sim" else None,
                ok=ratio <= TARGET if transport == "sim" else None,
            ),
            _row(f"[{label}] native / plain loop per point", m["native"] / m["loop"], "x"),
            _row(f"[{label}] CPU per point, native", m["native cpu"] * 1e3, "ms"),
            _row(f"[{label}] CPU per point, ophyd.sim", m["ophyd.sim cpu"] * 1e3, "ms"),
            _row(
                f"[{label}] CPU native / ophyd.sim per point",
                m["native cpu"] / m["ophyd.sim cpu"],
                "x",
            ),
        ]
    rows += _async_rows()
    return rows


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
