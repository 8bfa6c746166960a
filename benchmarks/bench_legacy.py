"""Cost of reading an instrument through the legacy adapter, and of shadow reads.

Run: ``python benchmarks/bench_legacy.py`` (prints a table, exits 0). ``run()`` returns the rows
(name, value, unit, target, ratio, ok) for ``python -m benchmarks``.

Setup: ONE Newport 1830-C simulator in zero-latency mode (``speed=inf``, no response time, no
noise) reached as a ``sim://`` URL (in-process: what remains is the drivers', the adapter's and
the RunEngine's own cost) and, for reference, as a real pseudo-terminal. On its port, through one
SerialPortPool: the native ``Newport1830C`` and the legacy ``newport_1830c`` driver (commands
only, no polling) wrapped by ``LegacyDevice``. Ratios are medians of per-round ratios of
two plans run back to back; they are gated on process CPU time per point (wall time is shown
too, but on a shared machine it swings by 2x); times are the fastest round of a 100-point plan:

* count: ``bp.count([meter], 200)``, native vs adapter (``read_mode='fresh'``: one ``D?`` each);
* scan (set): ``bp.scan([], wavelength, 700, 900, 200)``: the native meter's wavelength signal vs
  the adapter with ``settable='wavelength'`` (set, then read back: two exchanges each);
* scan (detector): ``bp.scan([meter], ophyd.sim motor, ...)``, native vs adapter;
* shadow: ``bp.scan([native], motor, ...)`` vs ``bp.scan([ShadowPair(native, legacy)], ...)``:
  the legacy read added in the same trigger, as shadow mode does per point; for reference, the
  twin as a second device of the plan, and what bluesky itself charges for a second detector
  (``ophyd.sim`` ``det`` vs ``det, det1``).

Targets: adapter / native <= 1.2 per point; shadow (native + legacy) / native <= 1.05.
"""

from __future__ import annotations

import math
import statistics
import sys
from contextlib import ExitStack
from time import perf_counter, process_time

POINTS = 100
ROUNDS = 9
ADAPTER_TARGET = 1.2
SHADOW_TARGET = 1.05


def _per_point(RE, plan_factory) -> tuple[float, float]:  # noqa: N803
    """(wall, process CPU) seconds per point. CPU counts every thread of this process (the
    RunEngine, the device workers, the in-process simulator), so it is the machine cost of a
    point and hardly moves when other processes load the machine; wall time on a shared 2-core
    machine swings by 2x between runs."""
    c0, t0 = process_time(), perf_counter()
    RE(plan_factory())
    return (perf_counter() - t0) / POINTS, (process_time() - c0) / POINTS


