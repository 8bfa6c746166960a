"""Three Elliptec mounts turning together on one bus: is the end of a move seen when it happens?

Run: ``python benchmarks/bench_elliptec.py`` (prints a table, exits 0). ``run()`` returns the
rows (name, value, unit, target, ratio, ok) for ``python -m benchmarks``.

Setup: the ELL14 simulator on a real pseudo-terminal at its own speed (``speed=1``) with wire
timing (``byte_time``: each reply costs its bytes x 10 / 9600 baud), the native ``ElliptecBus``
with three mounts and the lab's poll interval (0.1 s). Each round turns the three mounts together
(``asyncio.gather`` of their ``set()``) by 45 deg, then by 5 deg, two ways interleaved:

* woken: as the driver runs, the pause between two ``gs`` polls ends when the mount's own
  end-of-move report (``PO``) arrives;
* polled: the same driver with that pause a plain sleep (the poll interval's back-off only),
  what the driver did before.

The figure is the median time per move of each way and their ratio (woken / polled). No target:
a 5 deg move ends before the first pause runs out, so only the longer moves can gain.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from time import perf_counter

ROUNDS = 6
STEPS_DEG = (45.0, 5.0)


async def _moves(mounts, step: float, rounds: int, plain: bool) -> list[float]:
    from daqbridge.devices.core import WireMovableLogic

    times = []
    for i in range(rounds):
        patched = []
        if plain:
            for m in mounts:
                logic = m.movable_logic
                logic.pause = WireMovableLogic.pause.__get__(logic)  # the core's plain sleep
                patched.append(logic)
        try:
            target = step * (1 + i % 2)
            t0 = perf_counter()
            await asyncio.gather(*(m.set(target) for m in mounts))
            times.append(perf_counter() - t0)
        finally:
            for logic in patched:
                del logic.pause
    return times


async def _measure() -> dict[tuple[float, str], float]:
    from daqbridge.devices.elliptec import ElliptecBus
    from daqbridge.sim import serve_pty
    from daqbridge.transport import SerialPortPool

    out: dict[tuple[float, str], list[float]] = {}
    with (
        SerialPortPool() as pool,
        serve_pty("elliptec", addresses="2,3,8", speed=1, byte_time=True) as server,
    ):
        bus = ElliptecBus(pool.open(server.path, baudrate=9600), name="bench_rotators")
        mounts = [bus.mount(a, name=f"bench_m{a}", poll_interval=0.1) for a in (2, 3, 8)]
        try:
            await bus.connect()
            for step in STEPS_DEG:
                for _ in range(ROUNDS):  # interleaved, so machine load hits both alike
                    for way, plain in (("woken", False), ("polled", True)):
                        out.setdefault((step, way), []).extend(await _moves(mounts, step, 2, plain))
        finally:
            bus.close()
    return {key: statistics.median(values) for key, values in out.items()}


def run() -> list[dict]:
    medians = asyncio.run(_measure())
    rows: list[dict] = []
    for step in STEPS_DEG:
        woken, polled = medians[(step, "woken")], medians[(step, "polled")]
        label = f"3 mounts together, {step:g} deg"
        rows += [
            _row(f"{label}: woken by PO", woken * 1e3, "ms"),
            _row(f"{label}: polls only", polled * 1e3, "ms"),
            _row(f"{label}: woken / polls only", woken / polled, "x"),
        ]
    return rows


def _row(name: str, value: float, unit: str) -> dict:
    return {"name": name, "value": value, "unit": unit, "target": None, "ratio": None, "ok": None}


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']:<52} {row['value']:10.3f} {row['unit']}")
    sys.exit(0)