def _measure(transport: str) -> dict[str, float]:
    import bluesky.plans as bp
    from bluesky import RunEngine
    from ophyd.sim import det, det1, motor

    import daqbridge.sim as sim
    from daqbridge.bridge._shadow import ShadowPair
    from daqbridge.bridge.legacy_adapter import LegacyDevice
    from daqbridge.devices.core import call_sync
    from daqbridge.devices.newport1830c import Newport1830C
    from daqbridge.legacy import LegacyRuntime, parse_legacy_config
    from daqbridge.transport import SerialPortPool

    opts = {"speed": math.inf, "response_time": 0.0, "noise": 0.0, "input_power": 1e-6}
    with ExitStack() as stack:
        pool = stack.enter_context(SerialPortPool())
        if transport == "sim":
            name = f"bench-legacy-{id(stack):x}"
            url = f"sim://newport1830c?name={name}&speed=inf&response_time=0&noise=0"
            url += "&input_power=1e-6"
            stack.callback(sim.unregister, name)
        else:
            url = stack.enter_context(sim.serve_pty("newport1830c", **opts)).path
        RE = RunEngine({}, context_managers=[])  # noqa: N806
        port = pool.open(url, baudrate=9600)
        native = Newport1830C(port, name="pm", range=0)
        stack.callback(native.close)
        # ophyd-async devices (the native meter and the adapter) live on the RunEngine's loop
        call_sync(native.connect(), loop=RE.loop, timeout=10)
        config = parse_legacy_config(
            f'[instruments.pm_legacy]\ntype = "newport_1830c"\nport = "{url}"\n'
            "polling_rate_hz = 0\nrange = 0\n",
            source="bench",
        )
        rt = LegacyRuntime.from_config(config, pool)
        rt.start()
        stack.callback(rt.stop, 5)
        if not rt.wait_running(10):
            raise RuntimeError(f"the legacy 1830-C did not start: {rt.health()}")
        legacy = LegacyDevice(rt, "pm_legacy", settable=False)
        call_sync(legacy.connect(), loop=RE.loop, timeout=10)
        stack.callback(legacy.close)
        legacy_wl = LegacyDevice(rt, "pm_legacy", name="pm_wl", settable="wavelength")
        call_sync(legacy_wl.connect(), loop=RE.loop, timeout=10)
        stack.callback(legacy_wl.close)

        pair = ShadowPair(native, legacy)  # both read in one trigger, as shadow mode does
        nm = [700.0 + 200.0 * i / (POINTS - 1) for i in range(POINTS)]  # integral after rounding
        plans = {
            "count native": lambda: bp.count([native], POINTS),
            "count adapter": lambda: bp.count([legacy], POINTS),
            "set native": lambda: bp.list_scan([], native.wavelength, [round(x) for x in nm]),
            "set adapter": lambda: bp.list_scan([], legacy_wl, [round(x) for x in nm]),
            "scan native": lambda: bp.scan([native], motor, 0, 10, POINTS),
            "scan adapter": lambda: bp.scan([legacy], motor, 0, 10, POINTS),
            "scan native+legacy": lambda: bp.scan([pair], motor, 0, 10, POINTS),
            "scan native, legacy": lambda: bp.scan([native, legacy], motor, 0, 10, POINTS),
            "scan det": lambda: bp.scan([det], motor, 0, 10, POINTS),
            "scan det+det1": lambda: bp.scan([det, det1], motor, 0, 10, POINTS),
        }
        for factory in plans.values():  # warm-up: imports, caches, thread start-up
            RE(factory())
        # Pairs measured back to back, alternating which goes first, so machine load (2 cores
        # shared with other work) hits both sides of a ratio alike; a figure is the median of the
        # per-round ratios, absolute times the fastest round (least disturbed).
        pairs = {
            "count": ("count adapter", "count native"),
            "set": ("set adapter", "set native"),
            "scan": ("scan adapter", "scan native"),
            "shadow": ("scan native+legacy", "scan native"),
            "two devices": ("scan native, legacy", "scan native"),
            "floor": ("scan det+det1", "scan det"),
        }
        times: dict[str, list[float]] = {k: [] for k in plans}
        cpu: dict[str, list[float]] = {k: [] for k in plans}
        ratios: dict[str, list[float]] = {k: [] for k in pairs}
        cpu_ratios: dict[str, list[float]] = {k: [] for k in pairs}
        for i in range(ROUNDS):
            for key, (a, b) in pairs.items():
                order = (a, b) if i % 2 == 0 else (b, a)
                got = {k: _per_point(RE, plans[k]) for k in order}
                for k in (a, b):
                    times[k].append(got[k][0])
                    cpu[k].append(got[k][1])
                ratios[key].append(got[a][0] / got[b][0])
                cpu_ratios[key].append(got[a][1] / got[b][1])
        out = {k: min(v) for k, v in times.items()}
        out.update({f"cpu {k}": statistics.median(v) for k, v in cpu.items()})
        out.update({f"ratio {k}": statistics.median(v) for k, v in ratios.items()})
        out.update({f"cpu ratio {k}": statistics.median(v) for k, v in cpu_ratios.items()})
        return out


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
        gated = transport == "sim"
        for what, key, a, n in (
            ("bp.count", "count", "count adapter", "count native"),
            ("bp.list_scan of wavelength (set + read-back)", "set", "set adapter", "set native"),
            ("bp.scan, meter as detector", "scan", "scan adapter", "scan native"),
        ):
            rows.append(_row(f"[{label}] {what}: native per point", m[n] * 1e3, "ms"))
            rows.append(_row(f"[{label}] {what}: adapter per point", m[a] * 1e3, "ms"))
            rows.append(_row(f"[{label}] {what}: adapter / native (wall)", m[f"ratio {key}"], "x"))
            ratio = m[f"cpu ratio {key}"]
            rows.append(
                _row(
                    f"[{label}] {what}: adapter / native (CPU)",
                    ratio,
                    "x",
                    target=ADAPTER_TARGET if gated else None,
                    ok=ratio <= ADAPTER_TARGET if gated else None,
                )
            )
        shadow = m["cpu ratio shadow"]
        rows += [
            _row(
                f"[{label}] shadow: bp.scan per point, native + legacy twin",
                m["scan native+legacy"] * 1e3,
                "ms",
            ),
            _row(f"[{label}] shadow: bp.scan per point, native only", m["scan native"] * 1e3, "ms"),
            _row(
                f"[{label}] shadow: CPU added per point",
                (m["cpu scan native+legacy"] - m["cpu scan native"]) * 1e3,
                "ms",
            ),
            _row(f"[{label}] shadow: (native+legacy) / native (wall)", m["ratio shadow"], "x"),
            _row(
                f"[{label}] shadow: (native+legacy) / native (CPU)",
                shadow,
                "x",
                target=SHADOW_TARGET if gated else None,
                ok=shadow <= SHADOW_TARGET if gated else None,
            ),
            _row(
                f"[{label}] shadow as 2 separate devices: (native, legacy) / native (CPU)",
                m["cpu ratio two devices"],
                "x",
            ),
            _row(
                f"[{label}] reference: ophyd.sim (det, det1) / det (CPU)",
                m["cpu ratio floor"],
                "x",
            ),
        ]
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
